"""Whole-image evaluation: a confusion matrix over a dataset, shards summed over DDP ranks."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import pad_collate
from ..metrics import METRIC_NAMES, ConfusionMatrix
from ..models.multitask import MultiTaskConfusion
from .distributed import Context, ShardSampler

__all__ = [
    "evaluate",
    "eval_loader",
    "autocast",
    "model_input",
    "model_target",
    "to_device",
    "batch_size",
    "format_metrics",
    "class_table",
]


def model_input(image: Any, model: nn.Module | None = None) -> Any:
    """What ``model`` reads: a dict image as it is for a multi-input model (one that
    declares ``channels``), else the one tensor (a dict must then hold only ``color``)."""
    if isinstance(image, Mapping):
        if getattr(getattr(model, "module", model), "channels", None) is not None:
            return dict(image)
        if set(image) != {"color"}:
            raise ValueError(
                f"inputs {sorted(image)}: this model reads one image; use one modality "
                "(for NYUDv2: modalities = 'color') or a multi-input model (fcn32s_vgg16_rgbd)"
            )
        return image["color"]
    return image


def model_target(label: Any) -> Any:
    """The label tensor, or a dict of them by task for a multi-task model (SIFT Flow)."""
    return dict(label) if isinstance(label, Mapping) else label


def to_device(value: Any, device: torch.device) -> Any:
    """A tensor, or each tensor of a dict, on ``device``."""
    if isinstance(value, Mapping):
        return {key: item.to(device, non_blocking=True) for key, item in value.items()}
    return value.to(device, non_blocking=True)


def batch_size(image: Any) -> int:
    """The image count of a batch: that of any entry when the inputs come as a dict."""
    first = next(iter(image.values())) if isinstance(image, Mapping) else image
    return first.shape[0]


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
        generator=torch.Generator().manual_seed(0),  # never draw from the global generator
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int | Mapping[str, int],
    ignore_index: int = 255,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> ConfusionMatrix | MultiTaskConfusion:
    """Accumulate predictions of ``model`` over ``loader`` (this rank's share).

    The model runs in eval mode (dropout off, batch-norm statistics frozen) and is put back
    in the mode it was in. ``compute()`` on the result sums every rank's matrix. With
    ``num_classes`` a dict by task (a multi-task model) the result holds one matrix per task.
    """
    device = torch.device(device)
    if isinstance(num_classes, Mapping):
        confusion = MultiTaskConfusion(num_classes, ignore_index)
    else:
        confusion = ConfusionMatrix(num_classes, ignore_index)
    was_training = model.training
    model.eval()
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, file=sys.stderr)
    try:
        for image, label in batches:
            image = to_device(model_input(image, model), device)
            label = to_device(model_target(label), device)
            with autocast(device, amp_dtype):
                scores = model(image)
            if isinstance(scores, Mapping):
                confusion.update({task: s.argmax(1) for task, s in scores.items()}, label)
            else:
                confusion.update(scores.argmax(1), label)
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
