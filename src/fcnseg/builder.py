"""From a spec to a model: backbones, weights, rarefaction, heads.

``build_model("fcn8s_vgg16", num_classes=21)`` or ``build_model(spec)``. This is where
weights are loaded (the offline ImageNet packages, torchvision/timm files) and where a
backbone is rarefied for a smaller output stride (``dense.rarefy``, Section 3.2); the model
classes themselves load nothing.

For each input stream the backbone is built for RGB, its weights loaded, and its first
convolution adapted to the input's channels (``adapt_input_channels``: extra channels start
from the mean of the RGB filters, as the reference's RGB-D net and smp do), so that an
ImageNet backbone serves any channel count. An input without a normalisation of its own
reads the backbone weights' convention, widened to its channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dense import rarefy
from .models.backbones import BACKBONES, Backbone
from .models.fcn import FCN, FCNHead
from .models.fusion import LateFusionHead, StreamBackbones, adapt_input_channels
from .models.registry import PACKAGE_WEIGHTS, registered_spec
from .models.spec import (
    SPEC_FIELDS,
    InputSpec,
    ModelSpec,
    SpecError,
    tasks_from,
)
from .surgery import TransplantReport
from .weights.foreign import load_backbone_weights, load_package_weights

__all__ = ["build_model", "resolve_spec", "load_backbone", "model_info", "ModelInfo"]


def build_model(model: str | ModelSpec, *, num_classes: int | None = None, **options) -> FCN:
    """Build a registered model by name, or any ``ModelSpec``.

    ``options`` are ``ModelSpec`` fields (``geometry``, ``upsample``, ``output_stride``,
    ``pretrained_backbone``, ``backbone_weights``, ``tasks``, ``inputs``, ...), plus
    ``in_channels`` for a single-input model. ``num_classes`` sets the class count of a
    single-task model (or ``tasks={"semantic": 33, "geometric": 3}``).
    """
    return assemble(resolve_spec(model, num_classes=num_classes, **options))


def resolve_spec(
    model: str | ModelSpec,
    *,
    num_classes: int | None = None,
    require_tasks: bool = True,
    **options: Any,
) -> ModelSpec:
    """The spec ``build_model`` builds: the registered template with ``options`` applied
    (``require_tasks=False``: its class counts may still be open)."""
    spec = model if isinstance(model, ModelSpec) else registered_spec(model)
    unknown = sorted(set(options) - set(SPEC_FIELDS) - {"in_channels"})
    if unknown:
        raise SpecError(
            f"unknown model option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(sorted((*SPEC_FIELDS, 'in_channels', 'num_classes')))}"
        )
    options = dict(options)
    in_channels = options.pop("in_channels", None)
    try:
        spec = dataclasses.replace(spec, **options)
    except TypeError as error:  # a value of the wrong kind (a list for a name, ...)
        raise SpecError(f"{spec.label}: {error}") from None
    if in_channels is not None:
        spec = _with_channels(spec, in_channels)
    if num_classes is not None:
        spec = _with_classes(spec, num_classes)
    if require_tasks and not spec.tasks:
        raise SpecError(f"{spec.label} needs a class count: pass num_classes=N")
    return spec


def _with_channels(spec: ModelSpec, in_channels: int) -> ModelSpec:
    if in_channels == spec.in_channels:
        return spec
    if len(spec.inputs) != 1:
        layout = " + ".join(f"{i.name} {i.channels}" for i in spec.inputs)
        raise SpecError(
            f"{spec.label} reads {spec.in_channels} channels ({layout}), not in_channels="
            f"{in_channels}: leave in_channels out, or set inputs={{name: channels}}"
        )
    only = spec.inputs[0]
    norm = only.normalization
    widened = None if norm is None else _widened(norm, in_channels, spec.label)
    return dataclasses.replace(spec, inputs=(InputSpec(only.name, in_channels, widened),))


def _widened(norm, channels: int, label: str):
    if not hasattr(norm, "with_channels"):
        raise SpecError(f"{label}: its input normalisation {norm} reads one channel only")
    return norm.with_channels(channels)


def _with_classes(spec: ModelSpec, num_classes: int) -> ModelSpec:
    if len(spec.tasks) > 1:
        raise SpecError(
            f"{spec.label} predicts {', '.join(spec.task_names)}: set their classes with "
            "tasks={name: classes}, not num_classes"
        )
    name = spec.tasks[0].name if spec.tasks else None
    return dataclasses.replace(spec, tasks=tasks_from({name or "semantic": num_classes}))


# ---------------------------------------------------------------------------------------------
# Assembly


def assemble(spec: ModelSpec) -> FCN:
    """The model of ``spec``, its weights loaded as the spec says."""
    if not spec.tasks:
        raise SpecError(f"{spec.label} needs a class count: pass num_classes=N")
    if spec.fusion == "late" and len(spec.inputs) > 1:
        streams = {item.name: _stream(spec, item) for item in spec.inputs}
        backbone = StreamBackbones({name: b for name, (b, _) in streams.items()})
        inputs = tuple(dataclasses.replace(i, normalization=streams[i.name][1]) for i in spec.inputs)
        weights = dict(zip(spec.input_names, _fusion_weights(spec), strict=True))
        heads = {
            task.name: LateFusionHead(
                {name: _head(spec, b, task.classes) for name, (b, _) in streams.items()}, weights
            )
            for task in spec.tasks
        }
        geometry = backbone.geometry
    else:
        stacked = InputSpec("stacked", spec.in_channels)
        backbone, _ = _stream(spec, stacked)
        inputs = tuple(_resolved(i, backbone) for i in spec.inputs)
        heads = {task.name: _head(spec, backbone, task.classes) for task in spec.tasks}
        geometry = backbone.geometry
    resolved = dataclasses.replace(spec, inputs=inputs, geometry=geometry)
    return FCN(resolved, backbone, heads)


def _stream(spec: ModelSpec, item: InputSpec) -> tuple[Backbone, Any]:
    """One backbone for ``item``'s channels, with its weights, rarefied as asked; and the
    input's normalisation."""
    kwargs: dict[str, Any] = {"in_channels": 3}
    if spec.geometry is not None:
        kwargs["geometry"] = spec.geometry
    backbone = BACKBONES[spec.backbone](**kwargs)
    _load_weights(backbone, spec)
    if item.channels != 3:
        adapt_input_channels(backbone, item.channels)
    if spec.output_stride < backbone.output_stride:
        backbone = rarefy(backbone, spec.output_stride, inplace=True)
    return backbone, _resolved(item, backbone).normalization


