"""Multi-modal FCNs for NYUDv2 (Section 5, Table 4): early fusion and late fusion.

- **Early fusion** stacks the inputs on the channel axis and widens the first convolution:
  RGB-D reads 4 channels (the reference's ``conv1_1_bgrd``). The pretrained RGB filters are
  kept and each new channel's filter starts as the mean of the RGB filters, as the
  reference's ``nyud-fcn32s-color-d/solve.py`` does (``expand_input_channels``).
- **Late fusion** runs one FCN stream per input (RGB and HHA), scores each stream's last
  features (``score_frcolor``, ``score_frhha``), sums the scores with weights 0.5 each
  (``score_fused``, Caffe's Eltwise SUM with coeff [0.5, 0.5]) and upsamples the sum once
  (``upscore``), as ``nyud-fcn32s-color-hha/net.py``; both streams train jointly as one
  module. The paper's FCN-16s RGB-HHA has no reference net: here each stream also scores
  its pool4 (``score_pool4color``, ``score_pool4hha``) and those scores are summed with the
  same weights before the shared ``upscore2`` / ``upscore16`` path. Every step after the
  score layers is linear, so the fused net computes exactly the weighted sum of the two
  streams' FCN-16s outputs, and ``late_fusion`` builds it from two trained single-stream
  nets, as the reference initialised its fused net from the trained RGB and HHA nets.

Both models take one N x C x H x W tensor with the inputs stacked in their declared order
(RGB-D: color 3 + depth 1; RGB-HHA: color 3 + hha 3), a dict by input name (what the
NYUDv2 reader returns for several modalities), or a tuple; and return N x classes x H x W
logits. ``normalization`` is then a dict by input name, which the joint transforms apply
input by input. Colour uses the backbone's convention (for the Caffe VGG16: BGR minus the
VOC mean), HHA the reference's NYUDv2 HHA mean, depth the reference's log depth minus
7.844; the reference's NYUDv2 colour mean (116.190, 97.203, 92.318) differs from the VOC
mean by a constant the first layer absorbs, and keeping the backbone's convention lets a
late-fusion net start from RGB nets trained by ``fcnseg train``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .backbones.base import Backbone
from .fcn import FCN, FCNHead, _fuse, _window
from .registry import build_model, register_model

__all__ = [
    "find_stem",
    "expand_input_channels",
    "split_inputs",
    "stack_inputs",
    "MultiModalFCN",
    "StreamBackbones",
    "LateFusionHead",
    "LateFusionFCN",
    "late_fusion",
    "caffe_rename",
    "NYUD_CHANNELS",
]

# Channels of each NYUDv2 input as the reader returns it.
NYUD_CHANNELS = {"color": 3, "depth": 1, "hha": 3}
_INITS = ("mean", "zeros")


# ---------------------------------------------------------------------------------------------
# Early fusion: a wider first convolution


def find_stem(module: nn.Module) -> tuple[str, nn.Conv2d]:
    """The convolution that reads the image, whatever it is named: the first ``Conv2d`` in
    module order (conv1_1 in VGG16, conv1 in AlexNet and ResNet, 7x7_s2 in GoogLeNet, the
    stem of EfficientNet-Lite); returns its qualified name and the module."""
    target = module.backbone if isinstance(module, FCN) else module
    for name, child in target.named_modules():
        if isinstance(child, nn.Conv2d):
            return name, child
    raise ValueError(f"{type(target).__name__} has no convolution to widen")


def expand_input_channels(
    model_or_backbone: nn.Module, extra: int, init: str = "mean"
) -> nn.Module:
    """Give the first convolution ``extra`` more input channels, in place; returns the module.

    The existing filters are kept, so the net computes what it computed before whenever
    the new channels are zero. The new channels' filters start as the mean of the
    existing ones over their input channels (``init="mean"``, the reference's depth
    filter for RGB-D) or at zero (``"zeros"``: the new input starts ignored). Build the
    optimizer after calling this: the widened weight is a new parameter.
    """
    if extra < 1:
        raise ValueError(f"extra must be a positive channel count, got {extra}")
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}: choose one of {', '.join(_INITS)}")
    _, conv = find_stem(model_or_backbone)
    if conv.groups != 1:
        raise ValueError("the first convolution is grouped: it cannot take extra channels")
    old = conv.weight  # out x in x k x k
    with torch.no_grad():
        if init == "mean":
            fill = old.mean(dim=1, keepdim=True).expand(-1, extra, -1, -1)
        else:
            fill = old.new_zeros(old.shape[0], extra, *old.shape[2:])
        weight = torch.cat([old, fill], dim=1)
    conv.weight = nn.Parameter(weight, requires_grad=old.requires_grad)
    conv.in_channels += extra
    return model_or_backbone


# ---------------------------------------------------------------------------------------------
# Several inputs in, one tensor or one dict out

Inputs = torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def split_inputs(x: Inputs, channels: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """The inputs by name from a stacked N x C x H x W tensor, a dict or a tuple (in the
    order of ``channels``), each checked for its channel count and the common size."""
    names = list(channels)
    if isinstance(x, torch.Tensor):
        expected = sum(channels.values())
        if x.dim() != 4 or x.shape[1] != expected:
            raise ValueError(
                f"expected an N x {expected} x H x W batch ({_layout(channels)} stacked), "
                f"got shape {tuple(x.shape)}"
            )
        parts = dict(zip(names, torch.split(x, list(channels.values()), dim=1), strict=True))
    elif isinstance(x, Mapping):
        if set(x) != set(names):
            raise ValueError(
                f"inputs {sorted(x)} do not match the model's {names}: read exactly these "
                "modalities (NYUDv2: modalities = [...] in the reader options)"
            )
        parts = {name: x[name] for name in names}
    elif isinstance(x, Sequence):
        if len(x) != len(names):
            raise ValueError(f"expected {len(names)} inputs ({_layout(channels)}), got {len(x)}")
        parts = dict(zip(names, x, strict=True))
    else:
        raise TypeError(f"expected a tensor, a dict or a tuple of tensors, got {type(x).__name__}")
    size = None
    for name, part in parts.items():
        if part.dim() != 4 or part.shape[1] != channels[name]:
            raise ValueError(
                f"input {name!r} must be N x {channels[name]} x H x W, got {tuple(part.shape)}"
            )
        if size is not None and part.shape[-2:] != size:
            raise ValueError(f"input {name!r} is {tuple(part.shape[-2:])}, the others {size}")
        size = part.shape[-2:]
    return parts


def stack_inputs(x: Inputs, channels: Mapping[str, int]) -> torch.Tensor:
    """The inputs stacked on the channel axis in the order of ``channels``."""
    if isinstance(x, torch.Tensor):
        split_inputs(x, channels)  # checks the layout
        return x
    return torch.cat(list(split_inputs(x, channels).values()), dim=1)


def _layout(channels: Mapping[str, int]) -> str:
    return " + ".join(f"{name} {count}" for name, count in channels.items())


class MultiModalFCN(FCN):
    """Early fusion: an FCN whose first convolution reads several inputs stacked.

    ``channels`` names the inputs in stacking order with their channel counts
    (RGB-D: ``{"color": 3, "depth": 1}``); ``normalization`` gives each input's
    preprocessing. The forward pass accepts the stacked tensor, a dict or a tuple.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: FCNHead,
        *,
        channels: Mapping[str, int],
        normalization: Mapping[str, Callable],
        name: str = "fcn",
    ) -> None:
        super().__init__(backbone, head, name=name)
        self.channels = dict(channels)
        stem = find_stem(backbone)[1].in_channels
        if stem != sum(self.channels.values()):
            raise ValueError(
                f"the first convolution reads {stem} channels, the inputs "
                f"{_layout(self.channels)} make {sum(self.channels.values())}: "
                "call expand_input_channels first"
            )
        _check_normalization(normalization, self.channels)
        self._normalization = dict(normalization)

    @property
    def normalization(self) -> dict[str, Callable]:  # one per input, unlike FCN's
        return dict(self._normalization)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.channels)

    @property
    def in_channels(self) -> int:
        return sum(self.channels.values())

    def forward(self, x: Inputs) -> torch.Tensor:
        return super().forward(stack_inputs(x, self.channels))


