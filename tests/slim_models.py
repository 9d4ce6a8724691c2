"""Helpers shared by the model tests: a slim VGG16 backbone to register, random score
layers, and random inputs for any model's declared inputs.

Not a test module (no ``test_`` prefix): test files import it by name, as pytest puts
their folder on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.modelfile import record_of
from fcnseg.models import FCN, FCNHead, InputSpec, ModelSpec, registered_spec
from fcnseg.models.backbones import BACKBONES, VGG16, FeatureTap
from fcnseg.models.backbones.base import SequentialBackbone, check_geometry
from fcnseg.models.normalization import CAFFE_VOC
from fcnseg.training import checkpoint as ckpt

# VGG16 with a few channels: the same layers, geometries, taps and crop offsets as the
# reference VGG16, at a thousandth of its weights.
SLIM = "slim_vgg16"
slim_vgg16 = partial(VGG16, widths=(4, 4, 8, 8, 8), fc_channels=16)


TINY = "tiny_vgg"


class TinyVGG(SequentialBackbone):
    """VGG16's geometry with one 3x3 convolution per block: pad 100 (caffe) or 1 on the
    first, ceil-mode 2x2 pools, a 7x7 fc6 and a 1x1 fc7, taps pool3, pool4 and fc7. Half
    the layers of the slim VGG16, for what costs per layer (the ONNX exporter)."""

    classifier_name = "fc8"

    def __init__(self, *, geometry: str = "caffe", in_channels: int = 3) -> None:
        super().__init__()
        self.geometry = check_geometry(geometry)
        self.normalization = CAFFE_VOC
        channels = in_channels
        for block in range(1, 6):
            pad = 100 if block == 1 and geometry == "caffe" else 1
            self.add_module(f"conv{block}", nn.Conv2d(channels, 4, 3, padding=pad))
            self.add_module(f"relu{block}", nn.ReLU(inplace=True))
            self.add_module(f"pool{block}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            channels = 4
        self.fc6 = nn.Conv2d(channels, 8, 7, padding=0 if geometry == "caffe" else 3)
        self.relu6 = nn.ReLU(inplace=True)
        self.fc7 = nn.Conv2d(8, 8, 1)
        self.taps = (
            FeatureTap("pool3", 8, 4),
            FeatureTap("pool4", 16, 4),
            FeatureTap("fc7", 32, 8),
        )


# The registered nets whose tiny twins the engine tests run: one input, two, two tasks.
KINDS = {"plain": "fcn8s_vgg16", "rgbd": "fcn16s_vgg16_rgbd", "siftflow": "fcn8s_vgg16_siftflow"}


def tiny_checkpoint(
    path: Path, kind: str = "plain", seed: int = 0, classes: int = 5, random_scores: bool = True
) -> Path:
    """A checkpoint of the tiny VGG16 net of ``kind`` with random score layers, or zero ones
    as built (register ``TINY`` first: the ``tiny_backbone`` fixture of test_engines)."""
    spec = registered_spec(KINDS[kind])
    fields = {} if spec.tasks else {"tasks": {"semantic": classes}}
    spec = dataclasses.replace(spec, backbone=TINY, name=None, **fields)
    torch.manual_seed(seed)
    model = fcnseg.build_model(spec)
    if random_scores:
        model = randomise_scores(model, seed=seed)
    return ckpt.save_checkpoint(record_of(model), path)


def register_slim(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the slim VGG16 as backbone ``SLIM`` (ModelSpec checks the name against
    BACKBONES when built, so register before making a spec)."""
    monkeypatch.setitem(BACKBONES, SLIM, slim_vgg16)
    return SLIM


def randomise_scores(model: FCN, seed: int = 0, std: float = 0.05) -> FCN:
    """Score layers start at zero (the reference's filler): random ones make every task's
    output depend on the input. Every head, every stream's score layers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.task_heads().values():
            for name, module in head.named_children():
                if name.startswith("score") and isinstance(module, nn.Conv2d):
                    for parameter in module.parameters():
                        parameter.copy_(std * torch.randn(parameter.shape, generator=generator))
    return model


def raw_images(spec: ModelSpec, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One image per input as stored on disk: H x W x C uint8 (H x W for one channel),
    depth as H x W millimetres (uint16)."""
    rng = np.random.default_rng(seed)
    images = {}
    for item in spec.inputs:
        if item.name == "depth":
            images[item.name] = rng.integers(500, 10000, (height, width), dtype=np.uint16)
        elif item.channels == 1:
            images[item.name] = rng.integers(0, 256, (height, width), dtype=np.uint8)
        else:
            images[item.name] = rng.integers(0, 256, (height, width, item.channels), dtype=np.uint8)
    return images


def model_inputs(
    spec: ModelSpec, batch: int, height: int, width: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batch of random inputs by name, normalised as the (built) spec says."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for item in spec.inputs:
        raw = torch.rand((batch, item.channels, height, width), generator=generator)
        raw = 500 + raw * 9500 if item.name == "depth" else raw * 255
        inputs[item.name] = item.normalization(raw)
    return inputs


def first_convolution(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def fcn_on(
    backbone: nn.Module, classes: int, variant: str = "8s", *, name: str | None = None
) -> FCN:
    """A single-input FCN on a backbone built by hand (a width the registry lacks), with
    a zero-initialised head as ``build_model`` makes it. Its spec names the registered
    backbone of the same class (``vgg16`` for a narrow VGG16): run it, do not rebuild it
    from its spec."""
    registered = next(key for key, make in BACKBONES.items() if make is type(backbone))
    spec = ModelSpec(
        registered,
        variant,
        tasks={"semantic": classes},
        inputs=(InputSpec("image", 3, backbone.normalization),),
        geometry=backbone.geometry,
        name=name,
    )
    return FCN(spec, backbone, {"semantic": FCNHead(backbone, classes, variant=variant)})
