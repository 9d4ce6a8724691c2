"""VGG16 in the Caffe layout the FCN reference fine-tuned (VGG_ILSVRC_16_layers).

Thirteen 3x3 convolutions conv1_1 .. conv5_3 in five blocks, each block closed by a 2x2
stride-2 max pool rounding up (Caffe's pooling arithmetic), then the fully connected
layers convolutionalized: fc6 a 7x7 convolution to 4096 channels, fc7 a 1x1 convolution,
each followed by ReLU and element-wise dropout 0.5, and the ImageNet classifier fc8 as a
1x1 convolution.
"""

from __future__ import annotations

from torch import nn

from ..normalization import CAFFE_VOC
from .base import FeatureTap, SequentialBackbone, check_geometry

__all__ = ["VGG16", "TORCHVISION_VGG16_KEYS"]

# (block, convolutions, channels)
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
WIDTHS = tuple(width for _, _, width in _BLOCKS)

# torchvision's vgg16 keys: features.N for the convolutions, classifier.N for fc6..fc8.
TORCHVISION_VGG16_KEYS = {
    **{
        f"features.{index}": name
        for index, name in zip(
            (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            (f"conv{b}_{i}" for b, n, _ in _BLOCKS for i in range(1, n + 1)),
            strict=True,
        )
    },
    "classifier.0": "fc6",
    "classifier.3": "fc7",
    "classifier.6": "fc8",
}


class VGG16(SequentialBackbone):
    """VGG16 with taps pool3 (stride 8), pool4 (stride 16) and fc7 (stride 32).

    ``geometry="caffe"`` pads conv1_1 by 100 and fc6 by 0, exactly the reference nets;
    ``"aligned"`` pads conv1_1 by 1 and fc6 by 3 so every stride-s map has ceil(H / s)
    cells and no border is computed twice. ``widths`` (of the five blocks) and
    ``fc_channels`` build slimmer nets with the same geometry (DeepLab-LargeFOV, for one,
    uses 1024-channel fc layers); the defaults are VGG16's.
    """

    classifier_name = "fc8"

    def __init__(
        self,
        *,
        geometry: str = "caffe",
        in_channels: int = 3,
        classifier: bool = False,
        dropout: float = 0.5,
        widths: tuple[int, int, int, int, int] = WIDTHS,
        fc_channels: int = 4096,
    ) -> None:
        super().__init__()
        self.geometry = check_geometry(geometry)
        self.normalization = CAFFE_VOC
        if len(widths) != len(_BLOCKS):
            raise ValueError(f"widths needs one channel count per block, got {widths}")
        channels = in_channels
        for (block, convs, _), width in zip(_BLOCKS, widths, strict=True):
            for i in range(1, convs + 1):
                pad = 100 if (block, i) == (1, 1) and geometry == "caffe" else 1
                self.add_module(f"conv{block}_{i}", nn.Conv2d(channels, width, 3, padding=pad))
                self.add_module(f"relu{block}_{i}", nn.ReLU(inplace=True))
                channels = width
            self.add_module(f"pool{block}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.fc6 = nn.Conv2d(channels, fc_channels, 7, padding=0 if geometry == "caffe" else 3)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        if classifier:
            self.fc8 = nn.Conv2d(fc_channels, 1000, 1)
        self.taps = (
            FeatureTap("pool3", 8, widths[2]),
            FeatureTap("pool4", 16, widths[3]),
            FeatureTap("fc7", 32, fc_channels),
        )
