"""Sliding-window inference: scores for images too large to run whole, tile by tile.

An FCN takes an input of any size, but its activations grow with the pixel count
(benchmarks/scaling.py measures how). Scoring the image in overlapping tiles bounds that
memory by the tile size. Each tile sees zeros past its own border where the whole image
has pixels, so scores near tile borders differ from the whole-image ones; averaging the
scores of the tiles that cover a pixel damps this, and a wider overlap damps it more
(scaling.py reports the argmax agreement with the whole image).

    tiling = Tiling.of(512)                       # 512 x 512 tiles, a third overlapping
    scores = sliding_window(model, image, tiling)  # N x C x H x W, as model(image) gives
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Tiling", "tile_starts", "sliding_window", "check_tile_size"]

Batch = torch.Tensor | Mapping[str, torch.Tensor]
Scores = torch.Tensor | dict[str, torch.Tensor]


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap in input pixels, as (height, width)."""

    size: tuple[int, int]
    overlap: tuple[int, int]

    def __post_init__(self) -> None:
        for side, overlap in zip(self.size, self.overlap, strict=True):
            if side < 1 or not 0 <= overlap < side:
                raise ValueError(
                    f"tile {self.size} with overlap {self.overlap}: a tile side must be "
                    "at least 1 and the overlap between 0 and the side less 1"
                )

    @classmethod
    def of(cls, size: int | tuple[int, int], overlap: int | tuple[int, int] | None = None):
        """Tiles of ``size`` (a side, or height and width) overlapping by ``overlap``
        pixels; by default by a third of the tile, as is usual for FCN-style networks."""
        size = (size, size) if isinstance(size, int) else tuple(size)
        if overlap is None:
            overlap = tuple(side // 3 for side in size)
        elif isinstance(overlap, int):
            overlap = (overlap, overlap)
        return cls(size=size, overlap=tuple(overlap))

    @property
    def stride(self) -> tuple[int, int]:
        return self.size[0] - self.overlap[0], self.size[1] - self.overlap[1]


def check_tile_size(tiling: Tiling, stride: int) -> None:
    """Refuse tiles with a side below ``stride``, the stride of the coarsest features a net
    scores (``ModelSpec.output_stride``: 32 for the paper's nets, 16 or 8 rarefied).

    Every label is scored from those features (score_fr; the skips only refine them). A
    tile narrower than one of their cells gives them less than a cell of image and the
    rest zero padding, and changes most labels without a word. The floor is that one cell
    (four times FCN-8s's score stride of 8), not more: past it a wider tile only keeps more
    context (scaling.py measures the agreement), a trade against memory the user makes.
    """
    if min(tiling.size) < stride:
        height, width = tiling.size
        raise ValueError(
            f"tile {height}x{width} is smaller than the {stride}-pixel stride of the model's "
            f"coarsest features, which every label is scored from: use tiles of at least "
            f"{stride} pixels (--tile {stride} or more; larger tiles keep more context)"
        )


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``length``, ``stride`` apart;
    the last one ends at the border. A side no longer than a tile is one tile."""
    if not 1 <= stride <= tile:
        raise ValueError(f"tile stride {stride} leaves gaps or stalls: use 1 to {tile}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def sliding_window(forward: Callable[[Batch], Scores], batch: Batch, tiling: Tiling) -> Scores:
    """``forward(batch)`` computed tile by tile, overlapping scores averaged.

    ``batch``: N x C x H x W, or a dict of such tensors by input (all of one height and
    width); ``forward`` returns scores at the input's size, a tensor or a dict by task.
    An image no larger than a tile runs whole. The sums are kept in float32 at full size:
    the memory the scores themselves take, whatever the tile.
    """
    tensors = list(batch.values()) if isinstance(batch, Mapping) else [batch]
    height, width = tensors[0].shape[-2:]
    rows = tile_starts(height, tiling.size[0], tiling.stride[0])
    cols = tile_starts(width, tiling.size[1], tiling.stride[1])
    if len(rows) == len(cols) == 1:
        return forward(batch)
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros(height, width, device=tensors[0].device)
    by_task = False
    for top in rows:
        for left in cols:
            window = (slice(top, top + tiling.size[0]), slice(left, left + tiling.size[1]))
            scores = forward(_crop(batch, window))
            by_task = isinstance(scores, Mapping)
            for key, tile_scores in (scores if by_task else {"": scores}).items():
                if key not in sums:
                    sums[key] = tile_scores.new_zeros(
                        (*tile_scores.shape[:2], height, width), dtype=torch.float32
                    )
                sums[key][..., window[0], window[1]] += tile_scores.float()
            count[window] += 1
    averaged = {key: total.div_(count) for key, total in sums.items()}
    return averaged if by_task else averaged[""]


def _crop(batch: Batch, window: tuple[slice, slice]) -> Batch:
    if isinstance(batch, Mapping):
        return {name: tensor[..., window[0], window[1]] for name, tensor in batch.items()}
    return batch[..., window[0], window[1]]
