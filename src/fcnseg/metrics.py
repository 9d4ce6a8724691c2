"""The paper's four metrics from a confusion matrix (Section 5, "Metrics").

``n[i, j]`` counts the pixels of class ``i`` predicted as class ``j``, over pixels whose
label lies in [0, C) (the ignore label 255, and anything else outside the class range, is
left out), and ``t_i = sum_j n[i, j]``:

- pixel accuracy  ``sum_i n_ii / sum_i t_i``
- mean accuracy   ``(1 / C') sum_i n_ii / t_i`` over the C' classes with ``t_i > 0``
- mean IU         ``(1 / C'') sum_i n_ii / (t_i + sum_j n_ji - n_ii)`` over the C'' classes
                  whose union is not empty
- f.w. IU         ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

A class absent from both labels and predictions has no accuracy and no IU: it is left out
of the means (and reported as NaN per class) rather than counted as 0 or 1. A class that is
predicted but never labelled has IU 0 and counts in the mean IU, as it should: it was wrong.

Under DDP each rank accumulates its own shard; ``compute`` sums the matrices of all ranks
first (an integer all-reduce, so 2 ranks give exactly the numbers of 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "class_labels",
    "ConfusionMatrix",
    "METRIC_NAMES",
    "json_safe",
    "MultiTaskConfusion",
    "siftflow_metrics",
]

# The four summary numbers, in the order of the paper's tables.
METRIC_NAMES = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def class_labels(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The label of each pixel: the arg-max of ``scores`` over the class dimension ``dim``
    (the first of equal maxima, as ``argmax``). ``max(dim).indices`` because torch's CPU
    ``argmax`` over a dimension that is not the innermost takes several times as long
    (issue 31: 19-28 ms against 3 ms for 11 x 360 x 480 scores; benchmarks/label_map.py)."""
    return scores.max(dim).indices


