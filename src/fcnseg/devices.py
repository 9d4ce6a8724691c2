"""Where a model runs: every device name of the library (the ``device`` config key,
``--device``, ``Segmenter(device=...)``) is read by ``resolve_device``, for training and
prediction alike."""

from __future__ import annotations

import inspect

import torch

__all__ = ["resolve_device", "native_cuda_bf16"]


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


def native_cuda_bf16() -> bool:
    """Whether the current GPU computes in bf16 itself (compute capability 8.0 and up).

    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (T4,
    V100): there fp16 with a GradScaler runs at tensor-core speed and bf16 does not."""
    if not torch.cuda.is_available():
        return False
    parameters = inspect.signature(torch.cuda.is_bf16_supported).parameters
    if "including_emulation" in parameters:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability() >= (8, 0)
