"""Test-time augmentation: scores averaged over rescaled and mirrored copies of the input.

    tta = TTA(scales=(0.75, 1.0, 1.25), flip=True)
    scores = tta_forward(forward, batch, tta)   # as forward(batch) gives, at the input's size

Each copy is the input resized (bilinear) by one scale, and with ``flip`` also mirrored left
to right; its scores are mirrored back and resized (bilinear) to the input's height and
width, and the scores of all copies are averaged as logits, before any softmax (the
label map is their argmax either way; averaged logits keep ``probabilities`` a softmax of
the model's own kind of output). ``forward`` is any scoring function (an engine, or
tiled scoring), so TTA works the same on every engine, whole and tiled. Costs
``len(scales) * (2 if flip else 1)`` forward passes, each sized by its scale squared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TTA", "tta_forward"]

Batch = Mapping[str, torch.Tensor]
Scores = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TTA:
    """The scales (1.0: the input's own size) and whether to add mirrored copies."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.scales or any(not 0.1 <= scale <= 4.0 for scale in self.scales):
            raise ValueError(f"TTA scales {self.scales}: give one or more between 0.1 and 4")

    @classmethod
    def of(cls, scales: Sequence[float] | None = None, flip: bool = True) -> TTA:
        return cls(scales=tuple(float(s) for s in (scales or (1.0,))), flip=flip)

    @property
    def passes(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return F.interpolate(tensor.float(), size=size, mode="bilinear", align_corners=False)


def _scaled(batch: Batch, scale: float) -> Batch:
    height, width = next(iter(batch.values())).shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return {name: _resize(tensor, size) for name, tensor in batch.items()}


def tta_forward(forward: Callable[[Batch], Scores], batch: Batch, tta: TTA) -> Scores:
    """The mean over ``tta``'s copies of ``forward``'s scores by task, at the input's size."""
    size = tuple(next(iter(batch.values())).shape[-2:])
    sums: Scores = {}
    for scale in tta.scales:
        copy = _scaled(batch, scale)
        outputs = [forward(copy)]
        if tta.flip:
            mirrored = forward({name: t.flip(-1) for name, t in copy.items()})
            outputs.append({task: s.flip(-1) for task, s in mirrored.items()})
        for scores in outputs:
            for task, task_scores in scores.items():
                resized = _resize(task_scores, size).float()
                sums[task] = resized if task not in sums else sums[task] + resized
    return {task: total / tta.passes for task, total in sums.items()}