def _load_weights(backbone: Backbone, spec: ModelSpec) -> None:
    if spec.pretrained_backbone:
        if spec.backbone not in PACKAGE_WEIGHTS:
            offline = ", ".join(PACKAGE_WEIGHTS)
            raise SpecError(
                f"no ImageNet weights for {spec.backbone} ship offline (they do for {offline}): "
                "pass backbone_weights=FILE (a torchvision or timm state dict), convert the "
                "Caffe model (fcnseg weights convert caffe), or train from random weights "
                "with pretrained_backbone=false"
            )
        load_package_weights(backbone)
    if spec.backbone_weights is not None:
        load_backbone_weights(backbone, spec.backbone_weights)  # sets their normalisation


def _resolved(item: InputSpec, backbone: Backbone) -> InputSpec:
    if item.normalization is not None:
        return item
    return dataclasses.replace(item, normalization=backbone.normalization.with_channels(item.channels))


def _fusion_weights(spec: ModelSpec) -> tuple[float, ...]:
    if spec.fusion_weights is not None:
        return spec.fusion_weights
    return (1.0 / len(spec.inputs),) * len(spec.inputs)  # the reference's 0.5 / 0.5


def _head(spec: ModelSpec, backbone: nn.Module, classes: int) -> FCNHead:
    return FCNHead(
        backbone,
        classes,
        variant=spec.variant,
        upsample=spec.upsample,
        learnable_upsample=spec.learnable_upsample,
        skip_scales=spec.skip_scales,
    )


def load_backbone(model: FCN, weights: str | Path, *, source: str = "auto") -> TransplantReport:
    """Load a torchvision/timm/package file into a built single-stream model's backbone;
    the model's inputs then read the weights' normalisation."""
    if model.late_fusion:
        raise SpecError(f"{model.name} has one backbone per input: load each stream's weights")
    report = load_backbone_weights(model.backbone, weights, source=source)
    inputs = tuple(
        dataclasses.replace(item, normalization=None) for item in model.spec.inputs
    )
    resolved = tuple(_resolved(item, model.backbone) for item in inputs)
    model.spec = dataclasses.replace(model.spec, inputs=resolved)
    return report


# ---------------------------------------------------------------------------------------------
# What a registered model is, without its weights


@dataclass(frozen=True)
class ModelInfo:
    """What ``fcnseg models`` shows of a registered model."""

    name: str
    spec: ModelSpec
    parameters: int  # for the class count asked where the model leaves it open
    inputs: dict[str, int]  # name -> channels
    tasks: dict[str, int | None]  # name -> classes (None: set when building)
    score_stride: int
    skip_taps: tuple[str, ...]
    geometry: str
    pretrained: str | None  # the package with offline ImageNet weights, if any


@cache
def model_info(name: str, num_classes: int = 21) -> ModelInfo:
    """Parameters, inputs, tasks, score stride, skip taps and offline weights of a
    registered model, from a copy built on the meta device (no memory for weights);
    parameters are counted for ``num_classes`` where the model leaves the count open."""
    template = registered_spec(name)
    spec = template if template.tasks else dataclasses.replace(template, tasks=tasks_from(num_classes))
    with torch.device("meta"):
        model = assemble(spec)
    head = next(iter(model.task_heads().values()))
    return ModelInfo(
        name=name,
        spec=template,
        parameters=sum(p.numel() for p in model.parameters()),
        inputs=template.input_channels,
        tasks=template.task_classes or {"semantic": None},
        score_stride=head.score_stride,
        skip_taps=tuple(tap.name for tap in head.skip_taps),
        geometry=model.spec.geometry,
        pretrained=PACKAGE_WEIGHTS.get(template.backbone),
    )
