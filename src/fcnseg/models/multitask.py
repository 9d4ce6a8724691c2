"""Multi-task FCNs: one trunk, one FCN head per label set (SIFT Flow, Section 5, Table 5).

The reference's ``siftflow-fcn16s`` is one VGG16 whose ``drop7`` and ``pool4`` feed two
complete FCN-16s heads: ``score_fr_sem`` / ``upscore2_sem`` / ``score_pool4_sem`` /
``upscore16_sem`` for the 33 semantic classes and the same layers with ``_geo`` for the 3
geometric classes (sky, horizontal, vertical), each with its own SoftmaxWithLoss (weight 1,
unnormalised). Here ``heads.semantic`` and ``heads.geometric`` are ordinary ``FCNHead``s
on the shared backbone; the model returns ``{"semantic": N x 33 x H x W, "geometric":
N x 3 x H x W}``, the dict the SIFT Flow reader gives as labels.

Evaluation follows the paper: the four metrics for the semantic labels, pixel accuracy for
the geometric ones. The SIFT Flow caveat: some semantic classes never occur in the 200
test images, and the reference notes that its scores "are off b.c. of missing classes;
score manually from the histogram instead" (``siftflow-fcn16s/solve.py``). With
``present_only`` (the default) ``siftflow_metrics`` averages the mean accuracy and the mean
IU over the classes present in the evaluated labels only; a class absent from the labels
but predicted somewhere would otherwise enter the mean IU with IU 0. Pixel accuracy and
f.w. IU do not change (absent classes have no labelled pixels), and predictions of an
absent class still count as errors on the pixels they cover.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..losses import SegmentationLoss
from ..metrics import ConfusionMatrix
from .backbones.base import Backbone
from .fcn import VARIANTS, FCNHead
from .normalization import Normalization
from .registry import build_model

__all__ = [
    "SIFTFLOW_TASKS",
    "MULTITASK_MODELS",
    "MultiTaskFCN",
    "build_multitask_fcn",
    "build_siftflow_fcn16s",
    "build_multitask_model",
    "siftflow_caffe_rename",
    "MultiTaskLoss",
    "MultiTaskConfusion",
    "evaluate_multitask",
    "siftflow_metrics",
]

# Task -> classes, in the order of the reference's heads and of the reader's label dict.
SIFTFLOW_TASKS = {"semantic": 33, "geometric": 3}
# The reference's layer-name suffixes.
_CAFFE_SUFFIX = {"_sem": "semantic", "_geo": "geometric"}


class MultiTaskFCN(nn.Module):
    """A backbone shared by one ``FCNHead`` per task; ``forward`` returns logits by task."""

    def __init__(
        self, backbone: Backbone, heads: Mapping[str, FCNHead], *, name: str = "multitask"
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a multi-task FCN needs at least one head")
        self.backbone, self.heads, self.name = backbone, nn.ModuleDict(heads), name

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads)

    @property
    def num_classes(self) -> dict[str, int]:
        return {task: head.num_classes for task, head in self.heads.items()}

    @property
    def normalization(self) -> Normalization:
        return self.backbone.normalization

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
        features = self.backbone(x)  # computed once, read by every head
        size = (x.shape[-2], x.shape[-1])
        return {task: head(features, size) for task, head in self.heads.items()}


def build_multitask_fcn(
    variant: str = "16s",
    backbone: str = "vgg16",
    *,
    tasks: Mapping[str, int] = SIFTFLOW_TASKS,
    geometry: str | None = None,
    upsample: str = "deconv",
    learnable_upsample: bool = False,
    in_channels: int = 3,
    pretrained_backbone: bool = False,
    backbone_weights: str | Path | None = None,
    output_stride: int = 32,
    name: str | None = None,
) -> MultiTaskFCN:
    """An FCN-32s/16s/8s trunk with one head per task (``{task: classes}``); the options are
    ``build_model``'s. Every head starts at zero, as new score layers do."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown FCN variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if not tasks:
        raise ValueError("tasks must name at least one task and its class count")
    first = build_model(
        f"fcn{variant}_{backbone}",
        num_classes=next(iter(tasks.values())),
        geometry=geometry,
        upsample=upsample,
        learnable_upsample=learnable_upsample,
        in_channels=in_channels,
        pretrained_backbone=pretrained_backbone,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
    )
    heads = {
        task: FCNHead(
            first.backbone,
            classes,
            variant=variant,
            upsample=upsample,
            learnable_upsample=learnable_upsample,
        )
        for task, classes in tasks.items()
    }
    tag = "_".join(tasks)
    return MultiTaskFCN(first.backbone, heads, name=name or f"fcn{variant}_{backbone}_{tag}")


