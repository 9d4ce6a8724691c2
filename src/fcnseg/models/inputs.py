"""A model's inputs by name: from one stacked tensor, a dict or a tuple, checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["Inputs", "split_inputs", "stack_inputs", "layout"]

Inputs = torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def split_inputs(x: Inputs, channels: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """The inputs by name from a stacked N x C x H x W tensor, a dict or a tuple (in the
    order of ``channels``), each checked for its channel count and the common size."""
    names = list(channels)
    if isinstance(x, torch.Tensor):
        expected = sum(channels.values())
        if x.dim() != 4 or x.shape[1] != expected:
            stacked = f" ({layout(channels)} stacked)" if len(names) > 1 else ""
            raise ValueError(
                f"expected an N x {expected} x H x W batch{stacked}, got shape {tuple(x.shape)}"
            )
        if len(names) == 1:
            return {names[0]: x}
        parts = dict(zip(names, torch.split(x, list(channels.values()), dim=1), strict=True))
    elif isinstance(x, Mapping):
        if set(x) != set(names):
            raise ValueError(
                f"inputs {sorted(x)} do not match the model's {names}: pass exactly these "
                "(NYUDv2: modalities = [...] in the reader options)"
            )
        parts = {name: x[name] for name in names}
    elif isinstance(x, Sequence):
        if len(x) != len(names):
            raise ValueError(f"expected {len(names)} inputs ({layout(channels)}), got {len(x)}")
        parts = dict(zip(names, x, strict=True))
    else:
        raise TypeError(f"expected a tensor, a dict or a tuple of tensors, got {type(x).__name__}")
    _check_parts(parts, channels)
    return parts


def _check_parts(parts: Mapping[str, torch.Tensor], channels: Mapping[str, int]) -> None:
    size = None
    for name, part in parts.items():
        if part.dim() != 4 or part.shape[1] != channels[name]:
            raise ValueError(
                f"input {name!r} must be N x {channels[name]} x H x W, got {tuple(part.shape)}"
            )
        if size is not None and part.shape[-2:] != size:
            raise ValueError(f"input {name!r} is {tuple(part.shape[-2:])}, the others {size}")
        size = part.shape[-2:]


def stack_inputs(x: Inputs, channels: Mapping[str, int]) -> torch.Tensor:
    """The inputs stacked on the channel axis in the order of ``channels``."""
    if isinstance(x, torch.Tensor):
        split_inputs(x, channels)  # checks the layout
        return x
    parts = split_inputs(x, channels)
    return torch.cat(list(parts.values()), dim=1) if len(parts) > 1 else next(iter(parts.values()))


def layout(channels: Mapping[str, int]) -> str:
    return " + ".join(f"{name} {count}" for name, count in channels.items())