def _check_normalization(normalization: Mapping[str, Callable], channels: Mapping) -> None:
    if set(normalization) != set(channels):
        raise ValueError(
            f"normalization names {sorted(normalization)}, the inputs are {sorted(channels)}: "
            "give one per input"
        )


# ---------------------------------------------------------------------------------------------
# Late fusion: one stream per input, scores summed


class StreamBackbones(nn.Module):
    """One backbone per input, run side by side: ``{input: {tap: features}}``.

    The streams must share their architecture and geometry, so that their scores line up
    cell for cell and one upsampling path serves the sum.
    """

    def __init__(self, streams: Mapping[str, Backbone]) -> None:
        super().__init__()
        if len(streams) < 2:
            raise ValueError(f"late fusion needs two streams or more, got {list(streams)}")
        first = next(iter(streams.values()))
        for name, backbone in streams.items():
            if not name.isidentifier():
                raise ValueError(f"stream name {name!r} must be a Python identifier")
            same = type(backbone) is type(first) and backbone.taps == first.taps
            same = same and backbone.geometry == first.geometry
            same = same and all(
                backbone.coord_map(t.name) == first.coord_map(t.name) for t in first.taps
            )
            if not same:
                raise ValueError(
                    f"stream {name!r} differs from the first in architecture or geometry: "
                    "build every stream with the same backbone and options"
                )
            self.add_module(name, backbone)
        self.taps, self.geometry = first.taps, first.geometry

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.named_children())

    @property
    def output_stride(self) -> int:
        return self.taps[-1].stride

    def coord_map(self, tap: str):
        return next(self.children()).coord_map(tap)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        return {name: self.get_submodule(name)(inputs[name]) for name in self.streams}


