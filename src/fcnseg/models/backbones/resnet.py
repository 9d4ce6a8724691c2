"""ResNet-18/34/50/101 in torchvision's layout (ResNet v1.5), convolutionalized.

He et al., "Deep Residual Learning for Image Recognition" (2016): a 7x7 stride-2 stem,
a 3x3 stride-2 max pool, then four stages of residual blocks at strides 4, 8, 16, 32.
BasicBlock (two 3x3 convolutions) for 18/34, Bottleneck (1x1, 3x3, 1x1 with expansion
4) for 50/101. As in torchvision ("v1.5"), a Bottleneck strides on its 3x3 convolution,
not on the first 1x1, and a block that changes the resolution or width projects its
shortcut with a strided 1x1 convolution plus batch norm (``downsample.0`` / ``.1``).

Module names are torchvision's (conv1, bn1, layer1.0.conv1, ..., fc), so its state dicts
load one-to-one. The global average pooling is dropped, as the FCN paper drops the final
pooling of its classifiers (Section 3.1), and ``fc`` becomes a 1x1 convolution that
scores every stride-32 cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from .. import geometry as geo
from ..normalization import IMAGENET
from .base import Backbone, FeatureTap, check_geometry

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101"]

_STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are expansion times this

# every key a torchvision resnet state dict may hold
_TORCHVISION_KEY = re.compile(
    r"(conv1\.weight|bn1\.\w+|fc\.(weight|bias)"
    r"|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.\w+|downsample\.0\.weight|downsample\.1\.\w+))"
)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut, where the identity would not fit (resolution or width)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(in_channels, width, stride)

    def residual_convs(self) -> tuple[nn.Conv2d, ...]:
        """The residual branch's convolutions in order: they fix the block's geometry."""
        return (self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4, and a shortcut (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def residual_convs(self) -> tuple[nn.Conv2d, ...]:
        """The residual branch's convolutions in order: they fix the block's geometry."""
        return (self.conv1, self.conv2, self.conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(Backbone):
    """ResNet with taps layer2 (stride 8), layer3 (stride 16) and layer4 (stride 32).

    ``block`` is ``BasicBlock`` or ``Bottleneck`` and ``depths`` the number of blocks in
    each of the four stages. ``geometry="aligned"`` keeps torchvision's paddings, so a
    stride-s tap has ceil(H / s) cells and cell i sits at x = s * i; ``"caffe"`` pads
    conv1 by 100 like the FCN reference nets and changes nothing else.
    """

    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: tuple[int, int, int, int],
        *,
        geometry: str = "aligned",
        in_channels: int = 3,
        classifier: bool = False,
    ) -> None:
        super().__init__()
        self.geometry = check_geometry(geometry)
        self.normalization = IMAGENET
        self.conv1 = nn.Conv2d(
            in_channels, 64, 7, stride=2, padding=100 if geometry == "caffe" else 3, bias=False
        )
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for stage, (width, depth) in enumerate(zip(_STAGE_WIDTHS, depths, strict=True), start=1):
            stride = 1 if stage == 1 else 2  # layer1 runs at the max pool's stride 4
            blocks = []
            for index in range(depth):
                blocks.append(block(channels, width, stride if index == 0 else 1))
                channels = width * block.expansion
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        if classifier:
            self.fc = nn.Conv2d(channels, 1000, 1)  # torchvision's Linear fc at every cell
        self.taps = tuple(
            FeatureTap(f"layer{stage}", 2 ** (stage + 1), width * block.expansion)
            for stage, width in zip((2, 3, 4), _STAGE_WIDTHS[1:], strict=True)
        )
        self.init_weights()

    def _stages(self) -> list[tuple[str, nn.Sequential]]:
        return [(f"layer{stage}", getattr(self, f"layer{stage}")) for stage in range(1, 5)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x H/4 x W/4
        features: dict[str, torch.Tensor] = {}
        for name, stage in self._stages():
            for block in stage:
                x = self.run_block(block, x)
            features[name] = x
        return {tap.name: features[tap.name] for tap in self.taps}

    def _main_path(self, last_stage: str) -> Iterator[nn.Module]:
        """The resampling layers from the image to the end of ``last_stage``.

        The shortcut of a block has the same geometry as its residual branch by
        construction (same stride, centred kernels), so the branch alone fixes it.
        """
        yield self.conv1
        yield self.maxpool
        for name, stage in self._stages():
            for block in stage:
                yield from block.residual_convs()
            if name == last_stage:
                return

    def coord_map(self, tap: str) -> geo.CoordMap:
        if tap not in {t.name for t in self.taps}:
            offered = ", ".join(t.name for t in self.taps)
            raise ValueError(f"ResNet has no tap {tap!r}; it offers {offered}")
        return geo.trace(self._main_path(tap))


def _resnet(
    block: type[BasicBlock] | type[Bottleneck],
    depths: tuple[int, int, int, int],
    geometry: str,
    in_channels: int,
    classifier: bool,
) -> ResNet:
    return ResNet(block, depths, geometry=geometry, in_channels=in_channels, classifier=classifier)


def resnet18(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2); taps of 128, 256, 512 channels."""
    return _resnet(BasicBlock, (2, 2, 2, 2), geometry, in_channels, classifier)


def resnet34(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3); taps of 128, 256, 512 channels."""
    return _resnet(BasicBlock, (3, 4, 6, 3), geometry, in_channels, classifier)


def resnet50(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> ResNet:
    """ResNet-50: Bottlenecks (3, 4, 6, 3); taps of 512, 1024, 2048 channels."""
    return _resnet(Bottleneck, (3, 4, 6, 3), geometry, in_channels, classifier)


def resnet101(
    *, geometry: str = "aligned", in_channels: int = 3, classifier: bool = False
) -> ResNet:
    """ResNet-101: Bottlenecks (3, 4, 23, 3); taps of 512, 1024, 2048 channels."""
    return _resnet(Bottleneck, (3, 4, 23, 3), geometry, in_channels, classifier)
