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

Both kinds are ``FCN``s built from a ``ModelSpec`` with several ``inputs`` (``fusion`` early or
late); they read a dict by input name, a tuple, or the inputs stacked in their declared order.
Colour uses the backbone's convention (for the Caffe VGG16: BGR minus the VOC mean), HHA the
reference's NYUDv2 HHA mean, depth the reference's log depth minus 7.844; the reference's
NYUDv2 colour mean (116.190, 97.203, 92.318) differs from the VOC mean by a constant the
first layer absorbs, and keeping the backbone's convention lets a late-fusion net start from
RGB nets trained by ``fcnseg train``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch
from torch import nn

from .backbones.base import Backbone
from .fcn import FCN, FCNHead, fuse_skip, score_window
from .spec import InputSpec

__all__ = [
    "find_stem",
    "expand_input_channels",
    "adapt_input_channels",
    "StreamBackbones",
    "LateFusionHead",
    "late_fusion",
    "caffe_rename",
]

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
    old = _stem(model_or_backbone).weight  # out x in x k x k
    with torch.no_grad():
        if init == "mean":
            fill = old.mean(dim=1, keepdim=True).expand(-1, extra, -1, -1)
        else:
            fill = old.new_zeros(old.shape[0], extra, *old.shape[2:])
        _set_stem_weight(model_or_backbone, torch.cat([old, fill], dim=1))
    return model_or_backbone


def adapt_input_channels(model_or_backbone: nn.Module, channels: int) -> nn.Module:
    """Make the first convolution read ``channels`` channels, keeping what its filters
    learned: more channels start as the mean of the existing filters
    (``expand_input_channels``); fewer share the sum of the existing filters equally, so a
    grey image (1 channel) is scored as the same grey replicated to RGB would be."""
    old = _stem(model_or_backbone).weight
    if channels > old.shape[1]:
        return expand_input_channels(model_or_backbone, channels - old.shape[1])
    if channels < old.shape[1]:
        with torch.no_grad():
            shared = old.sum(dim=1, keepdim=True) / channels
            _set_stem_weight(model_or_backbone, shared.expand(-1, channels, -1, -1).clone())
    return model_or_backbone


def _stem(module: nn.Module) -> nn.Conv2d:
    _, conv = find_stem(module)
    if conv.groups != 1:
        raise ValueError("the first convolution is grouped: it cannot take other channels")
    return conv


def _set_stem_weight(module: nn.Module, weight: torch.Tensor) -> None:
    conv = _stem(module)
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.in_channels = weight.shape[1]


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
            scores = fuse_skip(upsampled, skip_scores, skip.offset)
        return score_window(self.get_submodule(self.final)(scores), self.offset, size)

    def crop_offsets(self) -> dict[str, int]:
        offsets = {f"{skip.score}c": skip.offset for skip in self.skips}
        offsets["score"] = self.offset
        return offsets


def _layout_of(head: FCNHead) -> tuple:
    skips = tuple((s.tap, s.upsample, s.score, s.scale, s.offset) for s in head.skips)
    return head.num_classes, head.variant, head.last_tap, head.final, head.offset, skips


def late_fusion(
    fcns: Mapping[str, FCN],
    *,
    weights: Mapping[str, float] | None = None,
    name: str | None = None,
) -> FCN:
    """One late-fusion net from one single-input FCN per input (``{"color": rgb_net,
    "hha": hha_net}``), task by task.

    The result takes the FCNs' modules over (it shares them with the FCNs given: pass
    copies to keep those independent). With trained nets it starts out computing the
    weighted sum of their outputs, which is how the reference initialised its RGB-HHA net
    (``surgery.transplant(..., suffix='color')``). ``weights`` defaults to equal weights
    summing to 1 (0.5 each for two streams, the reference's coefficients).
    """
    weights = dict(weights) if weights is not None else {m: 1.0 / len(fcns) for m in fcns}
    for stream, fcn in fcns.items():
        if len(fcn.spec.inputs) != 1:
            raise ValueError(f"stream {stream!r} must be a single-input FCN")
    first = next(iter(fcns.values())).spec
    inputs = tuple(
        InputSpec(stream, fcn.spec.in_channels, fcn.spec.inputs[0].normalization)
        for stream, fcn in fcns.items()
    )
    if set(weights) != set(fcns):
        raise ValueError(f"fusion weights name {sorted(weights)}, the streams {sorted(fcns)}")
    spec = dataclasses.replace(
        first,
        inputs=inputs,
        fusion="late",
        fusion_weights=tuple(float(weights[stream]) for stream in fcns),
        name=name,
    )
    streams = StreamBackbones({m: fcn.backbone for m, fcn in fcns.items()})
    heads = {
        task: LateFusionHead({m: fcn.task_heads()[task] for m, fcn in fcns.items()}, weights)
        for task in first.task_names
    }
    return FCN(spec, streams, heads)


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
