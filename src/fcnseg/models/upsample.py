"""In-network upsampling (Section 3.3): bilinear backwards convolution or interpolation.

Both variants come in two alignments that differ by half an input cell: a transposed
convolution with an even kernel 2f (the reference's 64/32, 4/2, 32/16, 16/8) or an odd
kernel 2f - 1 (the reference's AlexNet 63/32); bilinear interpolation with
``align_corners=False`` or ``True``. The head picks, for each upsampling, the alignment
under which its output lines up with the map it is fused with (or with the image) on
whole pixels, so that every crop offset is an integer derived from the geometry.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..surgery import bilinear_init_
from . import geometry as geo

__all__ = ["Upsample", "UPSAMPLE_MODES"]

UPSAMPLE_MODES = ("deconv", "bilinear")


class Upsample(nn.Module):
    """Upsample class scores by ``factor``.

    ``mode="deconv"``: a transposed convolution without bias initialised to bilinear on
    the class diagonal, fixed (as in the reference, lr 0) unless ``learnable``. Its
    weight is ``weight`` (C x C x k x k), the Caffe Deconvolution blob.

    ``mode="bilinear"``: ``F.interpolate`` after replicating one border cell on every side,
    so the image border is covered however the maps fall; no parameters.

    ``odd`` selects the alignment (kernel 2f - 1 / ``align_corners=True``). A factor of 1
    (a skip from a tap at the scores' own resolution, in rarefied nets) is the identity
    when odd, and a half-cell shift when even: the 2 x 2 bilinear kernel, which averages
    neighbouring cells onto the grid between them.
    """

    def __init__(
        self,
        channels: int,
        factor: int,
        *,
        mode: str = "deconv",
        odd: bool = False,
        learnable: bool = False,
    ) -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsampling {mode!r}: choose one of {UPSAMPLE_MODES}")
        self.factor, self.mode, self.odd = factor, mode, odd
        if mode == "deconv" and not self.identity:
            deconv = nn.ConvTranspose2d(
                channels, channels, self.kernel_size, stride=factor, bias=False
            )
            bilinear_init_(deconv)
            self.weight = deconv.weight
            self.weight.requires_grad_(learnable)

    @property
    def identity(self) -> bool:
        return self.factor == 1 and self.odd

    @property
    def kernel_size(self) -> int:
        return 2 * self.factor - 1 if self.odd else 2 * self.factor

    def coord_map(self) -> geo.CoordMap:
        """Where output cells sit in the input's cells."""
        if self.identity:
            return geo.IDENTITY
        if self.mode == "deconv":
            return geo.deconv_map(self.kernel_size, self.factor)
        pad = geo.conv_map(1, padding=1)  # the replicated border cell
        if self.factor == 1:  # 2 x 2 average: y -> y + 1/2
            return pad.compose(geo.CoordMap(Fraction(1), Fraction(1, 2)))
        if self.odd:  # align_corners=True onto (n - 1) f + 1 cells: y -> y / f
            return pad.compose(geo.CoordMap(Fraction(1, self.factor), Fraction(0)))
        # align_corners=False onto n f cells: y -> (y + 1/2) / f - 1/2
        shift = Fraction(1, 2 * self.factor) - Fraction(1, 2)
        return pad.compose(geo.CoordMap(Fraction(1, self.factor), shift))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if self.mode == "deconv":
            diagonal = self._diagonal_kernels()
            if diagonal is not None:  # one k x k kernel per class: C times fewer FLOPs
                return F.conv_transpose2d(x, diagonal, stride=self.factor, groups=x.shape[1])
            return F.conv_transpose2d(x, self.weight, stride=self.factor)
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        h, w = x.shape[-2:]
        if self.factor == 1:
            return F.avg_pool2d(x, 2, stride=1)
        if self.odd:
            size = ((h - 1) * self.factor + 1, (w - 1) * self.factor + 1)
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return F.interpolate(x, size=(h * self.factor, w * self.factor), mode="bilinear")

    def _diagonal_kernels(self) -> torch.Tensor | None:
        """The C x 1 x k x k class-diagonal kernels when every other kernel is zero, else None.

        The reference's fixed bilinear deconvolution maps class c only to class c, so the
        full C x C transposed convolution spends (C - 1) / C of its FLOPs multiplying zeros;
        the depthwise one (groups=C) gives the same sums. A weight that is being learned
        keeps the full form, whose gradient reaches the off-diagonal kernels, and so does a
        traced graph. The check runs once per weight version (in-place edits bump it), not
        once per call.
        """
        weight = self.weight
        if weight.requires_grad and torch.is_grad_enabled():
            return None
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return None  # a traced graph (ONNX export) keeps the full, data-independent form
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cached = getattr(self, "_diagonal_cache", None)
        if cached is None or cached[0] != key:
            channels = weight.shape[0]
            index = torch.arange(channels, device=weight.device)
            with torch.inference_mode(False), torch.no_grad():  # a tensor backward can save
                kernels = weight[index, index].unsqueeze(1).clone()  # C x 1 x k x k
                off = weight.detach().clone()
                off[index, index] = 0
                diagonal = weight.shape[1] == channels and not bool(off.any())
            cached = (key, kernels if diagonal else None)
            self._diagonal_cache = cached
        return cached[1]

    def extra_repr(self) -> str:
        if self.identity:
            return "factor=1 (identity)"
        detail = f"kernel={self.kernel_size}" if self.mode == "deconv" else f"odd={self.odd}"
        return f"factor={self.factor}, mode={self.mode}, {detail}"


def aligned_upsample(
    channels: int,
    factor: int,
    source: geo.CoordMap,
    target: geo.CoordMap,
    *,
    mode: str,
    learnable: bool,
) -> tuple[Upsample, geo.CoordMap]:
    """The upsampling whose output lines up with ``target`` on whole cells.

    Tries the even alignment first (the reference's kernels 64, 32, 16, 4), then the odd
    one (AlexNet's 63); for a factor of 1 the identity first. Returns the module and the
    map of its output on the image.
    """
    for odd in (False, True) if factor > 1 else (True, False):
        up = Upsample(channels, factor, mode=mode, odd=odd, learnable=learnable)
        mapped = source.compose(up.coord_map())
        try:
            geo.crop_offset(mapped, target)
        except ValueError:
            continue
        return up, mapped
    raise ValueError(f"no bilinear upsampling by {factor} aligns {source} with {target}")
