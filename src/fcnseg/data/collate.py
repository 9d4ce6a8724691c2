"""Batching images of different sizes: pad each to the batch maximum.

Images pad with ``fill`` (0, which is the mean after normalisation) at the bottom and right,
labels with the ignore index, so padded pixels add nothing to the loss or the metrics.
Whole-image training (the reference's batch of 1) and multi-image batches then share one
code path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .transforms import one_thread

__all__ = ["PadCollate", "pad_collate"]


def _pad_stack(tensors: Sequence[torch.Tensor], value: float, divisor: int) -> torch.Tensor:
    height = max(int(t.shape[-2]) for t in tensors)
    width = max(int(t.shape[-1]) for t in tensors)
    height = -(-height // divisor) * divisor
    width = -(-width // divisor) * divisor
    first = tensors[0]
    out = torch.full((len(tensors), *first.shape[:-2], height, width), value, dtype=first.dtype)
    for slot, tensor in zip(out, tensors, strict=True):
        if tensor.shape[:-2] != first.shape[:-2]:
            raise ValueError(
                f"cannot batch tensors of shapes {tuple(first.shape)} and {tuple(tensor.shape)}: "
                "they differ in more than height and width"
            )
        slot[..., : tensor.shape[-2], : tensor.shape[-1]] = tensor
    return out


def _collate(items: Sequence[Any], value: float, divisor: int) -> Any:
    first = items[0]
    if isinstance(first, Mapping):
        return {key: _pad_stack([item[key] for item in items], value, divisor) for key in first}
    return _pad_stack(items, value, divisor)


@dataclass(frozen=True)
class PadCollate:
    """``DataLoader(collate_fn=PadCollate())``: (image, label) pairs -> padded batches.

    Images (C x H x W, or a dict of them) become N x C x H' x W'; labels (H x W, or a dict)
    N x H' x W', H' and W' the largest in the batch rounded up to ``size_divisor``.
    """

    ignore_index: int = 255
    fill: float = 0.0
    size_divisor: int = 1

    def __call__(self, batch: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
        if not batch:
            raise ValueError("cannot collate an empty batch")
        images, labels = zip(*batch, strict=True)
        with one_thread():  # copies of a few MB: faster on one thread (see one_thread)
            return (
                _collate(images, self.fill, self.size_divisor),
                _collate(labels, self.ignore_index, self.size_divisor),
            )


pad_collate = PadCollate()
