"""Dense output without upsampling (Section 3.2): shift-and-stitch and filter rarefaction.

A net of output stride f gives one prediction per f x f block of pixels. Two tricks give
denser output from the same weights:

- shift-and-stitch (OverFeat): run the net on f^2 copies of the input shifted by
  (dx, dy) in {0..f-1}^2 and interlace the coarse outputs, so every output cell sits at
  the centre of its receptive field;
- filter rarefaction: set a layer's stride s to 1 and dilate every later filter by s
  (f'_ij = f_{i/s, j/s} when s divides i and j, else 0), compounded layer after layer.

The paper states that rarefying every subsampling layer reproduces shift-and-stitch
exactly. Here both work on any backbone or coarse scorer, and the tests check the claim.

When the equality is exact, cell for cell:

- The shifted copies are ``x[..., dy*step:, dx*step:]`` (shift = crop top/left) with
  ``step = stride // factor``; every copy ends where the image ends. Stitched cell
  (i, j) then reads the input window that rarefied cell (i, j) reads, and the two lie at
  the same image position (the rarefied net's coordinate map keeps the original's
  offset).
- A net without zero padding (valid convolutions and pooling; max pooling may round up,
  Caffe's ceil mode): the outputs agree on every cell the stitched output has. A pool
  whose stride is reduced gets -inf padding on the right so that it keeps the windows
  that ceil mode lets run over the edge; the rarefied output can then be a few cells
  longer than the stitched one, never shorter.
- A net with zero padding (VGG16's pad 1 convolutions, the caffe geometry's pad 100):
  a copy cropped by (dy, dx) sees zeros at its own top/left border, where the full image
  has pixels, and every padded layer repeats that at its own border. The outputs agree
  on cells whose receptive field lies inside every copy: from ``(factor - 1) * step`` to
  the image's end on each axis. The tests check exactly that region, not empty.
- Batching the copies (``batch_size > 1``) crops them to a common extent, which moves
  the right/bottom border of all but the last copies inwards by up to
  ``(factor - 1) * step`` pixels: the same rule then applies on that side too.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .models.backbones.base import Backbone
from .models.fcn import FCN

__all__ = ["shift_and_stitch", "rarefy", "CoarseScores", "output_stride_of"]

_RESAMPLING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_PROBE = (64, 64 + 256)  # two input sizes 256 apart: exact stride ratios up to 256


class CoarseScores(nn.Module):
    """An FCN without its upsampling: ``score_fr`` on the backbone's last tap.

    FCN-32s minus ``upscore`` is the coarse net that shift-and-stitch and rarefaction
    densify (Section 3.2). The modules are shared with the FCN, not copied.
    """

    def __init__(self, fcn: FCN) -> None:
        super().__init__()
        self.backbone, self.score_fr = fcn.backbone, fcn.head.score_fr
        self.training = fcn.training

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_fr(self.backbone(x)[self.backbone.taps[-1].name])


def _final(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """A backbone returns its taps: the densified output is the last (stride-32) one."""
    return list(output.values())[-1] if isinstance(output, dict) else output


def _in_channels(net: nn.Module) -> int:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{type(net).__name__} has no convolution to densify")
    return first.in_channels


def _probe(net: nn.Module, hooks: dict | None = None) -> list[tuple[int, dict[nn.Module, int]]]:
    """Output height and every resampling module's input height, at the two probe sizes."""
    results = []
    modes = {module: module.training for module in net.modules()}  # may be mixed
    net.eval()
    parameter = next(net.parameters())
    try:
        for size in _PROBE:
            heights: dict[nn.Module, int] = {}

            def record(module, args, heights=heights):  # first call: the module's own input
                heights.setdefault(module, args[0].shape[-2])

            handles = [
                module.register_forward_pre_hook(record)
                for module in net.modules()
                if isinstance(module, _RESAMPLING)
            ]
            try:
                x = torch.zeros(1, _in_channels(net), size, size, dtype=parameter.dtype)
                with torch.no_grad():
                    out = _final(net(x.to(parameter.device)))
            finally:
                for handle in handles:
                    handle.remove()
            results.append((out.shape[-2], heights))
    finally:
        for module, training in modes.items():
            module.training = training
    return results


