"""The checkpoint format: one ``torch.save`` file of plain data and tensors.

A checkpoint is a dict::

    format          "fcnseg.checkpoint"
    version         1
    model           {"name": "fcn8s_vgg16", "num_classes": 21,
                     "options": {"geometry", "upsample", "learnable_upsample", "in_channels",
                                 "output_stride"}}
    classes         ["background", "aeroplane", ...]
    palette         [[0, 0, 0], [128, 0, 0], ...]      one RGB triple per class
    ignore_index    255
    normalization   {"mean": [...], "std": [...], "bgr": bool, "input_range": float}
    state_dict      the model's parameters and buffers (plain, never DDP's "module." keys)
    metrics         the validation metrics of these weights, when they were evaluated
    confusion       the C x C validation confusion matrix behind ``metrics``
    training        (optional) what resuming needs: "config" (the resolved TrainConfig as a
                    dict), "epoch", "step_in_epoch" (optimizer steps done in that epoch),
                    "iteration", "best_mean_iu", "optimizer", "scheduler", "scaler", "rng"
                    (torch, CUDA, numpy and Python generator states)

A multi-input model (NYUDv2 RGB-D, RGB-HHA) records ``normalization`` by input:
``{"color": {"mean": ..., "std": ...}, "depth": {"mean": 7.844}}`` (log depth has only its
mean). A multi-task model (``MULTITASK_MODELS``, SIFT Flow) has ``num_classes``,
``classes``, ``palette`` and ``confusion`` as dicts by task, and ``metrics`` by task.

Everything in it is a tensor, number, string, list or dict, so it loads with
``torch.load(weights_only=True)``: loading runs no code from the file. Writes go to a temporary
file in the same folder, then ``os.replace`` it over the target, so a crash (even SIGKILL)
leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.nyud import LogDepth
from ..models import FCN, Normalization, build_model
from ..models.multitask import MULTITASK_MODELS, MultiTaskFCN, build_multitask_model
from ..weights.files import load_failure

__all__ = [
    "CheckpointError",
    "FORMAT",
    "VERSION",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "check_compatible",
    "load_weights",
    "rng_state",
    "set_rng_state",
    "unwrap",
    "normalization_record",
    "normalization_from_record",
]

FORMAT = "fcnseg.checkpoint"
VERSION = 1
_BUILD_OPTIONS = ("geometry", "upsample", "learnable_upsample", "in_channels", "output_stride")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file, the reason and the fix."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def make_checkpoint(
    model: nn.Module,
    *,
    build_options: dict[str, Any] | None = None,
    classes: Sequence[str] | Mapping[str, Sequence[str]],
    palette: Sequence[Sequence[int]] | Mapping[str, Sequence[Sequence[int]]],
    ignore_index: int = 255,
    metrics: dict[str, Any] | None = None,
    confusion: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (an FCN, possibly DDP-wrapped).

    ``build_options`` default to those the model was built with (``FCN.build_options``).
    For a multi-task model ``classes`` and ``palette`` are dicts by task.
    """
    net = unwrap(model)
    if not isinstance(net, FCN | MultiTaskFCN):
        raise TypeError(f"checkpoints hold fcnseg FCN models, not {type(net).__name__}")
    if build_options is None:
        build_options = getattr(net, "build_options", {})
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": net.name,
            "num_classes": net.num_classes,
            "options": {k: v for k, v in build_options.items() if k in _BUILD_OPTIONS},
        },
        "classes": _by_task(classes, list),
        "palette": _by_task(palette, lambda colors: _palette(colors, net.num_classes)),
        "ignore_index": int(ignore_index),
        "normalization": normalization_record(net.normalization),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    if metrics is not None:
        checkpoint["metrics"] = metrics
    if confusion is not None:
        checkpoint["confusion"] = _by_task(confusion, lambda matrix: matrix.cpu())
    if training is not None:
        checkpoint["training"] = training
    return checkpoint


