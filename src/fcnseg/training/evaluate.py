"""Whole-image evaluation: a confusion matrix over a dataset, shards summed over DDP ranks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import pad_collate
from ..metrics import METRIC_NAMES, MultiTaskConfusion, class_labels
from ..modelfile import unwrap
from ..scoring import model_inputs, model_targets, score
from .distributed import Context, ShardSampler

__all__ = [
    "evaluate",
    "eval_loader",
    "autocast",
    "to_device",
    "batch_size",
    "format_metrics",
    "class_table",
]


def to_device(value: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Each tensor of a dict on ``device``."""
    return {key: item.to(device, non_blocking=True) for key, item in value.items()}


def batch_size(inputs: Mapping[str, torch.Tensor]) -> int:
    """The image count of a batch of inputs by name."""
    return next(iter(inputs.values())).shape[0]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on ``device`` in ``dtype``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def eval_loader(
    dataset: Dataset, context: Context, *, batch_size: int = 1, num_workers: int = 0
) -> DataLoader:
    """This rank's shard of ``dataset``, in order; every item exactly once over all ranks."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(dataset, context.rank, context.world_size),
        num_workers=num_workers,
        collate_fn=pad_collate,
        pin_memory=context.device.type == "cuda",  # then batches copy while the GPU works
        generator=torch.Generator().manual_seed(0),  # never draw from the global generator
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    ignore_index: int = 255,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    on_batch: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
) -> MultiTaskConfusion:
    """Accumulate predictions of ``model`` (an FCN, possibly DDP-wrapped) over ``loader``
    (this rank's share): one confusion matrix per task.

    The model is moved to ``device`` (where the batches go: a model built on the CPU
    evaluated on a GPU would meet its inputs on another device) and runs in eval mode
    (dropout off, batch-norm statistics frozen); it is put back in the mode it was in.
    ``compute()`` on each matrix sums every rank's. ``on_batch`` sees each batch's
    predicted labels and targets by task (per-image scores).
    """
    device = torch.device(device)
    model.to(device)
    spec = unwrap(model).spec
    confusion = MultiTaskConfusion(spec.task_classes, ignore_index)
    was_training = model.training
    model.eval()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, file=sys.stderr)
    try:
        for image, label in batches:
            inputs = to_device(model_inputs(image, spec), device)
            targets = to_device(model_targets(label, spec), device)
            with autocast(device, amp_dtype):
                scores = score(model, inputs)
            predictions = {task: class_labels(s) for task, s in scores.items()}
            confusion.update(predictions, targets)
            if on_batch is not None:
                on_batch(predictions, targets)
    finally:
        model.train(was_training)
    return confusion


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """ "pixel acc 91.2  mean acc 80.1  mean IU 70.3  f.w. IU 84.0" in percent."""
    labels = {"pixel_acc": "pixel acc", "mean_acc": "mean acc", "mean_iu": "mean IU"}
    labels["fw_iu"] = "f.w. IU"
    return "  ".join(f"{labels[k]} {_percent(metrics[k])}" for k in METRIC_NAMES)


def class_table(metrics: Mapping[str, Any], classes: Sequence[str]) -> list[tuple[str, ...]]:
    """Rows (class, IU, accuracy) in percent, a header first; "-" where undefined."""
    rows = [("class", "IU", "acc")]
    for index, name in enumerate(classes):
        rows.append((name, _percent(metrics["iu"][index]), _percent(metrics["acc"][index])))
    return rows


def _percent(value: float | None) -> str:
    if value is None or value != value:  # None from JSON, or NaN
        return "-"
    return f"{100 * value:.1f}"