class LateFusionHead(nn.Module):
    """Per-stream score layers, their weighted sum, one shared upsampling and skip path.

    Built from one trained (or fresh) ``FCNHead`` per stream: each stream's score layers
    are renamed with its suffix (``score_fr`` -> ``score_frcolor``, ``score_pool4`` ->
    ``score_pool4hha``, as the reference's ``modality_fcn``); the upsamplings (``upscore``,
    or ``upscore2`` and ``upscore16``) and the crop offsets are those of the first head,
    which every head shares (the heads must agree on variant, classes and geometry).
    """

    def __init__(self, heads: Mapping[str, FCNHead], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(weights) != set(heads):
            raise ValueError(f"fusion weights name {sorted(weights)}, the streams {sorted(heads)}")
        first = next(iter(heads.values()))
        for name, head in heads.items():
            if _layout_of(head) != _layout_of(first):
                raise ValueError(
                    f"the {name!r} head differs from the first in variant, classes or crops: "
                    "build every stream with the same model options"
                )
        self.modalities = tuple(heads)
        self.weights = {name: float(weights[name]) for name in self.modalities}
        self.num_classes, self.variant = first.num_classes, first.variant
        self.last_tap, self.skip_taps, self.skips = first.last_tap, first.skip_taps, first.skips
        self.score_stride, self.final, self.offset = first.score_stride, first.final, first.offset
        for name, head in heads.items():
            self.add_module(f"score_fr{name}", head.score_fr)
            for skip in head.skips:
                self.add_module(f"{skip.score}{name}", head.get_submodule(skip.score))
        for skip in first.skips:
            self.add_module(skip.upsample, first.get_submodule(skip.upsample))
            if skip.scale:  # FCN-8s at-once's fixed scalings: the same in every stream
                self.add_module(skip.scale, first.get_submodule(skip.scale))
        self.add_module(self.final, first.get_submodule(self.final))

    def _fused(
        self, score: str, tap: str, features: Mapping, scale: str | None = None
    ) -> torch.Tensor:
        """sum_m w_m * score<m>(tap of stream m): Caffe's Eltwise SUM with coeffs."""
        total = None
        for name in self.modalities:
            x = features[name][tap]
            if scale:
                x = self.get_submodule(scale)(x)
            scores = self.weights[name] * self.get_submodule(f"{score}{name}")(x)
            total = scores if total is None else total + scores
        return total

    def forward(self, features: Mapping[str, Mapping[str, torch.Tensor]], size) -> torch.Tensor:
        scores = self._fused("score_fr", self.last_tap, features)  # the reference's score_fused
        for skip in self.skips:
            upsampled = self.get_submodule(skip.upsample)(scores)
            skip_scores = self._fused(skip.score, skip.tap, features, skip.scale)
            scores = _fuse(upsampled, skip_scores, skip.offset)
        return _window(self.get_submodule(self.final)(scores), self.offset, size)

    def crop_offsets(self) -> dict[str, int]:
        offsets = {f"{skip.score}c": skip.offset for skip in self.skips}
        offsets["score"] = self.offset
        return offsets


def _layout_of(head: FCNHead) -> tuple:
    skips = tuple((s.tap, s.upsample, s.score, s.scale, s.offset) for s in head.skips)
    return head.num_classes, head.variant, head.last_tap, head.final, head.offset, skips


class LateFusionFCN(FCN):
    """Two (or more) FCN streams whose scores are summed with fixed weights, one module.

    ``backbone`` holds the streams (``backbone.color``, ``backbone.hha``), ``head`` the
    per-stream score layers and the shared upsampling. The input is the streams' inputs
    stacked in order (RGB-HHA: 6 channels), a dict by stream name or a tuple.
    """

    def __init__(
        self,
        backbone: StreamBackbones,
        head: LateFusionHead,
        *,
        channels: Mapping[str, int],
        normalization: Mapping[str, Callable],
        name: str = "late_fusion",
    ) -> None:
        super().__init__(backbone, head, name=name)
        if tuple(channels) != backbone.streams or head.modalities != backbone.streams:
            raise ValueError(
                f"channels {list(channels)}, streams {list(backbone.streams)} and head "
                f"{list(head.modalities)} must name the same inputs in the same order"
            )
        _check_normalization(normalization, channels)
        self.channels = dict(channels)
        self._normalization = dict(normalization)

    @property
    def normalization(self) -> dict[str, Callable]:
        return dict(self._normalization)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.channels)

    @property
    def in_channels(self) -> int:
        return sum(self.channels.values())

    def forward(self, x: Inputs) -> torch.Tensor:
        parts = split_inputs(x, self.channels)
        size = next(iter(parts.values())).shape[-2:]
        return self.head(self.backbone(parts), (size[0], size[1]))


