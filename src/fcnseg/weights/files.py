"""fcnseg weight files: what ``weights convert`` writes and ``export onnx`` reads.

A weights file holds one FCN's state dict and what is needed to rebuild it: the
registered model name, the class count and the input normalisation of its weights
(a VGG16 with torchvision weights reads ImageNet-standardised RGB, not Caffe's BGR).

- ``.pt`` / ``.pth``: ``torch.save`` of ``{"model": name, "num_classes": n,
  "normalization": {...}, "state_dict": {...}}``, read back with ``weights_only=True``
  so loading a file never runs code from it.
- ``.safetensors``: the tensors, with the same three facts as JSON strings in the
  file's metadata (``safetensors_io``).

Every file is written to a temporary name beside the target and moved into place with
``os.replace``, so an interrupted write never leaves a truncated file under the name.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models import FCN, Normalization, build_model
from ..surgery import transplant
from . import safetensors_io

__all__ = [
    "WeightsFile",
    "atomic_write",
    "load_weights",
    "normalization_from_dict",
    "read_weights",
    "save_weights",
]

SAFETENSORS_SUFFIX = ".safetensors"


@dataclass
class WeightsFile:
    """A state dict and, when the file records them, the model it belongs to."""

    state_dict: dict[str, torch.Tensor]
    model: str | None = None
    num_classes: int | None = None
    normalization: Normalization | None = None
    options: dict[str, object] = field(default_factory=dict)  # build_model options


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one step."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist; create it")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _record(model: FCN) -> dict[str, object]:
    return {
        "model": model.name,
        "num_classes": model.num_classes,
        "normalization": asdict(model.normalization),
        "options": dict(model.build_options),  # geometry, upsampling, ...: to rebuild it
    }


def save_weights(path: str | Path, model: FCN) -> Path:
    """Write ``model``'s weights, name, class count and normalisation to ``path``.

    The suffix picks the format: ``.safetensors``, else a ``torch.save`` dict.
    """
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    record = _record(model)
    if Path(path).suffix == SAFETENSORS_SUFFIX:
        return atomic_write(path, lambda tmp: safetensors_io.save_file(tmp, state, record))
    return atomic_write(path, lambda tmp: torch.save({**record, "state_dict": state}, tmp))


def normalization_from_dict(fields: Mapping[str, object]) -> Normalization:
    """The inverse of ``dataclasses.asdict`` on a Normalization (lists back to tuples)."""
    try:
        return Normalization(
            mean=tuple(float(v) for v in fields["mean"]),
            std=tuple(float(v) for v in fields["std"]),
            bgr=bool(fields.get("bgr", False)),
            input_range=float(fields.get("input_range", 255.0)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed normalization record {dict(fields)!r} ({error})") from None


def _tensors_only(mapping: object) -> bool:
    return isinstance(mapping, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items()
    )


def _from_record(state: dict[str, torch.Tensor], record: Mapping[str, object]) -> WeightsFile:
    """Ours keeps the name and class count at the top; a training checkpoint
    (``engine.checkpoint``) under ``model`` with the build options."""
    name, classes, norm = (record.get(key) for key in ("model", "num_classes", "normalization"))
    options = record.get("options") if isinstance(record.get("options"), dict) else {}
    if isinstance(name, dict):
        name, classes, options = name.get("name"), name.get("num_classes"), name.get("options")
        options = dict(options) if isinstance(options, dict) else {}
    return WeightsFile(
        state,
        model=name if isinstance(name, str) else None,
        num_classes=classes if isinstance(classes, int) else None,
        normalization=normalization_from_dict(norm) if isinstance(norm, dict) else None,
        options=options,
    )


def _unwrap(loaded: object, path: Path) -> WeightsFile:
    """Our record, a bare state dict, or a training checkpoint holding one."""
    if _tensors_only(loaded):
        return WeightsFile(dict(loaded))
    if isinstance(loaded, dict):
        if _tensors_only(loaded.get("state_dict")):
            return _from_record(dict(loaded["state_dict"]), loaded)
        if _tensors_only(loaded.get("model")):  # torchvision's reference training scripts
            return WeightsFile(dict(loaded["model"]))
    raise ValueError(
        f"{path}: no state dict found (expected a mapping of names to tensors, or one "
        "under 'state_dict' or 'model')"
    )


def load_failure(path: Path, error: BaseException) -> str:
    """Why ``torch.load`` failed, in words that fit the file.

    For a file that is no ``torch.save`` archive at all torch's own first line advises
    retrying with ``weights_only=False``, which would run code from the file: say what the
    file is not instead.
    """
    if not zipfile.is_zipfile(path):
        return "not a zip archive, as torch.save writes: damaged, truncated or another format"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_weights(path: str | Path) -> WeightsFile:
    """The state dict of a .pt/.pth/.bin or .safetensors file, with its record if any.

    A ``module.`` prefix on every key (a model saved inside DistributedDataParallel) is
    removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weight file")
    if path.suffix == SAFETENSORS_SUFFIX:
        state, metadata = safetensors_io.load_file(path)
        found = _from_record(state, safetensors_io.parse_record(metadata, path))
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for corrupt and unsafe files
            detail = load_failure(path, error)
            raise ValueError(f"{path}: not a readable PyTorch weights file ({detail})") from None
        found = _unwrap(loaded, path)
    if found.state_dict and all(key.startswith("module.") for key in found.state_dict):
        found.state_dict = {key[7:]: value for key, value in found.state_dict.items()}
    return found


def load_weights(
    path: str | Path, *, model: str | None = None, num_classes: int | None = None
) -> FCN:
    """Build the model a weights file records and load every tensor into it.

    ``model`` and ``num_classes`` are needed for a bare state dict and, when given for
    a file that records its own, must agree with it. A training checkpoint's build
    options (geometry, upsampling, ...) are passed on. Every key must match (strict).
    """
    found = read_weights(path)
    for what, given, recorded in (
        ("model", model, found.model),
        ("num_classes", num_classes, found.num_classes),
    ):
        if given is not None and recorded is not None and given != recorded:
            raise ValueError(f"{path}: the file records {what} {recorded!r}, not {given!r}")
    name = model or found.model
    classes = num_classes or found.num_classes
    if name is None or classes is None:
        raise ValueError(
            f"{path}: a bare state dict does not say which model it holds; "
            "pass the model name and the class count (--model, --num-classes)"
        )
    fcn = build_model(name, num_classes=classes, **found.options)
    transplant(fcn, found.state_dict, strict=True)
    if found.normalization is not None:
        fcn.backbone.normalization = found.normalization
    return fcn
