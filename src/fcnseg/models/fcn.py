"""The FCN head: score layers, skip fusion, upsampling and crops (Section 4.2, Figure 3).

FCN-32s scores the stride-32 features (``score_fr``) and upsamples 32x (``upscore``).
FCN-16s adds a 1x1 score layer on the stride-16 tap (``score_pool4``), sums it with the
2x-upsampled stride-32 scores (``upscore2``), and upsamples 16x (``upscore16``). FCN-8s
repeats the step with the stride-8 tap (``score_pool3``, ``upscore_pool4``) and upsamples
8x (``upscore8``). Every crop offset comes from the layers' geometry (``geometry.py``);
for the reference VGG16 nets they come out as 19 (32s), 5 and 27 (16s), 5, 9 and 31 (8s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import geometry as geo
from .backbones.base import Backbone
from .normalization import Normalization
from .upsample import Upsample, aligned_upsample

__all__ = ["FCNHead", "FCN", "VARIANTS"]

# How many taps below the last each net fuses, coarse to fine (the paper's "skips"): the
# backbone's stride-16 tap ("pool4"), then its stride-8 tap ("pool3").
VARIANTS = {"32s": 0, "16s": 1, "8s": 2}
# The reference's layer names, skip by skip, and of the final upsampling.
_SCORE = ("score_pool4", "score_pool3")
_SCALE = ("scale_pool4", "scale_pool3")
_FUSE_UPSAMPLE = ("upscore2", "upscore_pool4")
_FINAL = {"32s": "upscore", "16s": "upscore16", "8s": "upscore8"}
# FCN-8s at-once: fixed scalings that bring pool4 and pool3 to the scale of the scores.
ATONCE_SCALES = (0.01, 0.0001)


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
            scores = _fuse(upsampled, self.get_submodule(skip.score)(tap), skip.offset)
        # The reference's final crop. Its scores always cover the image; a rarefied
        # caffe-geometry net's do not (fc6's dilated 7x7 filter eats more border than
        # pad 100 restores): there the outermost scores are replicated.
        return _window(self.get_submodule(self.final)(scores), self.offset, size)

    def resize_classes(self, num_classes: int) -> None:
        """Keep the shared classes' weights, start new ones as new layers start."""
        for name, module in list(self.named_children()):
            if isinstance(module, nn.Conv2d):
                self.add_module(name, _resized_score(module, num_classes))
            elif isinstance(module, Upsample) and not module.identity:
                self.add_module(name, _resized_upsample(module, num_classes))
        self.num_classes = num_classes


class FCN(nn.Module):
    """A backbone and an FCN head: N x C x H x W in, N x classes x H x W logits out.

    The input is normalised as ``normalization`` says (the convention of the backbone's
    weights); ``fcnseg.models.normalization`` turns 0..255 RGB images into it.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: FCNHead,
        *,
        name: str = "fcn",
        build_options: dict[str, object] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.name = backbone, head, name
        # what build_model(name, num_classes=..., **build_options) needs to rebuild it
        self.build_options = dict(build_options or {})

    @property
    def normalization(self) -> Normalization:
        return self.backbone.normalization

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
        return self.head(self.backbone(x), (x.shape[-2], x.shape[-1]))


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


def _fuse(upsampled: torch.Tensor, skip: torch.Tensor, offset: int) -> torch.Tensor:
    """Add the skip scores, cropped at ``offset`` to the upsampled scores' extent.

    This is the reference's ``score_pool4c = crop(score_pool4, upscore2)``. Where the skip
    falls short of that extent (aligned and rarefied geometries, tiny inputs), its
    outermost cells are replicated.
    """
    return upsampled + _window(skip, offset, (upsampled.shape[-2], upsampled.shape[-1]))


def _window(scores: torch.Tensor, offset: int, size: tuple[int, int]) -> torch.Tensor:
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
