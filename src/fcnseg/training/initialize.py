"""Where a run's weights start: the ImageNet backbone its spec names, a checkpoint or zoo
entry (``init_from``: transplanted by name, score layers made for another class count start
anew), or one trained net per input stream fused late (``init_streams``). Resuming starts
from the run's own checkpoint instead (``resume``).
"""

from __future__ import annotations

from ..builder import build_model
from ..config import ConfigError, TrainConfig
from ..models import FCN, ModelSpec
from ..models.backbones import set_activation_checkpointing
from ..models.fusion import late_fusion
from ..surgery import class_layers, transplant, without_layers
from ..zoo import INT8, is_pretrained_name, model_file
from . import checkpoint as ckpt

__all__ = ["build_model_for"]


def build_model_for(config: TrainConfig, spec: ModelSpec, *, init: bool) -> FCN:
    """The model of ``spec``; ``init`` starts its weights as configured (pretrained
    backbone, ``init_from``, ``init_streams``), else (resuming) the checkpoint will."""
    model = build_model(spec if init else spec.architecture())
    set_activation_checkpointing(model, config.activation_checkpointing)
    if init and config.init_streams:
        _fuse_streams(model, config)
    if init and config.init_from:
        _init_from(model, config)
    return model


def _init_from(model: FCN, config: TrainConfig) -> None:
    """Transplant the ``init_from`` checkpoint's (or zoo entry's) weights by name; score
    layers made for another class count start as a new model's, and the line printed
    names them."""
    if config.init_from.endswith(INT8) and is_pretrained_name(config.init_from):
        raise ConfigError(
            f"init_from = {config.init_from} is an int8 ONNX file: start from "
            f"{config.init_from.removesuffix(INT8)}"
        )
    source = ckpt.load_checkpoint(model_file(config.init_from))
    fresh = class_layers(source.state_dict, model, heads=_head_names(model))
    report = transplant(model, without_layers(source.state_dict, fresh))
    if not report.copied and not report.coerced:
        raise ConfigError(f"init_from = {config.init_from}: none of its weights fit {config.model}")
    note = ""
    if fresh:
        note = (
            f"; re-initialised for {_class_counts(model.spec)} classes (the checkpoint has "
            f"{_class_counts(source.spec)}): {', '.join(fresh)}"
        )
    print(f"init_from {config.init_from}: {report}{note}")


def _head_names(model: FCN) -> list[str]:
    heads = list(model.task_heads().values())
    return [name for name, module in model.named_modules() if any(module is h for h in heads)]


def _class_counts(spec: ModelSpec) -> str:
    return " / ".join(str(count) for count in spec.task_classes.values())


def _fuse_streams(model: FCN, config: TrainConfig) -> None:
    """Load the late fusion of the ``init_streams`` checkpoints into ``model``: with trained
    RGB and HHA nets it starts as 0.5 x RGB + 0.5 x HHA scores, as the reference initialised
    ``nyud-fcn32s-color-hha`` from its single-stream nets."""
    if not model.late_fusion:
        raise ConfigError(f"init_streams: {config.model} is not a late-fusion model: use init_from")
    inputs = model.spec.input_names
    if set(config.init_streams) != set(inputs):
        raise ConfigError(
            f"init_streams names {sorted(config.init_streams)}, but {config.model} has the "
            f"streams {list(inputs)}: give one checkpoint per stream"
        )
    streams = {name: ckpt.load_checkpoint(config.init_streams[name]).build() for name in inputs}
    weights = model.spec.fusion_weights
    by_stream = None if weights is None else dict(zip(inputs, weights, strict=True))
    fused = late_fusion(streams, weights=by_stream)
    if fused.normalizations != model.normalizations:
        raise ConfigError(
            f"init_streams: the checkpoints read inputs normalised as {fused.normalizations}, "
            f"{config.model} as {model.normalizations}: train each stream with its model "
            "(color: fcn32s_vgg16, hha: fcn32s_vgg16_hha)"
        )
    try:
        model.load_state_dict(fused.state_dict())
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"init_streams: the checkpoints do not fit {config.model} ({detail}): train "
            "them with the same backbone, variant and classes"
        ) from None
    print(f"init_streams: fused {', '.join(f'{m} {p}' for m, p in config.init_streams.items())}")
