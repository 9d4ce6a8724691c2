"""Per-pixel softmax cross-entropy with the ignore label, loss sampling and class balancing.

The reference trains with Caffe's SoftmaxWithLoss, ``normalize: false``: the loss is the
*sum* over every labelled pixel (about 250k on a 500 x 500 PASCAL image), which is why its
learning rates are as small as 1e-10. ``reduction="mean"`` averages over the labelled pixels
instead, the usual choice with modern recipes.

Loss sampling (Section 3.4 and 4.4): patchwise training draws patches at random; whole-image
training gets the same effect by keeping each cell of the final score map with probability
``1 - p`` and ignoring the rest. A cell is ``sampling_cell`` pixels wide (default 32, the
stride of the coarsest scores, whose every cell sees one receptive field).

Class balancing weights each pixel's loss by its class: ``median_frequency_weights`` computes
Eigen & Fergus's median-frequency weights from a dataset, or the weights can be given.

Beside cross-entropy (``loss="cross_entropy"``, the paper's), ``SegmentationLoss`` offers the
losses used where classes are very unequal in size; each honours the ignore label, loss
sampling and class weights:

- ``"focal"`` (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t`` per pixel, ``p_t`` the softmax
  probability of the labelled class; well classified pixels weigh less. ``gamma = 0`` is
  cross-entropy. Reduced like cross-entropy (class weights scale each pixel).
- ``"dice"`` (soft Dice, Milletari et al. 2016): per class c, over every labelled pixel of
  the batch, ``1 - 2 sum(p_c y_c) / (sum(p_c) + sum(y_c))``; the loss is the mean of that
  over the classes present in the labels (weighted by the class weights, if given). Classes
  absent from the labels are left out: their score would be 0/0, and counting them as
  perfect would shrink the loss by the number of classes missing from a batch. Dice is a
  ratio already: ``reduction`` does not apply to it.
- ``"ce+dice"``: cross-entropy (reduced as ``reduction`` says) plus Dice, weight 1 each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSSES",
    "DICE_LOSSES",
    "REDUCTIONS",
    "DEFAULT_LOSS",
    "FOCAL_GAMMA",
    "SAMPLING_CELL",
    "SEGMENTATION_REDUCTION",
    "MULTITASK_REDUCTION",
    "SegmentationLoss",
    "MultiTaskLoss",
    "dice_loss",
    "focal_loss",
    "sample_mask",
    "class_pixel_counts",
    "median_frequency_weights",
]


LOSSES = ("cross_entropy", "dice", "focal", "ce+dice")
# The losses with a Dice term: a mean over classes, which a cross-entropy summed over every
# pixel would drown; they need reduction "mean".
DICE_LOSSES = ("dice", "ce+dice")
REDUCTIONS = ("sum", "mean")

# Each loss option's default, for the losses here and the training config alike.
DEFAULT_LOSS = "cross_entropy"  # the paper's
FOCAL_GAMMA = 2.0  # Lin et al.'s choice
SAMPLING_CELL = 32  # the stride of the coarsest scores: one receptive field per cell
# One SegmentationLoss averages, as modern recipes do; a MultiTaskLoss sums, as the SIFT Flow
# reference's two SoftmaxWithLoss layers do (normalize: false).
SEGMENTATION_REDUCTION = "mean"
MULTITASK_REDUCTION = "sum"


class SegmentationLoss(nn.Module):
    """Softmax cross-entropy (or ``loss`` = focal, Dice, CE + Dice) over N x C x H x W logits
    and N x H x W labels.

    ``reduction`` "sum" (the reference's unnormalised loss) or "mean" (over the pixels that
    count: labelled, kept by sampling; weighted pixels weigh as their class weight says);
    for cross-entropy and focal, and the cross-entropy half of "ce+dice".
    ``sampling`` is the probability p of dropping a cell (0 keeps every pixel).
    ``focal_gamma`` is the focal loss's focusing exponent.
    """

    def __init__(
        self,
        *,
        reduction: str = SEGMENTATION_REDUCTION,
        ignore_index: int = 255,
        weight: Sequence[float] | torch.Tensor | None = None,
        sampling: float = 0.0,
        sampling_cell: int = SAMPLING_CELL,
        loss: str = DEFAULT_LOSS,
        focal_gamma: float = FOCAL_GAMMA,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be at least 0, got {focal_gamma}")
        self.loss, self.focal_gamma = loss, float(focal_gamma)
        if reduction not in REDUCTIONS:
            choices = " or ".join(map(repr, REDUCTIONS))
            raise ValueError(f"loss reduction must be {choices}, got {reduction!r}")
        if not 0.0 <= sampling < 1.0:
            raise ValueError(f"loss sampling p must be in [0, 1), got {sampling}")
        if sampling_cell < 1:
            raise ValueError(f"sampling_cell must be at least 1 pixel, got {sampling_cell}")
        self.reduction, self.ignore_index = reduction, ignore_index
        self.sampling, self.sampling_cell = float(sampling), int(sampling_cell)
        weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        if weight is not None and (weight.dim() != 1 or (weight < 0).any()):
            raise ValueError("class weights must be a list of non-negative numbers, one per class")
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match labels {tuple(target.shape)}"
            )
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ValueError(
                f"{self.weight.numel()} class weights for a model of {logits.shape[1]} classes"
            )
        if self.sampling > 0 and self.training:
            keep = sample_mask(target.shape, self.sampling, self.sampling_cell, target.device)
            target = target.masked_fill(~keep, self.ignore_index)
        weight = None if self.weight is None else self.weight.to(logits.device)
        # the float32 loss even under autocast: a sum over 250k pixels overflows fp16
        logits = logits.float()
        options = {"weight": weight, "ignore_index": self.ignore_index}
        if self.loss == "focal":
            return focal_loss(
                logits, target, gamma=self.focal_gamma, reduction=self.reduction, **options
            )
        if self.loss == "dice":
            return dice_loss(logits, target, **options)
        loss = F.cross_entropy(logits, target, reduction=self.reduction, **options)
        if self.loss == "ce+dice":
            loss = loss + dice_loss(logits, target, **options)
        return loss


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = FOCAL_GAMMA,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = SEGMENTATION_REDUCTION,
) -> torch.Tensor:
    """``-w_y (1 - p_y)^gamma log p_y`` per labelled pixel (``p_y`` the softmax probability of
    its class ``y``, ``w_y`` its class weight or 1), summed, or divided by the sum of the
    ``w_y`` (``reduction="mean"``, as ``F.cross_entropy`` divides)."""
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))  # any class: masked below
    log_p = logits.log_softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)  # N x H x W
    # (1 - p)^gamma from log p: exact near p = 1, where 1 - exp(log p) would cancel; the
    # floor keeps the gradient of x^gamma finite at p = 1 when gamma < 1
    focus = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny).pow(gamma)
    losses = -focus * log_p
    pixel_weight = valid.to(losses.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight.to(losses.dtype)[safe]
    total = (losses * pixel_weight).sum()
    if reduction == "sum":
        return total
    return total / pixel_weight.sum()  # 0/0 = NaN when nothing is labelled, as cross-entropy


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Soft multi-class Dice loss over the labelled pixels of the batch (the module's
    docstring has the formula): ``sum_c w_c (1 - dice_c) / sum_c w_c`` over the classes ``c``
    present in ``target``, ``w_c`` the class weights or 1. 0 when no pixel is labelled."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # N x 1 x H x W
    probs = logits.softmax(1) * valid
    safe = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    overlap = (probs * one_hot).sum(dims)  # C
    labelled = one_hot.sum(dims)  # C: pixels of each class
    present = labelled > 0
    # a present class has at least one labelled pixel: the denominator is >= 1
    dice = 2 * overlap / (probs.sum(dims) + labelled).clamp(min=1)
    class_weight = present.to(probs.dtype)
    if weight is not None:
        class_weight = class_weight * weight.to(probs.dtype)
    # no class to score (nothing labelled, or zero weights): 0 / tiny = 0, no device sync
    total = class_weight.sum().clamp(min=torch.finfo(probs.dtype).tiny)
    return ((1 - dice) * class_weight).sum() / total


class MultiTaskLoss(nn.Module):
    """``sum_task weight_task * loss_task``, each a ``SegmentationLoss`` on its labels.

    For the two-headed SIFT Flow net the reference adds the two SoftmaxWithLoss layers with
    weight 1 each (``loss`` and ``loss_geo``). ``class_weights`` optionally gives one list per
    task; ``loss`` and ``focal_gamma`` pick every task's loss. With loss sampling, each task
    draws its own mask.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        tasks: Sequence[str] = ("semantic", "geometric"),
        reduction: str = MULTITASK_REDUCTION,
        ignore_index: int = 255,
        class_weights: Mapping[str, Sequence[float]] | None = None,
        sampling: float = 0.0,
        sampling_cell: int = SAMPLING_CELL,
        loss: str = DEFAULT_LOSS,
        focal_gamma: float = FOCAL_GAMMA,
    ) -> None:
        super().__init__()
        weights = dict(weights) if weights is not None else {task: 1.0 for task in tasks}
        class_weights = dict(class_weights or {})
        if not weights:
            raise ValueError("loss weights must name at least one task")
        unknown = set(class_weights) - set(weights)
        if unknown:
            raise ValueError(
                f"class_weights name {sorted(unknown)}, which are not among the tasks "
                f"{sorted(weights)}"
            )
        self.weights = {task: float(w) for task, w in weights.items()}
        self.losses = nn.ModuleDict(
            {
                task: SegmentationLoss(
                    reduction=reduction,
                    ignore_index=ignore_index,
                    weight=class_weights.get(task),
                    sampling=sampling,
                    sampling_cell=sampling_cell,
                    loss=loss,
                    focal_gamma=focal_gamma,
                )
                for task in self.weights
            }
        )

    def components(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each task's loss, unweighted (for logging)."""
        for what, given in (("logits", logits), ("labels", targets)):
            if not isinstance(given, Mapping) or set(given) != set(self.weights):
                names = sorted(given) if isinstance(given, Mapping) else type(given).__name__
                raise ValueError(
                    f"{what} {names} do not match the tasks {sorted(self.weights)}: "
                    "read every label set (SIFT Flow: labels = ['semantic', 'geometric'])"
                )
        return {task: loss(logits[task], targets[task]) for task, loss in self.losses.items()}

    def forward(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        parts = self.components(logits, targets)
        return sum(self.weights[task] * value for task, value in parts.items())


def sample_mask(
    shape: torch.Size | tuple[int, ...], p: float, cell: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """N x H x W booleans: each ``cell`` x ``cell`` block kept with probability 1 - p.

    Drawn from torch's global generator, so a seeded (or resumed) run draws the same masks.
    """
    n, height, width = shape
    rows, cols = -(-height // cell), -(-width // cell)
    coarse = torch.rand(n, rows, cols, device=device) >= p
    fine = coarse.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    return fine[:, :height, :width]


def class_pixel_counts(
    labels: Iterable[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: labelled pixels, and pixels of the images in which the class appears."""
    pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for label in labels:
        label = label.reshape(-1)
        valid = label[(label >= 0) & (label < num_classes)]
        counts = torch.bincount(valid, minlength=num_classes).double()
        pixels += counts
        image_pixels += (counts > 0).double() * valid.numel()
    return pixels, image_pixels


def median_frequency_weights(labels: Iterable[torch.Tensor], num_classes: int) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus 2015): ``median(f) / f_c``, where ``f_c``
    is the pixels of class c over the pixels of the images that contain c.

    ``labels`` yields H x W label tensors (e.g. ``(label for _, label in dataset)``). A class
    that never appears gets weight 0: it has no pixel to weigh.
    """
    pixels, image_pixels = class_pixel_counts(labels, num_classes)
    present = image_pixels > 0
    if not present.any():
        raise ValueError("no labelled pixel found: cannot compute class frequencies")
    frequency = torch.where(present, pixels / image_pixels.clamp(min=1), torch.zeros(()))
    median = frequency[present].median()
    weights = torch.where(present, median / frequency.clamp(min=1e-12), torch.zeros(()))
    return [float(w) for w in weights]
