"""Class colours: the PASCAL VOC palette generator, the published CamVid and Cityscapes
colours, and the mapping of colour masks back to class indices.

VOC stores its labels as palette PNGs whose palette is a fixed bit-interleaving of the index,
so the same generator gives readable colours for any dataset that publishes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = [
    "Color",
    "voc_palette",
    "default_palette",
    "DISTINCT_COLORS",
    "CAMVID_PALETTE",
    "CITYSCAPES_PALETTE",
    "VOC_VOID_COLOR",
    "flat_palette",
    "colorize",
    "colors_to_indices",
]

Color = tuple[int, int, int]

# The colour VOC draws its 255 (void) border with in colour renderings of the labels.
VOC_VOID_COLOR: Color = (224, 224, 192)

# SegNet's palette11.png (CamVid, 11 classes in label order Sky .. Bicyclist).
CAMVID_PALETTE: list[Color] = [
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
]

# The Cityscapes colours of the 19 train ids (cityscapesScripts labels.py).
CITYSCAPES_PALETTE: list[Color] = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
]


def voc_palette(num_colors: int = 256) -> list[Color]:
    """The VOC devkit palette: bits 0, 1, 2 of the index go to the top bits of R, G, B."""
    colors = []
    for index in range(num_colors):
        r = g = b = 0
        code = index
        for bit in range(7, -1, -1):
            r |= (code & 1) << bit
            g |= ((code >> 1) & 1) << bit
            b |= ((code >> 2) & 1) << bit
            code >>= 3
        colors.append((r, g, b))
    return colors


# Colours that stay apart from each other and from the colours of photos (the 20 of
# matplotlib's tab20, strong ones first): the default of a dataset that names its classes
# but gives no colours. VOC's palette starts black, dark red, dark green: class 0 black on
# a photo reads as a hole, and CamVid's Car came out dark maroon.
DISTINCT_COLORS: list[Color] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip
# Class names that mean "nothing in particular": drawn black, as VOC draws its background.
BACKGROUND_NAMES = {"background", "_background_", "bg", "void", "unlabeled", "unlabelled", "none"}


def default_palette(classes: Sequence[str]) -> list[Color]:
    """Colours for ``classes`` when their dataset gives none: black for a background or
    void class, distinct colours for the others (``DISTINCT_COLORS``, then VOC's colours
    not used yet)."""
    spare = iter([*DISTINCT_COLORS, *voc_palette(256)[1:]])
    used: set[Color] = set()
    colors = []
    for name in classes:
        if name.strip().lower() in BACKGROUND_NAMES:
            colors.append((0, 0, 0))
            continue
        color = next(c for c in spare if c not in used and c != (0, 0, 0))
        used.add(color)
        colors.append(color)
    return colors


def flat_palette(
    palette: Sequence[Color], ignore_index: int = 255, ignore_color: Color = VOC_VOID_COLOR
) -> list[int]:
    """A 768-entry list for ``PIL.Image.putpalette``; ``ignore_index`` gets ``ignore_color``
    (VOC's void colour unless the dataset declares its own)."""
    full = list(palette) + voc_palette(256)[len(palette) :]
    full[ignore_index] = tuple(ignore_color)
    return [channel for color in full for channel in color]


def colorize(
    label: np.ndarray,
    palette: Sequence[Color],
    ignore_index: int = 255,
    ignore_color: Color = VOC_VOID_COLOR,
) -> np.ndarray:
    """An H x W x 3 uint8 rendering of an index map (values past the palette shown as void,
    ignored pixels in ``ignore_color``)."""
    table = flat_palette(palette, ignore_index, ignore_color)
    table = np.array(table, dtype=np.uint8).reshape(256, 3)
    index = np.asarray(label)
    index = np.where((index >= 0) & (index < 256), index, ignore_index).astype(np.intp)
    return table[index]


def _codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colors_to_indices(
    rgb: np.ndarray, colors: Sequence[Color], values: Sequence[int], path: Path | str
) -> np.ndarray:
    """Map an H x W x 3 colour mask to indices: ``colors[k]`` becomes ``values[k]``.

    A colour that is not listed is an error naming the file, the colour and how many pixels
    carry it, because silently mapping it to void would hide a mislabelled mask.
    """
    keys = _codes(np.asarray(colors, dtype=np.int32).reshape(-1, 3))
    order = np.argsort(keys)
    keys, targets = keys[order], np.asarray(values, dtype=np.int64)[order]
    codes = _codes(rgb[..., :3])
    position = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[position] == codes
    if not known.all():
        bad = int(codes[~known][0])
        color = ((bad >> 16) & 255, (bad >> 8) & 255, bad & 255)
        count = int((codes == bad).sum())
        raise DatasetError(
            f"{path}: colour {color} ({count} pixels) is not in the class palette: "
            "add it to the classes file or fix the mask"
        )
    return targets[position]
