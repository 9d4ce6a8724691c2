"""The FCN head: score layers, skip fusion, upsampling and crops (Section 4.2, Figure 3).

FCN-32s scores the stride-32 features (``score_fr``) and upsamples 32x (``upscore``).
FCN-16s adds a 1x1 score layer on the stride-16 tap (``score_pool4``), sums it with the
2x-upsampled stride-32 scores (``upscore2``), and upsamples 16x (``upscore16``). FCN-8s
repeats the step with the stride-8 tap (``score_pool3``, ``upscore_pool4``) and upsamples
8x (``upscore8``). Every crop offset comes from the layers' geometry (``geometry.py``);
for the reference VGG16 nets they come out as 19 (32s), 5 and 27 (16s), 5, 9 and 31 (8s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import geometry as geo
from .backbones.base import Backbone
from .inputs import Inputs, split_inputs, stack_inputs
from .spec import VARIANTS, ModelSpec, TaskSpec
from .upsample import Upsample, aligned_upsample

__all__ = ["FCNHead", "FCN", "VARIANTS", "fuse_skip", "score_window"]

# VARIANTS (spec.py): how many taps below the last each net fuses, coarse to fine: the
# backbone's stride-16 tap ("pool4"), then its stride-8 tap ("pool3").
# The reference's layer names, skip by skip, and of the final upsampling.
_SCORE = ("score_pool4", "score_pool3")
_SCALE = ("scale_pool4", "scale_pool3")
_FUSE_UPSAMPLE = ("upscore2", "upscore_pool4")
_FINAL = {"32s": "upscore", "16s": "upscore16", "8s": "upscore8"}


@dataclass(frozen=True)
class _Skip:
    tap: str
    upsample: str  # upsamples the coarser scores by 2 before the fusion
    score: str
    scale: str | None  # FCN-8s at-once's fixed scaling of the tap, if any
    offset: int  # cells of the skip scores before the upsampled scores' first cell


class FCNHead(nn.Module):
    """Scores, fuses and upsamples backbone taps into full-resolution class scores.

    New score layers start at zero (the reference's constant filler): at initialisation
    a net outputs all-zero scores and the skips contribute only as they are learned.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        variant: str = "8s",
        upsample: str = "deconv",
        learnable_upsample: bool = False,
        skip_scales: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"unknown FCN variant {variant!r}: choose one of {', '.join(VARIANTS)}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes, self.variant = num_classes, variant
        last = backbone.taps[-1]
        self.last_tap = last.name
        self.score_fr = _score_layer(last.channels, num_classes)
        scores_map = backbone.coord_map(last.name)
        self.skips: list[_Skip] = []
        self.skip_taps = tuple(reversed(backbone.taps[-1 - VARIANTS[variant] : -1]))
        for index, tap in enumerate(self.skip_taps):
            tap_map = backbone.coord_map(tap.name)
            factor = int(scores_map.scale / tap_map.scale)  # 1 when a rarefied tap matches
            up, up_map = aligned_upsample(
                num_classes,
                factor,
                scores_map,
                tap_map,
                mode=upsample,
                learnable=learnable_upsample,
            )
            self.add_module(_FUSE_UPSAMPLE[index], up)
            scale = _SCALE[index] if skip_scales else None
            if scale:
                self.add_module(scale, _FixedScale(tap.channels, skip_scales[index]))
            self.add_module(_SCORE[index], _score_layer(tap.channels, num_classes))
            offset = geo.crop_offset(tap_map, up_map)
            self.skips.append(_Skip(tap.name, _FUSE_UPSAMPLE[index], _SCORE[index], scale, offset))
            scores_map = up_map  # the fused scores keep the upsampled scores' extent
        self.score_stride = int(scores_map.scale)
        up, out_map = aligned_upsample(
            num_classes,
            self.score_stride,
            scores_map,
            geo.IDENTITY,
            mode=upsample,
            learnable=learnable_upsample,
        )
        self.final = _FINAL[variant]
        self.add_module(self.final, up)
        self.offset = geo.crop_offset(out_map, geo.IDENTITY)

    def crop_offsets(self) -> dict[str, int]:
        """The derived crop offsets by the reference's crop names (score_pool4c, score)."""
        offsets = {f"{skip.score}c": skip.offset for skip in self.skips}
        offsets["score"] = self.offset
        return offsets

    def forward(self, features: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        scores = self.score_fr(features[self.last_tap])
        for skip in self.skips:
            upsampled = self.get_submodule(skip.upsample)(scores)
            tap = features[skip.tap]
            if skip.scale:
                tap = self.get_submodule(skip.scale)(tap)
            scores = fuse_skip(upsampled, self.get_submodule(skip.score)(tap), skip.offset)
        # The reference's final crop. Its scores always cover the image; a rarefied
        # caffe-geometry net's do not (fc6's dilated 7x7 filter eats more border than
        # pad 100 restores): there the outermost scores are replicated.
        return score_window(self.get_submodule(self.final)(scores), self.offset, size)

    def resize_classes(self, num_classes: int) -> None:
        """Keep the shared classes' weights, start new ones as new layers start."""
        for name, module in list(self.named_children()):
            if isinstance(module, nn.Conv2d):
                self.add_module(name, _resized_score(module, num_classes))
            elif isinstance(module, Upsample) and not module.identity:
                self.add_module(name, _resized_upsample(module, num_classes))
        self.num_classes = num_classes


class FCN(nn.Module):
    """Every model of fcnseg: backbone(s) and one head per task, built from ``spec``.

    The model reads the inputs ``spec.inputs`` declares, given as a dict by name, a tuple,
    or one N x C x H x W tensor with the inputs stacked in their declared order (a single
    input's plain tensor). It returns N x classes x H x W logits, as a dict by task when it
    has several tasks or when called with ``by_task=True`` (what generic code does), else
    the one tensor. Each input is normalised as ``spec.inputs`` says, on images in 0..255
    (``normalizations``).

    Modules keep the reference's names: ``backbone`` (early fusion: one, its first
    convolution reading every input stacked; late fusion: ``backbone.<input>`` streams),
    ``head`` for a single task, ``heads.<task>`` for several (SIFT Flow).
    """

    def __init__(self, spec: ModelSpec, backbone: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        if tuple(heads) != spec.task_names:
            raise ValueError(f"heads {list(heads)} do not match the tasks {spec.task_names}")
        if any(item.normalization is None for item in spec.inputs):
            raise ValueError("every input of a built model has its normalization resolved")
        self.spec, self.backbone = spec, backbone
        if len(heads) == 1:
            self.head = next(iter(heads.values()))
        else:
            self.heads = nn.ModuleDict(heads)

    # -- what the model declares

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def num_classes(self) -> int | dict[str, int]:
        """The class count, or a dict by task for a multi-task model."""
        classes = self.spec.task_classes
        return next(iter(classes.values())) if len(classes) == 1 else classes

    @property
    def normalizations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Each input's normalisation, by input name."""
        return {item.name: item.normalization for item in self.spec.inputs}

    @property
    def normalization(self):
        """The input normalisation, or a dict by input for a multi-input model."""
        norms = self.normalizations
        return next(iter(norms.values())) if len(norms) == 1 else norms

    @property
    def late_fusion(self) -> bool:
        return self.spec.fusion == "late" and len(self.spec.inputs) > 1

    def task_heads(self) -> dict[str, nn.Module]:
        """The head of each task, by task name."""
        if hasattr(self, "head"):
            return {self.spec.task_names[0]: self.head}
        return dict(self.heads.items())

    # -- running it

    def forward(self, x: Inputs, *, by_task: bool = False):
        channels = self.spec.input_channels
        if self.late_fusion:
            parts = split_inputs(x, channels)
            features = self.backbone(parts)
            size = next(iter(parts.values())).shape[-2:]
        else:
            stacked = stack_inputs(x, channels)
            features = self.backbone(stacked)
            size = stacked.shape[-2:]
        size = (size[0], size[1])
        scores = {task: head(features, size) for task, head in self.task_heads().items()}
        if by_task or len(scores) > 1:
            return scores
        return next(iter(scores.values()))

    def resize_classes(self, num_classes: int, task: str | None = None) -> None:
        """Give ``task`` (the only one by default) ``num_classes`` classes, keeping the
        shared classes' weights (``surgery.expand_score``)."""
        heads = self.task_heads()
        task = task or (next(iter(heads)) if len(heads) == 1 else None)
        if task not in heads:
            raise ValueError(f"name the task to resize: one of {list(heads)}")
        heads[task].resize_classes(num_classes)
        tasks = tuple(
            TaskSpec(t.name, num_classes if t.name == task else t.classes) for t in self.spec.tasks
        )
        self.spec = dataclasses.replace(self.spec, tasks=tasks)


class _FixedScale(nn.Module):
    """Caffe's Scale layer with a fixed per-channel factor (lr 0), as in FCN-8s at-once."""

    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), value), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def _score_layer(channels: int, num_classes: int) -> nn.Conv2d:
    layer = nn.Conv2d(channels, num_classes, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def fuse_skip(upsampled: torch.Tensor, skip: torch.Tensor, offset: int) -> torch.Tensor:
    """Add the skip scores, cropped at ``offset`` to the upsampled scores' extent.

    This is the reference's ``score_pool4c = crop(score_pool4, upscore2)``. Where the skip
    falls short of that extent (aligned and rarefied geometries, tiny inputs), its
    outermost cells are replicated.
    """
    return upsampled + score_window(skip, offset, (upsampled.shape[-2], upsampled.shape[-1]))


def score_window(scores: torch.Tensor, offset: int, size: tuple[int, int]) -> torch.Tensor:
    """The ``size`` window of ``scores`` starting at ``offset``, edge cells replicated."""
    h, w = size
    before = max(0, -offset)
    after_h = max(0, offset + h - scores.shape[-2])
    after_w = max(0, offset + w - scores.shape[-1])
    if before or after_h or after_w:
        scores = F.pad(scores, (before, after_w, before, after_h), mode="replicate")
        offset += before
    return scores[..., offset : offset + h, offset : offset + w]


def _resized_score(layer: nn.Conv2d, num_classes: int) -> nn.Conv2d:
    new = _score_layer(layer.in_channels, num_classes).to(layer.weight)
    keep = min(num_classes, layer.out_channels)
    with torch.no_grad():
        new.weight[:keep] = layer.weight[:keep]
        new.bias[:keep] = layer.bias[:keep]
    return new


def _resized_upsample(module: Upsample, num_classes: int) -> Upsample:
    learnable = module.mode == "deconv" and module.weight.requires_grad
    new = Upsample(
        num_classes, module.factor, mode=module.mode, odd=module.odd, learnable=learnable
    )
    if module.mode == "deconv":
        new = new.to(module.weight)
        keep = min(num_classes, module.weight.shape[0])
        with torch.no_grad():
            new.weight[:keep, :keep] = module.weight[:keep, :keep]
    return new
