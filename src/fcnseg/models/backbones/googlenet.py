"""GoogLeNet (Inception v1) in the layout of Caffe's bvlc_googlenet (FCN-GoogLeNet, Table 1).

Szegedy et al., "Going Deeper with Convolutions" (2015): a stem conv1/7x7_s2, a 3x3
stride-2 max pool and LRN, conv2/3x3_reduce and conv2/3x3 with LRN and a pool, then nine
Inception modules, 3a 3b | pool3 | 4a .. 4e | pool4 | 5a 5b. An Inception module runs four
stride-1 branches on the same input and concatenates them: a 1x1 convolution; a 1x1
reduction then a 3x3; a 1x1 reduction then a 5x5; a 3x3 max pool then a 1x1 projection,
every convolution followed by ReLU. The FCN paper discards the final average pooling
(pool5/7x7_s1) and the auxiliary classifiers (Section 4.1), so the classifier
loss3/classifier becomes a 1x1 convolution scoring every stride-32 cell.

Modules carry Caffe's layer names with '/' read as '.': the Caffe layer
``inception_4c/5x5_reduce`` is ``self.inception_4c`` child ``5x5_reduce``, whose
parameters are ``inception_4c.5x5_reduce.weight`` and ``.bias``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .. import geometry as geo
from ..normalization import CAFFE_VOC
from .alexnet import caffe_lrn, caffe_max_pool
from .base import FeatureTap, SequentialBackbone, check_geometry

__all__ = ["GoogLeNet", "Inception", "INCEPTION_WIDTHS"]

# (module, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), bvlc_googlenet deploy.prototxt
INCEPTION_WIDTHS = (
    ("3a", 64, 96, 128, 16, 32, 32),  # 256 out
    ("3b", 128, 128, 192, 32, 96, 64),  # 480
    ("4a", 192, 96, 208, 16, 48, 64),  # 512
    ("4b", 160, 112, 224, 24, 64, 64),  # 512
    ("4c", 128, 128, 256, 24, 64, 64),  # 512
    ("4d", 112, 144, 288, 32, 64, 64),  # 528
    ("4e", 256, 160, 320, 32, 128, 128),  # 832
    ("5a", 256, 160, 320, 32, 128, 128),  # 832
    ("5b", 384, 192, 384, 48, 128, 128),  # 1024
)


def _named(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    """A sequence whose children carry Caffe's names (e.g. ``7x7_s2``)."""
    return nn.Sequential(OrderedDict(layers))


class Inception(nn.Module):
    """Four stride-1 branches on one input, concatenated along the channels."""

    # children in Caffe's order; each branch is applied left to right
    BRANCHES = (
        ("1x1", "relu_1x1"),
        ("3x3_reduce", "relu_3x3_reduce", "3x3", "relu_3x3"),
        ("5x5_reduce", "relu_5x5_reduce", "5x5", "relu_5x5"),
        ("pool", "pool_proj", "relu_pool_proj"),
    )

    def __init__(
        self,
        in_channels: int,
        c1x1: int,
        c3x3_reduce: int,
        c3x3: int,
        c5x5_reduce: int,
        c5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        layers = {
            "1x1": nn.Conv2d(in_channels, c1x1, 1),
            "3x3_reduce": nn.Conv2d(in_channels, c3x3_reduce, 1),
            "3x3": nn.Conv2d(c3x3_reduce, c3x3, 3, padding=1),
            "5x5_reduce": nn.Conv2d(in_channels, c5x5_reduce, 1),
            "5x5": nn.Conv2d(c5x5_reduce, c5x5, 5, padding=2),
            "pool": nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            "pool_proj": nn.Conv2d(in_channels, pool_proj, 1),
        }
        for branch in self.BRANCHES:
            for name in branch:
                self.add_module(name, layers[name] if name in layers else nn.ReLU(inplace=True))
        self.out_channels = c1x1 + c3x3 + c5x5 + pool_proj

    def branch(self, index: int) -> list[nn.Module]:
        """The layers of branch ``index`` (0: 1x1, 1: 3x3, 2: 5x5, 3: pool) in order."""
        return [getattr(self, name) for name in self.BRANCHES[index]]

    def coord_map(self) -> geo.CoordMap:
        """The module's map, which every branch must share for the concatenation to line up."""
        maps = {geo.trace(self.branch(index)) for index in range(len(self.BRANCHES))}
        if len(maps) != 1:
            raise ValueError(f"Inception branches disagree on their geometry: {maps}")
        return maps.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for index in range(len(self.BRANCHES)):
            y = x
            for layer in self.branch(index):
                y = layer(y)
            outputs.append(y)
        return torch.cat(outputs, dim=1)


class GoogLeNet(SequentialBackbone):
    """GoogLeNet with taps inception_3b (stride 8), inception_4e (16), inception_5b (32).

    ``geometry="caffe"`` pads conv1/7x7_s2 by 100 like the FCN reference nets:
    inception_3b cell j sits at x = 8 j - 91, inception_4e at 16 j - 83, inception_5b at
    32 j - 67. ``"aligned"`` keeps the original pad 3, the geometry the ImageNet weights
    were trained in (224 x 224 gives a 7 x 7 inception_5b): cells sit at 8 j + 6,
    16 j + 14 and 32 j + 30, and with A = ceil(H / 2) conv1 rows the taps have
    floor(A / 4), floor(A / 8) and floor(A / 16) rows (the valid 3x3 stride-2 pools
    halve rounding down). Every resampling kernel is odd, so in both geometries odd
    upsampling kernels keep each tap a whole number of cells from the next (3/2) and
    inception_5b whole pixels from the image (63/32, crop 98 caffe, 1 aligned); even ones
    (4/2, 64/32) land half a cell off.
    """

    classifier_name = "loss3"  # the container of loss3/classifier: self.loss3.classifier

    def __init__(
        self,
        *,
        geometry: str = "caffe",
        in_channels: int = 3,
        classifier: bool = False,
    ) -> None:
        super().__init__()
        self.geometry = check_geometry(geometry)
        self.normalization = CAFFE_VOC
        pad = 100 if geometry == "caffe" else 3
        self.conv1 = _named(
            ("7x7_s2", nn.Conv2d(in_channels, 64, 7, stride=2, padding=pad)),
            ("relu_7x7", nn.ReLU(inplace=True)),
        )
        self.pool1 = _named(("3x3_s2", caffe_max_pool()), ("norm1", caffe_lrn()))
        self.conv2 = _named(
            ("3x3_reduce", nn.Conv2d(64, 64, 1)),
            ("relu_3x3_reduce", nn.ReLU(inplace=True)),
            ("3x3", nn.Conv2d(64, 192, 3, padding=1)),
            ("relu_3x3", nn.ReLU(inplace=True)),
            ("norm2", caffe_lrn()),
        )
        self.pool2 = _named(("3x3_s2", caffe_max_pool()))
        channels = 192
        for name, *widths in INCEPTION_WIDTHS:
            if name in ("4a", "5a"):  # pool3 and pool4 open stages 4 and 5
                self.add_module(f"pool{name[0]}", _named(("3x3_s2", caffe_max_pool())))
            module = Inception(channels, *widths)
            self.add_module(f"inception_{name}", module)
            channels = module.out_channels
        if classifier:
            self.loss3 = _named(("classifier", nn.Conv2d(channels, 1000, 1)))
        self.taps = (
            FeatureTap("inception_3b", 8, 480),
            FeatureTap("inception_4e", 16, 832),
            FeatureTap("inception_5b", 32, 1024),
        )
