"""The one file format of fcnseg models: training checkpoints, .pt and .safetensors weights.

Every file holds one ``ModelRecord``: the model's spec (``ModelSpec.to_dict()``, from which
the model is rebuilt with nothing else), its state dict, the class names and palette of each
task, the ignore label, and optionally the validation metrics and confusion matrices; a
training checkpoint adds ``training`` (what resuming needs). The suffix picks the format:

- ``.safetensors``: the tensors, and the record as JSON in the file's metadata (``record``).
  No training state.
- anything else (``.pt``): ``torch.save`` of a dict of plain data and tensors::

      format "fcnseg", version 2, spec {...}, classes {task: [...]}, palette {task: [...]},
      ignore_index, metrics, confusion {task: C x C}, training, checksum, state_dict

  read back with ``torch.load(weights_only=True)``: loading never runs code from the file.

``checksum`` is the SHA-256 of everything else in the file: the tensors (names, dtypes, shapes
and bytes, in name order) and the record around them (spec, normalisations, classes, ...,
training state). A file damaged after it was written is refused instead of predicting
silently wrong labels.
Writes are atomic (``fileio.atomic_write``). Files of fcnseg 0.1 (a ``fcnseg.checkpoint``
version 1, a weights file with ``model`` / ``num_classes`` / ``options``) still load; they
carry no checksum, so the CRC-32 of each entry of their zip archive is checked instead
(``fileio.check_archive``; 0.1's .safetensors files have nothing to check).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .builder import build_model, resolve_spec
from .fileio import (
    SAFETENSORS_SUFFIX,
    FileFormatError,
    atomic_write,
    check_archive,
    read_safetensors,
    read_torch_file,
    tensors_only,
    write_safetensors,
)
from .models.fcn import FCN
from .models.normalization import from_record
from .models.spec import ModelSpec, SpecError
from .surgery import WeightMismatchError, transplant

__all__ = [
    "FORMAT",
    "VERSION",
    "ModelRecord",
    "FileFormatError",
    "record_of",
    "save_weights",
    "write_record",
    "read_record",
    "load_weights",
    "unwrap",
    "checksum",
    "BareStateDict",
]

FORMAT = "fcnseg"
VERSION = 2
ONNX_SUFFIX = ".onnx"  # fcnseg export onnx / fcnseg quantize: not read here
_LEGACY_CHECKPOINT = "fcnseg.checkpoint"  # fcnseg 0.1's training checkpoints


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


@dataclass
class ModelRecord:
    """Everything a model file holds."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    classes: dict[str, tuple[str, ...]]  # by task
    palette: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)  # by task
    ignore_index: int = 255
    metrics: dict[str, Any] | None = None
    confusion: dict[str, torch.Tensor] | None = None  # by task
    training: dict[str, Any] | None = None
    path: Path | None = None  # where it was read from, for messages

    def build(self) -> FCN:
        """The model, with these weights (every key must match).

        The model is built on the meta device and given uninitialised memory, which the
        weights then fill: no time goes into initialising weights about to be replaced.
        """
        where = f"{self.path}: " if self.path else ""
        try:
            with torch.device("meta"):
                model = build_model(self.spec.architecture())
        except (SpecError, TypeError) as error:
            raise FileFormatError(f"{where}cannot build its model ({error})") from None
        kept = set(model.state_dict())
        if any(name not in kept for name, _ in model.named_buffers()):
            model = build_model(self.spec.architecture())  # a buffer no file holds
        else:
            model.to_empty(device="cpu")
        load_state(model, self.state_dict, where=self.path or "the record")
        return model


def record_of(
    model: nn.Module,
    *,
    classes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    palette: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]] | None = None,
    ignore_index: int = 255,
    metrics: dict[str, Any] | None = None,
    confusion: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    training: dict[str, Any] | None = None,
) -> ModelRecord:
    """The record of ``model`` (an FCN, possibly DDP-wrapped). Classes and palette are given
    by task, or as one list for a single-task model; unnamed classes are "class 0", ..."""
    net = unwrap(model)
    if not isinstance(net, FCN):
        raise TypeError(f"fcnseg files hold fcnseg models, not {type(net).__name__}")
    spec = net.spec
    by_task = {
        "classes": _by_task(classes, spec.task_names),
        "palette": _by_task(palette, spec.task_names),
        "confusion": _by_task(confusion, spec.task_names),
    }
    names = {}
    for task in spec.tasks:
        given = by_task["classes"].get(task.name)
        names[task.name] = tuple(given or (f"class {i}" for i in range(task.classes)))
        if len(names[task.name]) != task.classes:
            raise ValueError(
                f"{len(names[task.name])} class names for the {task.classes} classes of "
                f"task {task.name!r}"
            )
    return ModelRecord(
        spec=spec,
        state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()},
        classes=names,
        palette={t: [tuple(int(c) for c in color) for color in p] for t, p in by_task["palette"].items()},
        ignore_index=int(ignore_index),
        metrics=metrics,
        confusion={t: m.detach().cpu() for t, m in by_task["confusion"].items()} or None,
        training=training,
    )