class ConfusionMatrix:
    """Accumulates ``n[label, prediction]`` over batches; ``compute`` gives the metrics."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._stray: torch.Tensor | None = None  # predictions outside [0, C), on a GPU

    def reset(self) -> None:
        self.matrix.zero_()
        self._stray = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` holds labels (same shape as ``target``) or scores with a
        class dimension (N x C x H x W for N x H x W targets, taken by argmax).

        The matrix lives on the device of the predictions and the counting never waits for
        it: on a GPU a prediction outside [0, C) is reported by ``reduced`` (at compute)."""
        if pred.dim() == target.dim() + 1:
            pred = class_labels(pred)
        if pred.shape != target.shape:
            raise ValueError(
                f"predictions {tuple(pred.shape)} and labels {tuple(target.shape)} differ in shape"
            )
        c = self.num_classes
        self.matrix = self.matrix.to(pred.device)
        target = target.reshape(-1).to(pred.device, torch.int64)
        pred = pred.reshape(-1).long()
        valid = (target >= 0) & (target < c)  # drops the ignore label and any other stray value
        stray = valid & ((pred < 0) | (pred >= c))
        self._note_stray(stray.any())
        cell = torch.where(valid & ~stray, target * c + pred, c * c)  # the rest: one spare bin
        counts = torch.zeros(c * c + 1, dtype=torch.int64, device=pred.device)
        counts.index_add_(0, cell, torch.ones_like(cell))
        self.matrix += counts[:-1].view(c, c)

    def _note_stray(self, found: torch.Tensor) -> None:
        """Predictions outside [0, C): an error now on the CPU (where asking costs nothing),
        kept on the device for ``reduced`` elsewhere."""
        if found.device.type == "cpu":
            if found:
                raise ValueError(self._stray_message())
            return
        self._stray = found if self._stray is None else self._stray | found

    def _stray_message(self) -> str:
        return f"predictions must be class indices in [0, {self.num_classes})"

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix of the same class count (e.g. from another shard)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)
        if other._stray is not None:
            self._note_stray(other._stray.to(self.matrix.device))
        return self

    def reduced(self) -> torch.Tensor:
        """The matrix summed over every DDP rank (a collective: every rank must call it), on
        the CPU: the one point where the host waits for the counting."""
        if self._stray is not None and bool(self._stray.cpu()):
            raise ValueError(self._stray_message())
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.matrix.to("cpu", copy=True)
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        total = self.matrix.to(device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.cpu()

    def compute(self) -> dict[str, float | list[float]]:
        """pixel_acc, mean_acc, mean_iu, fw_iu (floats in [0, 1], NaN when no pixel counted),
        and per-class ``acc`` and ``iu`` lists (NaN for classes that have none)."""
        return metrics_from_matrix(self.reduced())


def metrics_from_matrix(matrix: torch.Tensor) -> dict[str, float | list[float]]:
    """The metrics of a C x C confusion matrix (rows: labels, columns: predictions)."""
    n = matrix.double()
    hits = n.diag()
    labelled = n.sum(1)  # t_i
    union = labelled + n.sum(0) - hits
    total = labelled.sum()
    acc = torch.where(labelled > 0, hits / labelled.clamp(min=1), torch.nan)
    iu = torch.where(union > 0, hits / union.clamp(min=1), torch.nan)
    has_pixels = total > 0
    return {
        "pixel_acc": float(hits.sum() / total) if has_pixels else math.nan,
        "mean_acc": _nanmean(acc),
        "mean_iu": _nanmean(iu),
        # classes with t_i = 0 add nothing; a NaN IU only ever has t_i = 0
        "fw_iu": float((labelled * iu.nan_to_num(0.0)).sum() / total) if has_pixels else math.nan,
        "iu": iu.tolist(),
        "acc": acc.tolist(),
    }


def _nanmean(values: torch.Tensor) -> float:
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else math.nan


def json_safe(value):
    """``value`` with NaN floats turned into None, since JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# Several tasks (SIFT Flow's semantic and geometric labels)


class MultiTaskConfusion:
    """One ``ConfusionMatrix`` per task, updated from dicts of scores (or labels)."""

    def __init__(self, num_classes: Mapping[str, int], ignore_index: int = 255) -> None:
        self.matrices = {
            task: ConfusionMatrix(classes, ignore_index) for task, classes in num_classes.items()
        }

    def __getitem__(self, task: str) -> ConfusionMatrix:
        return self.matrices[task]

    def update(
        self, predictions: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> None:
        missing = set(self.matrices) - (set(predictions) & set(targets))
        if missing:
            raise ValueError(f"no predictions or labels for task(s) {sorted(missing)}")
        for task, matrix in self.matrices.items():
            matrix.update(predictions[task], targets[task])


def siftflow_metrics(
    confusion: MultiTaskConfusion | Mapping[str, ConfusionMatrix], *, present_only: bool = True
) -> dict[str, dict[str, Any]]:
    """Per-task metrics: ``{"semantic": {...}, "geometric": {...}}``.

    Each task has the four metrics (pixel_acc, mean_acc, mean_iu, fw_iu) and per-class
    ``iu`` / ``acc``; the paper's Table 5 reports all four for semantic and pixel_acc for
    geometric. With ``present_only`` the semantic means run over the classes present in
    the evaluated labels (listed in ``present``), the SIFT Flow caveat; per-class values of
    absent classes are NaN then.
    """
    matrices = confusion.matrices if isinstance(confusion, MultiTaskConfusion) else confusion
    results = {}
    for task, matrix in matrices.items():
        metrics = matrix.compute()
        if present_only and task == "semantic":
            metrics = _restrict_to_present(metrics, matrix.reduced())
        results[task] = metrics
    return results


def _restrict_to_present(metrics: dict[str, Any], matrix: torch.Tensor) -> dict[str, Any]:
    present = (matrix.sum(1) > 0).tolist()
    nan = float("nan")
    iu = [value if keep else nan for value, keep in zip(metrics["iu"], present, strict=True)]
    acc = [value if keep else nan for value, keep in zip(metrics["acc"], present, strict=True)]
    kept_iu = [value for value in iu if value == value]
    kept_acc = [value for value in acc if value == value]
    return {
        **metrics,
        "mean_iu": sum(kept_iu) / len(kept_iu) if kept_iu else nan,
        "mean_acc": sum(kept_acc) / len(kept_acc) if kept_acc else nan,
        "iu": iu,
        "acc": acc,
        "present": [index for index, keep in enumerate(present) if keep],
    }
