"""Training checkpoints: ``modelfile`` records with a ``training`` part, and the generator
states resuming needs.

A checkpoint is an fcnseg model file (``fcnseg.modelfile``: spec, weights, classes, palette,
metrics, confusion, checksum) whose ``training`` holds what resuming needs: "config" (the
resolved TrainConfig as a dict), "epoch", "step_in_epoch" (optimizer steps done in that
epoch), "iteration", "best_mean_iu", "optimizer", "scheduler", "scaler", "rng" (torch, CUDA,
numpy and Python generator states). Everything in it is plain data or tensors, so it loads
with ``torch.load(weights_only=True)``; writes are atomic.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import FileFormatError
from ..modelfile import ModelRecord, read_record, unwrap, write_record

__all__ = [
    "CheckpointError",
    "ModelRecord",
    "load_checkpoint",
    "save_checkpoint",
    "rng_state",
    "set_rng_state",
    "unwrap",
]

CheckpointError = FileFormatError


def load_checkpoint(path: Path | str) -> ModelRecord:
    """Read and check a checkpoint; every failure is one line naming the file."""
    return read_record(path, what="checkpoint")


def save_checkpoint(record: ModelRecord, path: Path | str) -> Path:
    """Write atomically: a temporary file beside ``path``, fsynced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_record(path, record)


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