def late_fusion(
    fcns: Mapping[str, FCN],
    *,
    weights: Mapping[str, float] | None = None,
    name: str = "late_fusion",
) -> LateFusionFCN:
    """One late-fusion net from one FCN per input (``{"color": rgb_net, "hha": hha_net}``).

    The result takes the FCNs' modules over (it shares them with the FCNs given: pass
    copies to keep those independent). With trained nets it starts out computing the
    weighted sum of their outputs, which is how the reference initialised its RGB-HHA net
    (``surgery.transplant(..., suffix='color')``). ``weights`` defaults to equal weights
    summing to 1 (0.5 each for two streams, the reference's coefficients).
    """
    weights = dict(weights) if weights is not None else {m: 1.0 / len(fcns) for m in fcns}
    normalization, channels = {}, {}
    for modality, fcn in fcns.items():
        if isinstance(fcn, (MultiModalFCN, LateFusionFCN)):
            raise ValueError(f"stream {modality!r} must be a single-input FCN")
        normalization[modality] = fcn.normalization
        channels[modality] = find_stem(fcn)[1].in_channels
    streams = StreamBackbones({m: fcn.backbone for m, fcn in fcns.items()})
    head = LateFusionHead({m: fcn.head for m, fcn in fcns.items()}, weights)
    return LateFusionFCN(streams, head, channels=channels, normalization=normalization, name=name)


# ---------------------------------------------------------------------------------------------
# Reference weights


_STREAM_LAYER = re.compile(r"^(conv\d_\d|fc6|fc7)(color|hha)$")


def caffe_rename(caffe_name: str) -> str:
    """The fcnseg module name of a layer of the reference's NYUDv2 nets, for
    ``fcnseg.weights.convert_caffe(..., rename=caffe_rename)``: ``conv1_1_bgrd`` (RGB-D)
    is ``backbone.conv1_1``; ``conv1_1color`` / ``fc7hha`` (RGB-HHA) are
    ``backbone.color.conv1_1`` / ``backbone.hha.fc7``; score and upsampling layers keep
    their names (``score_frcolor``, ``upscore``), which the head uses."""
    if caffe_name == "conv1_1_bgrd":
        return "backbone.conv1_1"
    match = _STREAM_LAYER.match(caffe_name)
    if match:
        return f"backbone.{match.group(2)}.{match.group(1)}"
    return caffe_name.replace("/", ".")


# ---------------------------------------------------------------------------------------------
# The NYUDv2 nets of Table 4


def _nyud_normalization(modality: str, backbone: Backbone) -> Callable:
    """Colour: the backbone's convention; HHA and depth: the reference's NYUDv2 inputs."""
    if modality == "color":
        return backbone.normalization
    from ..data.nyud import NYUD_NORMALIZATION  # data builds on the models package

    return NYUD_NORMALIZATION[modality]