def _build_siftflow(
    variant: str,
    *,
    geometry: str | None = None,
    upsample: str = "deconv",
    learnable_upsample: bool = False,
    pretrained_backbone: bool = False,
    backbone_weights: str | Path | None = None,
) -> MultiTaskFCN:
    return build_multitask_fcn(
        variant,
        "vgg16",
        tasks=SIFTFLOW_TASKS,
        geometry=geometry,
        upsample=upsample,
        learnable_upsample=learnable_upsample,
        pretrained_backbone=pretrained_backbone,
        backbone_weights=backbone_weights,
        name=f"fcn{variant}_vgg16_siftflow",
    )


def build_siftflow_fcn16s(**options: Any) -> MultiTaskFCN:
    """The reference's two-headed SIFT Flow FCN-16s (33 semantic + 3 geometric classes).

    Options: ``geometry``, ``upsample``, ``learnable_upsample``, ``pretrained_backbone``,
    ``backbone_weights``, as for ``build_model``.
    """
    return _build_siftflow("16s", **options)


# The two-headed nets by name: they return dicts, so they live outside the main registry
# (whose contract is one tensor out).
MULTITASK_MODELS: dict[str, Callable[..., MultiTaskFCN]] = {
    "fcn32s_vgg16_siftflow": partial(_build_siftflow, "32s"),
    "fcn16s_vgg16_siftflow": build_siftflow_fcn16s,
    "fcn8s_vgg16_siftflow": partial(_build_siftflow, "8s"),
}


def build_multitask_model(name: str, **options: Any) -> MultiTaskFCN:
    """Build a two-headed net of ``MULTITASK_MODELS`` by name."""
    if name not in MULTITASK_MODELS:
        close = difflib.get_close_matches(name, MULTITASK_MODELS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown multi-task model {name!r}; {hint}known: {', '.join(MULTITASK_MODELS)}"
        )
    return MULTITASK_MODELS[name](**options)


def siftflow_caffe_rename(caffe_name: str) -> str:
    """The fcnseg module name of a layer of the reference's SIFT Flow nets, for
    ``fcnseg.weights.convert_caffe(..., rename=siftflow_caffe_rename)``: ``score_fr_sem``
    is ``heads.semantic.score_fr``, ``upscore16_geo`` is ``heads.geometric.upscore16``;
    the trunk's layers keep their names."""
    for suffix, task in _CAFFE_SUFFIX.items():
        if caffe_name.endswith(suffix):
            return f"heads.{task}.{caffe_name.removesuffix(suffix)}"
    return caffe_name


# ---------------------------------------------------------------------------------------------
# Losses


class MultiTaskLoss(nn.Module):
    """``sum_task weight_task * loss_task``, each a ``SegmentationLoss`` on its labels.

    The reference adds the two SoftmaxWithLoss layers with weight 1 each (``loss`` and
    ``loss_geo``). ``class_weights`` optionally gives one list per task. With loss sampling,
    each task draws its own mask.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        tasks: Sequence[str] = tuple(SIFTFLOW_TASKS),
        reduction: str = "sum",
        ignore_index: int = 255,
        class_weights: Mapping[str, Sequence[float]] | None = None,
        sampling: float = 0.0,
        sampling_cell: int = 32,
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


# ---------------------------------------------------------------------------------------------
# Metrics


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


@torch.no_grad()
def evaluate_multitask(
    model: nn.Module, loader: DataLoader, *, device: torch.device | str = "cpu"
) -> MultiTaskConfusion:
    """Accumulate ``model``'s predictions over ``loader`` (images, label dicts) per task;
    the model runs in eval mode and is put back in the mode it was in."""
    device = torch.device(device)
    confusion = MultiTaskConfusion(model.num_classes)
    was_training = model.training
    model.eval()
    try:
        for image, labels in loader:
            scores = model(image.to(device))
            confusion.update(
                {task: s.argmax(1) for task, s in scores.items()},
                {task: label.to(device) for task, label in labels.items()},
            )
    finally:
        model.train(was_training)
    return confusion


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