def _stride_from(low: int, high: int) -> int:
    cells = high - low
    span = _PROBE[1] - _PROBE[0]
    if cells <= 0 or span % cells:
        raise ValueError("could not measure the net's stride: its output does not grow with input")
    return span // cells


def output_stride_of(net: nn.Module) -> int:
    """The output stride, measured from the output sizes at two input sizes."""
    stride = getattr(net, "output_stride", None)
    if isinstance(stride, int):
        return stride
    (low, _), (high, _) = _probe(net)
    return _stride_from(low, high)


def _as_int(value: int | tuple[int, ...]) -> int:
    return int(value[0]) if isinstance(value, tuple) else int(value)


class _RarefiedMaxPool(nn.MaxPool2d):
    """A dilated max pool with explicit -inf padding.

    PyTorch refuses a padding over half the (undilated) kernel, which a rarefied pool
    with padding needs; and a pool that rounded up (ceil mode) gets ``right`` more cells
    of -inf so it keeps the windows that ran over the edge. ``padding`` still states the
    left padding, for the geometry.
    """

    def __init__(self, pool: nn.MaxPool2d, right: int) -> None:
        super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.dilation)
        self.right = right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = _as_int(self.padding)
        x = F.pad(x, (left, left + self.right, left, left + self.right), value=-math.inf)
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation)


def _rarefy_module(module: nn.Module, stride_in: int, output_stride: int) -> nn.Module:
    """The module with its stride cut to fit ``output_stride`` and its filter rarefied."""
    stride = _as_int(module.stride)
    stride_out = stride_in * stride
    new_in, new_out = min(stride_in, output_stride), min(stride_out, output_stride)
    dilation = stride_in // new_in  # the subsampling removed before this layer
    new_stride = new_out // new_in
    if dilation == 1 and new_stride == stride:
        return module
    if isinstance(module, nn.AvgPool2d):
        if dilation > 1 and _as_int(module.kernel_size) > 1:
            raise ValueError(
                "average pooling cannot be rarefied (PyTorch has no dilated AvgPool2d)"
            )
        module.stride = new_stride
        return module
    if isinstance(module.padding, str):
        raise ValueError(f"{module} pads by {module.padding!r}: give it a number to rarefy it")
    new_dilation = _as_int(module.dilation) * dilation
    new_padding = _as_int(module.padding) * dilation  # keeps the filter centred
    if isinstance(module, nn.Conv2d):
        module.stride, module.dilation = (new_stride,) * 2, (new_dilation,) * 2
        module.padding = (new_padding,) * 2
        module._reversed_padding_repeated_twice = [new_padding] * 4  # used by padding modes
        return module
    module.stride, module.dilation, module.padding = new_stride, new_dilation, new_padding
    right = (_as_int(module.kernel_size) - 1) * new_dilation if module.ceil_mode else 0
    return _RarefiedMaxPool(module, right if new_stride < stride else 0)


