"""AlexNet in the Caffe layout the FCN reference fine-tuned (FCN-AlexNet, Table 1).

Krizhevsky et al. (2012) as the BVLC Caffe models define it: conv1 11x11 stride 4 (96),
conv2 5x5 (256), conv3 3x3 (384), conv4 3x3 (384), conv5 3x3 (256), with conv2, conv4
and conv5 split into two groups (the original two-GPU model), local response
normalisation after the first two blocks, 3x3 stride-2 max pools rounding up (Caffe's
pooling arithmetic), then the fully connected layers convolutionalized: fc6 a 6x6
convolution to 4096 channels, fc7 a 1x1 convolution, each followed by ReLU and
element-wise dropout 0.5, and the ImageNet classifier fc8 as a 1x1 convolution.

The layer order is the reference's voc-fcn-alexnet/net.py, which is CaffeNet
(bvlc_reference_caffenet): each pool comes before its normalisation (conv1, relu1,
pool1, norm1, ...). bvlc_alexnet normalises before pooling; the two models have the
same layer names and parameter shapes, so either's weights load here by name.
"""

from __future__ import annotations

from torch import nn

from ..normalization import CAFFE_VOC
from .base import FeatureTap, SequentialBackbone, check_geometry

__all__ = ["AlexNet", "caffe_lrn", "caffe_max_pool"]


def caffe_lrn() -> nn.LocalResponseNorm:
    """Caffe's ACROSS_CHANNELS LRN with local_size 5, alpha 1e-4, beta 0.75, k 1.

    Both Caffe and ``nn.LocalResponseNorm`` divide by (k + alpha / n * sum of squares over
    the n neighbouring channels) ** beta, zero-padding the channel ends: alpha is scaled
    by the window size n in both, so Caffe's alpha passes through unchanged.
    """
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


def caffe_max_pool() -> nn.MaxPool2d:
    """3x3 stride-2 max pooling rounding the output size up, as Caffe does."""
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


class AlexNet(SequentialBackbone):
    """AlexNet with taps pool1 (stride 8), pool2 (stride 16) and fc7 (stride 32).

    ``geometry="caffe"`` pads conv1 by 100 and fc6 by 0, exactly the reference
    FCN-AlexNet: fc7 cell j sits at x = 32 j + 13, so its 63x63 stride-32 upscore is
    cropped at 18. ``"aligned"`` pads conv1 by 9 and fc6 by 3. Every resampling layer
    here has an odd kernel, so cells sit on whole pixels: pool1 cell j at x = 8 j,
    pool2 at 16 j + 8, fc7 at 32 j + 8, the first cell of each on the image. With
    A = ceil(H / 4) + 2 conv1 rows, the taps have floor(A / 2), floor(A / 4) and
    floor(A / 8) + 1 rows: ceil(H / s), or one more for pool1 and fc7 and one fewer for
    pool2, and their cells cover the image to within 4 pixels of its far edge (pool2;
    pool1 and fc7 cover it all). Pad 9 balances the strides: pad 5 would leave up to
    4 px before the first and 8 px after the last stride-16 cell, pad 13 would centre
    the first pool1 cell off the image and add up to two. In both geometries odd
    upsampling kernels keep each tap a whole number of cells from the next (3/2) and
    fc7 whole pixels from the image (63/32); even ones (4/2, 64/32) land half a cell off.
    """

    classifier_name = "fc8"

    def __init__(
        self,
        *,
        geometry: str = "caffe",
        in_channels: int = 3,
        classifier: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.geometry = check_geometry(geometry)
        self.normalization = CAFFE_VOC
        caffe = geometry == "caffe"
        self.conv1 = nn.Conv2d(in_channels, 96, 11, stride=4, padding=100 if caffe else 9)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = caffe_max_pool()
        self.norm1 = caffe_lrn()
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = caffe_max_pool()
        self.norm2 = caffe_lrn()
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.relu4 = nn.ReLU(inplace=True)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.relu5 = nn.ReLU(inplace=True)
        self.pool5 = caffe_max_pool()
        self.fc6 = nn.Conv2d(256, 4096, 6, padding=0 if caffe else 3)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        if classifier:
            self.fc8 = nn.Conv2d(4096, 1000, 1)
        self.taps = (
            FeatureTap("pool1", 8, 96),
            FeatureTap("pool2", 16, 256),
            FeatureTap("fc7", 32, 4096),
        )