def _check_in_channels(name: str, in_channels: int | None, channels: Mapping[str, int]) -> None:
    expected = sum(channels.values())
    if in_channels is not None and in_channels != expected:
        raise ValueError(
            f"{name} reads {expected} channels ({_layout(channels)}), not in_channels="
            f"{in_channels}: leave in_channels out"
        )


def _single_stream(
    variant: str, backbone: str, modality: str, *, num_classes: int, **options
) -> FCN:
    """A single-input FCN for one NYUDv2 modality (color or hha), normalised for it."""
    fcn = build_model(f"fcn{variant}_{backbone}", num_classes=num_classes, in_channels=3, **options)
    fcn.backbone.normalization = _nyud_normalization(modality, fcn.backbone)
    return fcn


def _build_hha(
    variant: str,
    backbone: str,
    *,
    num_classes: int,
    geometry: str | None = None,
    upsample: str = "deconv",
    learnable_upsample: bool = False,
    in_channels: int | None = None,
    pretrained_backbone: bool = False,
    backbone_weights: str | Path | None = None,
    output_stride: int = 32,
) -> FCN:
    name = f"fcn{variant}_{backbone}_hha"
    _check_in_channels(name, in_channels, {"hha": 3})
    fcn = _single_stream(
        variant,
        backbone,
        "hha",
        num_classes=num_classes,
        geometry=geometry,
        upsample=upsample,
        learnable_upsample=learnable_upsample,
        pretrained_backbone=pretrained_backbone,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
    )
    return FCN(fcn.backbone, fcn.head, name=name)


def _build_early(
    variant: str,
    backbone: str,
    modalities: tuple[str, ...],
    suffix: str,
    *,
    num_classes: int,
    geometry: str | None = None,
    upsample: str = "deconv",
    learnable_upsample: bool = False,
    in_channels: int | None = None,
    pretrained_backbone: bool = False,
    backbone_weights: str | Path | None = None,
    output_stride: int = 32,
) -> MultiModalFCN:
    """The RGB FCN (with its ImageNet weights, if asked) widened for the other inputs."""
    name = f"fcn{variant}_{backbone}_{suffix}"
    channels = {m: NYUD_CHANNELS[m] for m in modalities}
    _check_in_channels(name, in_channels, channels)
    fcn = build_model(
        f"fcn{variant}_{backbone}",
        num_classes=num_classes,
        geometry=geometry,
        upsample=upsample,
        learnable_upsample=learnable_upsample,
        in_channels=channels[modalities[0]],
        pretrained_backbone=pretrained_backbone,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
    )
    expand_input_channels(fcn, sum(channels.values()) - channels[modalities[0]], init="mean")
    normalization = {m: _nyud_normalization(m, fcn.backbone) for m in modalities}
    return MultiModalFCN(
        fcn.backbone, fcn.head, channels=channels, normalization=normalization, name=name
    )


def _build_late(
    variant: str,
    backbone: str,
    modalities: tuple[str, ...],
    suffix: str,
    *,
    num_classes: int,
    geometry: str | None = None,
    upsample: str = "deconv",
    learnable_upsample: bool = False,
    in_channels: int | None = None,
    pretrained_backbone: bool = False,
    backbone_weights: str | Path | None = None,
    output_stride: int = 32,
) -> LateFusionFCN:
    """One fresh stream per input (each from the ImageNet weights, if asked), fused."""
    name = f"fcn{variant}_{backbone}_{suffix}"
    _check_in_channels(name, in_channels, {m: NYUD_CHANNELS[m] for m in modalities})
    options = dict(
        geometry=geometry,
        upsample=upsample,
        learnable_upsample=learnable_upsample,
        pretrained_backbone=pretrained_backbone,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
    )
    fcns = {
        m: _single_stream(variant, backbone, m, num_classes=num_classes, **options)
        for m in modalities
    }
    return late_fusion(fcns, name=name)


# FCN-32s and FCN-16s VGG16, the rows of Table 4 (RGB is the plain fcn32s_vgg16).
for _variant in ("32s", "16s"):
    register_model(f"fcn{_variant}_vgg16_hha", partial(_build_hha, _variant, "vgg16"))
    register_model(
        f"fcn{_variant}_vgg16_rgbd",
        partial(_build_early, _variant, "vgg16", ("color", "depth"), "rgbd"),
    )
    register_model(
        f"fcn{_variant}_vgg16_rgbhha_late",
        partial(_build_late, _variant, "vgg16", ("color", "hha"), "rgbhha_late"),
    )