def _replace(net: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in net.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def rarefy(net: nn.Module, output_stride: int, *, inplace: bool = False) -> nn.Module:
    """A net with the same weights and output stride ``output_stride``.

    Every convolution or pooling whose input, in the original net, is subsampled more
    than ``output_stride`` is dilated by the subsampling removed before it (its filter
    rarefied), and the strides that would take the output past ``output_stride`` become
    1 (or what is left of them). The strides of the layers are measured by running the
    net at two input sizes, so this works on any backbone, residual or branched, whose
    resampling layers are ``Conv2d`` and ``MaxPool2d`` modules. A ``Backbone``'s taps
    report their new strides, and its ``coord_map`` follows the new layers.
    """
    if isinstance(net, FCN):
        raise TypeError(
            "an FCN upsamples its scores already: rarefy its CoarseScores, or build it with "
            "build_model(..., output_stride=8)"
        )
    if output_stride < 1 or output_stride & (output_stride - 1):
        raise ValueError(f"output_stride must be a power of two, got {output_stride}")
    net = net if inplace else copy.deepcopy(net)
    (_, low), (_, high) = _probe(net)
    for module in list(low):
        stride_in = _stride_from(low[module], high[module])
        rarefied = _rarefy_module(module, stride_in, output_stride)
        if rarefied is not module:
            _replace(net, module, rarefied)
    if isinstance(net, Backbone):
        net.taps = tuple(
            dataclasses.replace(tap, stride=min(tap.stride, output_stride)) for tap in net.taps
        )
    return net


def _shifted_copies(x: torch.Tensor, factor: int, step: int, common: bool):
    """The copies ``x[..., dy*step:, dx*step:]``, optionally cropped to their common extent."""
    extent = (x.shape[-2] - (factor - 1) * step, x.shape[-1] - (factor - 1) * step)
    if min(extent) < 1:
        raise ValueError(f"input {tuple(x.shape[-2:])} is too small for {factor}x{factor} shifts")
    for dy in range(factor):
        for dx in range(factor):
            copy_ = x[..., dy * step :, dx * step :]
            yield copy_[..., : extent[0], : extent[1]] if common else copy_


def _run_copies(net: nn.Module, copies: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    if batch_size == 1:
        return [_final(net(c)) for c in copies]
    outputs = [
        _final(net(torch.cat(copies[i : i + batch_size])))
        for i in range(0, len(copies), batch_size)
    ]
    return list(torch.cat(outputs).split(copies[0].shape[0]))


def shift_and_stitch(
    net: nn.Module, x: torch.Tensor, factor: int, *, batch_size: int = 1
) -> torch.Tensor:
    """Output ``factor`` times denser than ``net``'s, by shifted copies and interlacing.

    ``net`` returns a coarse map of output stride f (a tensor, or a backbone's taps, of
    which the last is used); ``factor`` divides f (``factor < f`` densifies partly). Copy
    (dy, dx) is ``x[..., dy*step:, dx*step:]`` with ``step = f // factor``, and its cell
    (i, j) lands on output cell (factor i + dy, factor j + dx): the prediction for the
    window centred on step (i, j) + the net's offset. Returns N x C x H' x W', the cells
    every copy defines.

    ``batch_size`` copies run at once. The copies differ in size, so batching crops them
    to their common extent (the last (factor - 1) step rows and columns of some copies
    are dropped): cells whose windows reach that far right or down change (see the module
    docstring); with the default 1 every copy keeps its full extent.
    """
    if isinstance(net, FCN):
        raise TypeError("an FCN upsamples its scores already: pass CoarseScores(model)")
    stride = output_stride_of(net)
    if factor < 1 or stride % factor:
        raise ValueError(f"factor must divide the net's output stride {stride}, got {factor}")
    copies = list(_shifted_copies(x, factor, stride // factor, common=batch_size > 1))
    coarse = _run_copies(net, copies, batch_size)
    height = min(
        dy + factor * c.shape[-2] for (dy, _), c in zip(_grid(factor), coarse, strict=True)
    )
    width = min(dx + factor * c.shape[-1] for (_, dx), c in zip(_grid(factor), coarse, strict=True))
    dense = coarse[0].new_empty(*coarse[0].shape[:2], height, width)
    for (dy, dx), cells in zip(_grid(factor), coarse, strict=True):
        rows, cols = len(range(dy, height, factor)), len(range(dx, width, factor))
        dense[..., dy::factor, dx::factor] = cells[..., :rows, :cols]
    return dense


def _grid(factor: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(factor) for dx in range(factor)]
