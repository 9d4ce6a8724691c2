"""Where a model runs: every device name of the library (the ``device`` config key,
``--device``, ``Segmenter(device=...)``) is read by ``resolve_device``, for training and
prediction alike."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """ "auto" is CUDA when there is one, else CPU; "cuda" under torchrun is this rank's GPU.
    Every device name (the ``device`` config key, ``--device``) is read here: a name torch
    does not know is one line naming it and the choices."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch lists its twenty device types, not the fix
        raise ValueError(
            f"device {name!r} is not a device: choose auto, cpu, cuda or cuda:N (the GPU's index)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA GPU is visible: use cpu")
        if device.index is None:
            return torch.device("cuda", local_rank)
    return device
