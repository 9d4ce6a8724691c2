"""Layer geometry: where each cell of a feature map sits on the input image.

Caffe's ``coord_map`` (the FCN reference's way to place its Crop layers) treats every
layer as an affine map from its output coordinates to its input coordinates. A
convolution or pooling with kernel k, stride s, padding p and dilation d puts the centre
of output cell i at input coordinate ``s * i + d * (k - 1) / 2 - p``; a transposed
convolution is the inverse map. Composing the maps of a chain of layers tells where a
feature map's cells lie on the image, and comparing two such maps gives the offset at
which one must be cropped to line up with the other. Exact rational arithmetic keeps the
half-pixel shifts of even kernels exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

__all__ = [
    "CoordMap",
    "IDENTITY",
    "conv_map",
    "deconv_map",
    "module_map",
    "trace",
    "crop_offset",
]


@dataclass(frozen=True)
class CoordMap:
    """``x_in = scale * x_out + shift``: an output cell's centre on the input."""

    scale: Fraction
    shift: Fraction

    def compose(self, inner: CoordMap) -> CoordMap:
        """The map of ``inner`` applied after this one in the forward pass.

        ``self`` maps a layer's output to the image; ``inner`` maps the next layer's
        output to that layer's output; the result maps the next layer's output to the
        image.
        """
        return CoordMap(self.scale * inner.scale, self.scale * inner.shift + self.shift)

    def __repr__(self) -> str:
        return f"CoordMap(x_in = {self.scale} * x_out + {self.shift})"


IDENTITY = CoordMap(Fraction(1), Fraction(0))


def _pair_first(value: int | tuple[int, ...]) -> int:
    """Geometry is tracked along one axis; every layer here is square."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"non-square layer geometry {value} is not supported")
        return int(value[0])
    return int(value)


def conv_map(kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> CoordMap:
    """Convolution or pooling: output cell i is centred on ``s*i + d*(k-1)/2 - p``."""
    return CoordMap(Fraction(stride), Fraction(dilation * (kernel - 1), 2) - padding)


def deconv_map(kernel: int, stride: int, padding: int = 0) -> CoordMap:
    """Transposed convolution: the inverse of the convolution with the same parameters."""
    forward = conv_map(kernel, stride, padding)
    return CoordMap(1 / forward.scale, -forward.shift / forward.scale)


def module_map(module: nn.Module) -> CoordMap:
    """The map of one module; modules that do not resample (ReLU, BN, LRN) are identity.

    A module with a ``coord_map()`` method (an Inception module, whose branches must agree)
    gives its own; an ``nn.Sequential`` is the trace of its children.
    """
    own = getattr(module, "coord_map", None)
    if callable(own):
        return own()
    if isinstance(module, nn.Sequential):
        return trace(module)
    if isinstance(module, nn.ConvTranspose2d):
        return deconv_map(
            _pair_first(module.kernel_size), _pair_first(module.stride), _pair_first(module.padding)
        )
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        dilation = _pair_first(getattr(module, "dilation", 1))
        padding = module.padding
        if isinstance(padding, str):
            raise ValueError(f"string padding {padding!r} has no fixed geometry")
        return conv_map(
            _pair_first(module.kernel_size),
            _pair_first(module.stride),
            _pair_first(padding),
            dilation,
        )
    return IDENTITY


def trace(modules: Iterable[nn.Module], start: CoordMap = IDENTITY) -> CoordMap:
    """Compose the maps of modules applied one after another, from ``start``."""
    result = start
    for module in modules:
        result = result.compose(module_map(module))
    return result


def crop_offset(blob: CoordMap, reference: CoordMap) -> int:
    """Index in ``blob`` of the cell that lines up with the reference's cell 0.

    Both maps must have the same scale (same stride). The FCN reference's Crop layers
    take ``blob[offset : offset + len(reference)]``; a negative offset means the reference
    starts before the blob instead.
    """
    if blob.scale != reference.scale:
        raise ValueError(f"cannot align maps of different stride: {blob} vs {reference}")
    offset = (reference.shift - blob.shift) / blob.scale
    if offset.denominator != 1:
        raise ValueError(f"maps {blob} and {reference} are misaligned by a fraction of a cell")
    return int(offset)
