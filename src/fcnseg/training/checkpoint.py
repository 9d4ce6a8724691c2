"""Training checkpoints: ``modelfile`` records with a ``training`` part, and the generator
states resuming needs.

A checkpoint is an fcnseg model file (``fcnseg.modelfile``: spec, weights, classes, palette,
metrics, confusion, checksum) whose ``training`` holds what resuming needs: "config" (the
resolved TrainConfig as a dict), "epoch", "step_in_epoch" (optimizer steps done in that
epoch), "iteration", "best_mean_iu", "optimizer", "scheduler", "scaler", "rng" (the generator
states of torch on the CPU and on the process's own GPU, numpy and Python). Everything in it
is plain data or tensors, so it loads with ``torch.load(weights_only=True)``; writes are
atomic.
"""

from __future__ import annotations

import contextlib
import errno
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

from ..fileio import FileFormatError
from ..modelfile import ModelRecord, read_record, unwrap, write_record

__all__ = [
    "CheckpointError",
    "WriteError",
    "ModelRecord",
    "writing",
    "remove_orphans",
    "load_checkpoint",
    "save_checkpoint",
    "rng_state",
    "set_rng_state",
    "unwrap",
]

CheckpointError = FileFormatError


class WriteError(OSError):
    """A file could not be written (disk full, a file size limit, no permission): one line
    naming the file and why. What was there before is kept (every write is atomic)."""


@contextlib.contextmanager
def writing(path: Path | str, *, kept: bool = True) -> Iterator[None]:
    """Turn a failed write of ``path`` into one ``WriteError`` line. ``torch.save`` reports a
    full disk as a RuntimeError of many lines ("[enforce fail at inline_container.cc ...]");
    Python's writes as an OSError that names no file."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not _write_failure(error):
            raise
        note = f": the previous {Path(path).name} is kept" if kept and Path(path).exists() else ""
        raise WriteError(f"could not write {path} ({_why(error)}){note}") from None


def _write_failure(error: RuntimeError) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("write failed", "unexpected pos", "inline_container"))


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on the disk"
        if error.errno == errno.EFBIG:
            return "the file size limit was reached (ulimit -f)"
        return error.strerror or type(error).__name__
    if _write_failure(error):  # torch's archive writer says only where it stopped
        return _no_room()
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _no_room() -> str:
    """Why a write stopped short when the error does not say: a file size limit if one is
    set, else a full disk."""
    if resource is None:  # not POSIX
        return "no space left on the disk"
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft != resource.RLIM_INFINITY:
        return f"the file size limit was reached (ulimit -f: {soft} bytes)"
    return "no space left on the disk"


_ORPHAN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # fileio.atomic_write's .NAME.XXXXXXXX.tmp


def remove_orphans(folder: Path | str) -> list[Path]:
    """Remove the temporary files (``.last.pt.XXXX.tmp`` and the like) that a process killed
    in the middle of an atomic write leaves behind; the files removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file() and _ORPHAN.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_checkpoint(path: Path | str) -> ModelRecord:
    """Read and check a checkpoint; every failure is one line naming the file."""
    return read_record(path, what="checkpoint")


def save_checkpoint(record: ModelRecord, path: Path | str) -> Path:
    """Write atomically: a temporary file beside ``path``, fsynced, then renamed over it."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_record(path, record)


# ---------------------------------------------------------------------------------------------
# Random number generator states (plain data, so they survive weights_only loading)


def rng_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every generator a training step may draw from: torch's on the CPU and on ``device``
    (this process's GPU only, so a run resumes on a machine that sees fewer GPUs), numpy,
    Python."""
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
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Put back the generators ``rng_state`` saved; the CUDA one into ``device``, when it
    is a GPU."""
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
    device = torch.device(device)
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(_own_cuda_state(state["cuda"], device), device)


def _own_cuda_state(saved: torch.Tensor | list[torch.Tensor], device: torch.device) -> Any:
    """The state of ``device``'s generator: the one saved, or from a checkpoint that saved
    every GPU's, that of the GPU of the same index (the first ones again past their count)."""
    if isinstance(saved, torch.Tensor):
        return saved
    index = device.index if device.index is not None else torch.cuda.current_device()
    return saved[index % len(saved)]


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