def _by_task(value: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert(value)``, or a dict of it by task when ``value`` is a dict."""
    if isinstance(value, Mapping):
        return {task: convert(item) for task, item in value.items()}
    return convert(value)


def _palette(colors: Sequence[Sequence[int]], num_classes: int | Mapping[str, int]) -> list:
    count = len(colors) if isinstance(num_classes, Mapping) else num_classes
    return [list(map(int, color)) for color in colors[:count]]


def normalization_record(norm: Any) -> dict[str, Any]:
    """Plain data for a ``Normalization``, a ``LogDepth``, or a dict of them by input."""
    if isinstance(norm, Mapping):
        return {name: normalization_record(item) for name, item in norm.items()}
    if isinstance(norm, LogDepth):
        return {"mean": float(norm.mean)}
    if isinstance(norm, Normalization):
        return {
            "mean": list(norm.mean),
            "std": list(norm.std),
            "bgr": bool(norm.bgr),
            "input_range": float(norm.input_range),
        }
    raise TypeError(f"cannot record input normalisation {norm!r} in a checkpoint")


def normalization_from_record(record: dict[str, Any]) -> Any:
    """The normalisation ``normalization_record`` wrote: one, or a dict by input."""
    if "mean" not in record:
        return {name: normalization_from_record(item) for name, item in record.items()}
    if "std" not in record:
        return LogDepth(mean=record["mean"])
    return Normalization(
        mean=tuple(record["mean"]),
        std=tuple(record["std"]),
        bgr=record["bgr"],
        input_range=record["input_range"],
    )


def save_checkpoint(checkpoint: dict[str, Any], path: Path | str) -> Path:
    """Write atomically: a temporary file beside ``path``, flushed, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; act as open() does
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read and check a checkpoint; every failure is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found: pass a .pt file written by fcnseg train"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _names_code(error):
            raise CheckpointError(
                f"checkpoint {path} refused: loading it would run code named inside the file "
                f"({_offending_global(error)}), and fcnseg loads only tensors and plain data "
                "(torch.load weights_only=True). Re-save it from fcnseg, or if you trust its "
                "author, load it yourself and save its state_dict"
            ) from None
        raise CheckpointError(_corrupt(path, error)) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(_corrupt(path, error)) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an fcnseg checkpoint (a bare state dict or another tool's file): "
            "load its weights with fcnseg.surgery.transplant, or pass a checkpoint from "
            "fcnseg train"
        )
    if checkpoint.get("version", 0) > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {checkpoint['version']}, newer than this "
            f"fcnseg ({VERSION}): upgrade fcnseg"
        )
    missing = [key for key in ("model", "classes", "state_dict") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it is incomplete")
    return checkpoint


def _corrupt(path: Path, error: BaseException) -> str:
    detail = load_failure(path, error)
    return (
        f"checkpoint {path} is corrupt or truncated ({detail}): use another checkpoint "
        "(a run folder keeps last.pt and best.pt) or copy the file again"
    )


def _names_code(error: BaseException) -> bool:
    """Whether weights-only unpickling stopped at a Python object to import or call (rather
    than at bytes that are no pickle at all)."""
    text = str(error)
    detail = text.split("WeightsUnpickler error:", 1)[-1].lower()
    return "weights only" in text.lower() and any(
        word in detail for word in ("global", "class", "reduce", "build", "persistent")
    )


def _offending_global(error: BaseException) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"it names {match.group(1)}" if match else "it holds a pickled Python object"


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: Path | str = "checkpoint"
) -> FCN | MultiTaskFCN:
    """Build the checkpoint's model and load its weights (strictly: every key must match)."""
    spec = checkpoint["model"]
    try:
        if spec["name"] in MULTITASK_MODELS:
            model = build_multitask_model(spec["name"], **spec["options"])
        else:
            model = build_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot build its model ({error})") from None
    _load_state(model, checkpoint, path)
    norm = checkpoint.get("normalization")
    if norm is not None:
        recorded = normalization_from_record(norm)
        if recorded != model.normalization:
            raise CheckpointError(
                f"checkpoint {path} was trained with input normalisation {recorded}, but "
                f"{spec['name']} now uses {model.normalization}: the weights would see "
                "wrongly scaled inputs"
            )
    return model


def check_compatible(checkpoint: dict[str, Any], model: nn.Module, path: Path | str) -> None:
    """Refuse a checkpoint of another model or class count, saying what each one is."""
    net = unwrap(model)
    spec = checkpoint["model"]
    if spec["name"] != net.name or spec["num_classes"] != net.num_classes:
        raise CheckpointError(
            f"checkpoint {path} holds {spec['name']} with {spec['num_classes']} classes, but "
            f"this run builds {net.name} with {net.num_classes} classes: use a checkpoint of "
            "the same model and class count (or init_from=..., which transplants by name)"
        )


def _load_state(model: nn.Module, checkpoint: dict[str, Any], path: Path | str) -> None:
    check_compatible(checkpoint, model, path)
    state = checkpoint["state_dict"]
    expected = unwrap(model).state_dict()
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
        raise CheckpointError(
            f"checkpoint {path} does not fit {checkpoint['model']['name']} "
            f"({'; '.join(problems)}): it was written by another version of the model"
        )
    unwrap(model).load_state_dict(state)


def load_weights(model: nn.Module, checkpoint: dict[str, Any], path: Path | str) -> None:
    """Load a checkpoint's weights into ``model`` after checking name, classes and keys."""
    _load_state(model, checkpoint, path)


# ---------------------------------------------------------------------------------------------
# Random number generator states (plain data, so they survive weights_only loading)


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from: torch (CPU and CUDA), numpy, Python."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _python_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