def _by_task(value: Any, tasks: tuple[str, ...]) -> dict[str, Any]:
    """A value given by task, or once for a single-task model, as a dict by task."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = set(value) - set(tasks)
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not tasks of the model ({list(tasks)})")
        return dict(value)
    if len(tasks) != 1:
        raise ValueError(f"the model predicts {list(tasks)}: give one value per task, as a dict")
    return {tasks[0]: value}


# ---------------------------------------------------------------------------------------------
# Writing


def save_weights(path: str | Path, model: nn.Module, **record: Any) -> Path:
    """Write ``model`` with its spec (and ``record_of``'s keywords: classes, palette, ...)
    to ``path``; the suffix picks the format (``.safetensors``, else torch)."""
    return write_record(path, record_of(model, **record))


def write_record(path: str | Path, record: ModelRecord) -> Path:
    """Write ``record`` atomically, in the format the suffix of ``path`` says."""
    path = Path(path)
    plain = _plain(record)
    if path.suffix == SAFETENSORS_SUFFIX:
        if record.training is not None:
            raise ValueError(f"{path}: a training checkpoint is a torch file: name it .pt")
        metadata = {"format": FORMAT, "version": str(VERSION), "record": json.dumps(plain)}
        metadata["checksum"] = checksum(record.state_dict, metadata)
        return atomic_write(path, lambda tmp: write_safetensors(tmp, record.state_dict, metadata))
    payload = {"format": FORMAT, "version": VERSION, **plain}
    if record.confusion is not None:
        payload["confusion"] = record.confusion
    if record.training is not None:
        payload["training"] = record.training
    payload["checksum"] = checksum(record.state_dict, payload)
    payload["state_dict"] = record.state_dict
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _plain(record: ModelRecord) -> dict[str, Any]:
    """The record's JSON-ready part (no tensors)."""
    plain = {
        "spec": record.spec.to_dict(),
        "classes": {task: list(names) for task, names in record.classes.items()},
        "palette": {task: [list(c) for c in colors] for task, colors in record.palette.items()},
        "ignore_index": record.ignore_index,
    }
    if record.metrics is not None:
        plain["metrics"] = record.metrics
    return plain


def checksum(state_dict: Mapping[str, torch.Tensor], record: Any = None) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order, then over
    ``record`` (the rest of the file: plain data and tensors, nested; any ``checksum`` and
    ``state_dict`` keys in it are left out)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(f"{name}|".encode())
        _digest_tensor(digest, state_dict[name])
    if record is not None:
        rest = {k: v for k, v in record.items() if k not in ("checksum", "state_dict")}
        _digest_value(digest, rest)
    return digest.hexdigest()


def _digest_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer, uncopied


def _digest_value(digest: Any, value: Any) -> None:
    """Plain data and tensors, nested, in an order that does not depend on dict order."""
    if isinstance(value, torch.Tensor):
        digest.update(b"T")
        _digest_tensor(digest, value)
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}:".encode())
            _digest_value(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _digest_value(digest, item)
        digest.update(b"]")
    else:  # str, int, float, bool, None: repr is exact
        digest.update(f"{type(value).__name__}:{value!r};".encode())


# ---------------------------------------------------------------------------------------------
# Reading


def read_record(path: str | Path, what: str = "model file") -> ModelRecord:
    """The record in ``path`` (any format, fcnseg 0.1's too); every failure is one
    ``FileFormatError`` (or ``FileNotFoundError``) line naming the file."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        state, metadata = read_safetensors(path)
        record = _from_safetensors(state, metadata, path)
    else:
        try:
            loaded = read_torch_file(path, what)
        except FileFormatError:
            if path.suffix.lower() == ONNX_SUFFIX:
                raise FileFormatError(_onnx_given(path, what)) from None
            raise
        if not _checksummed(loaded):
            check_archive(path, what)
        record = _from_torch(loaded, path)
    record.path = path
    return record


def _onnx_given(path: Path, what: str) -> str:
    """An exported model where a PyTorch file belongs is no damage: say where it goes."""
    return (
        f"{what} {path} is an ONNX file, not a PyTorch {what}: run it with fcnseg predict "
        f"--checkpoint {path}, evaluate it with fcnseg eval --checkpoint <the .pt it was made "
        f"from> --onnx {path}"
    )


def load_weights(
    path: str | Path, *, model: str | None = None, num_classes: int | None = None
) -> FCN:
    """The model a file records, with its weights. For a bare state dict (no record) name
    the model and class count; for a file with a record they must agree with it."""
    path = Path(path)
    try:
        record = read_record(path)
    except BareStateDict as bare:
        if model is None or num_classes is None:
            raise FileFormatError(
                f"{path}: a bare state dict does not say which model it holds; pass the model "
                "name and the class count (--model, --num-classes)"
            ) from None
        net = build_model(model, num_classes=num_classes)
        try:
            transplant(net, bare.state_dict, strict=True)
        except WeightMismatchError as error:
            raise FileFormatError(f"{path}: {error}") from None
        return net
    for what, given, recorded in (
        ("model", model, record.spec.name),
        ("num_classes", num_classes, _single_classes(record.spec)),
    ):
        if given is not None and recorded is not None and given != recorded:
            raise FileFormatError(f"{path}: the file records {what} {recorded!r}, not {given!r}")
    return record.build()


def _single_classes(spec: ModelSpec) -> int | None:
    return spec.tasks[0].classes if len(spec.tasks) == 1 else None


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, where: Any) -> None:
    """Load ``state`` into ``model`` after checking every key and shape."""
    net = unwrap(model)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    surplus = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or surplus or wrong:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing[:3])}")
        if surplus:
            problems.append(f"unexpected {', '.join(surplus[:3])}")
        if wrong:
            problems.append(f"shape of {', '.join(wrong[:3])}")
        raise FileFormatError(
            f"{where}: its weights do not fit {net.spec.label} ({'; '.join(problems)}): "
            "it was written for another model or version"
        )
    net.load_state_dict(state)


class BareStateDict(FileFormatError):
    """A bare state dict: tensors without a record."""

    def __init__(self, path: Path, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__(f"{path} holds a bare state dict, not an fcnseg model file")
        self.state_dict = state_dict


def _checksummed(loaded: Any) -> bool:
    """Whether a loaded torch file is one of today's, whose checksum ``_check_sum`` tests."""
    return isinstance(loaded, dict) and loaded.get("format") == FORMAT and "spec" in loaded


def _from_torch(loaded: Any, path: Path) -> ModelRecord:
    if tensors_only(loaded):
        raise BareStateDict(path, dict(loaded))
    if not isinstance(loaded, dict):
        raise FileFormatError(f"{path} is not an fcnseg model file: it holds no dict of tensors")
    if loaded.get("format") == FORMAT and "spec" in loaded:
        _check_version(loaded.get("version"), path)
        _check_sum(loaded.get("state_dict"), loaded, path)
        return _record_v2(loaded, loaded.get("state_dict"), path)
    if loaded.get("format") == _LEGACY_CHECKPOINT:
        return _record_v1(loaded["model"], loaded, loaded.get("state_dict"), path)
    if isinstance(loaded.get("model"), str) and tensors_only(loaded.get("state_dict")):
        return _record_v1(loaded, loaded, loaded["state_dict"], path)  # 0.1 weights file
    for key in ("state_dict", "model"):
        if tensors_only(loaded.get(key)):
            raise BareStateDict(path, dict(loaded[key]))
    raise FileFormatError(
        f"{path} is not an fcnseg model file (no format record, no state dict): pass a "
        "checkpoint from fcnseg train or a file from fcnseg weights convert"
    )


def _from_safetensors(state: dict, metadata: Mapping[str, str], path: Path) -> ModelRecord:
    if metadata.get("format") != FORMAT:
        raise BareStateDict(path, state)
    if "record" in metadata:
        _check_version(metadata.get("version"), path)
        _check_sum(state, metadata, path)
        try:
            plain = json.loads(metadata["record"])
        except ValueError as error:
            raise FileFormatError(f"{path}: malformed fcnseg metadata ({error})") from None
        return _record_v2(plain, state, path)
    try:
        legacy = {"model": metadata["model"], "num_classes": int(metadata["num_classes"])}
        for key in ("normalization", "options"):
            if key in metadata:
                legacy[key] = json.loads(metadata[key])
    except (KeyError, ValueError, TypeError) as error:
        raise FileFormatError(f"{path}: malformed fcnseg metadata ({error})") from None
    return _record_v1(legacy, legacy, state, path)


def _check_version(version: Any, path: Path) -> None:
    """Refuse a file of a newer format first: a newer fcnseg may also checksum otherwise."""
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise FileFormatError(f"{path}: malformed format version {version!r}") from None
    if number > VERSION:
        raise FileFormatError(
            f"{path} has format version {number}, newer than this fcnseg reads ({VERSION}): "
            "upgrade fcnseg"
        )


def _record_v2(plain: Mapping[str, Any], state: Any, path: Path) -> ModelRecord:
    if not tensors_only(state):
        raise FileFormatError(f"{path} lacks its state dict: it is incomplete")
    try:
        spec = ModelSpec.from_dict(plain["spec"])
        return ModelRecord(
            spec=spec,
            state_dict=dict(state),
            classes={t: tuple(map(str, n)) for t, n in dict(plain["classes"]).items()},
            palette={t: [tuple(map(int, c)) for c in p] for t, p in dict(plain.get("palette", {})).items()},
            ignore_index=int(plain.get("ignore_index", 255)),
            metrics=plain.get("metrics"),
            confusion=plain.get("confusion"),
            training=plain.get("training"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise FileFormatError(f"{path}: malformed fcnseg record ({error})") from None


def _check_sum(state: Any, stored: Mapping[str, Any], path: Path) -> None:
    """Refuse a file whose contents differ from what the checksum written with them says
    (before reading anything of it: a damaged record could fail in any way)."""
    if not tensors_only(state):
        raise FileFormatError(f"{path} lacks its state dict: it is incomplete")
    expected = stored.get("checksum")
    if expected is None:
        raise FileFormatError(
            f"{path} lacks its checksum: it is incomplete or was not written by fcnseg"
        )
    if checksum(state, stored) != expected:
        raise FileFormatError(
            f"{path}: its contents do not match the checksum written with them: the file was "
            "damaged after it was saved; use another copy (a run folder keeps last.pt and best.pt)"
        )


def _record_v1(model: Mapping[str, Any], top: Mapping[str, Any], state: Any, path: Path):
    """A file of fcnseg 0.1: the registered name, class count(s), build options and the
    normalisation, from which today's spec follows."""
    if not tensors_only(state):
        raise FileFormatError(f"{path} lacks its state dict: it is incomplete")
    try:
        name, classes = model["name"] if "name" in model else model["model"], model["num_classes"]
        options = dict(model.get("options") or {})
        if isinstance(classes, Mapping):
            spec = resolve_spec(name, tasks=dict(classes), **options)
        else:
            spec = resolve_spec(name, num_classes=int(classes), **options)
        spec = _with_normalization(spec, top.get("normalization"))
        tasks = spec.task_names
        return ModelRecord(
            spec=spec,
            state_dict=dict(state),
            classes={t: tuple(v) for t, v in _by_task(top.get("classes"), tasks).items()}
            or {t.name: tuple(f"class {i}" for i in range(t.classes)) for t in spec.tasks},
            palette={
                t: [tuple(map(int, c)) for c in v]
                for t, v in _by_task(top.get("palette"), tasks).items()
            },
            ignore_index=int(top.get("ignore_index", 255)),
            metrics=top.get("metrics"),
            confusion=_by_task(top.get("confusion"), tasks) or None,
            training=top.get("training"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise FileFormatError(f"{path}: malformed fcnseg 0.1 record ({error})") from None


def _with_normalization(spec: ModelSpec, record: Any) -> ModelSpec:
    """The inputs with the normalisation a 0.1 file recorded (one, or by input name)."""
    if not isinstance(record, Mapping):
        return spec
    by_input = record if "mean" not in record else {spec.inputs[0].name: record}
    inputs = tuple(
        dataclasses.replace(item, normalization=from_record(by_input[item.name]))
        if item.name in by_input
        else item
        for item in spec.inputs
    )
    return dataclasses.replace(spec, inputs=inputs)
