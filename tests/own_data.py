"""Folder datasets made from real CamVid frames (../shared/data), in each mask format the
folder reader accepts, for the tests of the "own data" path (issue 14).

Not a test module (no ``test_`` prefix): test files import it by name. Frames are shrunk
(nearest neighbour for masks) so that a few training steps take seconds on one thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data.palettes import flat_palette

# ../shared/data relative to the repository root (this file is tests/own_data.py)
CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"
needs_camvid = pytest.mark.skipif(
    not (CAMVID / "train.txt").is_file(), reason=f"real CamVid not found at {CAMVID}"
)

# CamVid's 11 classes and their published colours; raw 11 is Unlabelled (ignored)
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
           "Car", "Pedestrian", "Bicyclist"]  # fmt: skip
COLORS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
          (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
          (0, 128, 192)]  # fmt: skip
IGNORE_COLOR = (0, 0, 0)
ROAD = CLASSES.index("Road")
FORMATS = ("index", "palette", "colour", "binary")


def camvid_frames(count: int, size: tuple[int, int] = (64, 48)) -> list[tuple[str, Image.Image, np.ndarray]]:  # fmt: skip
    """(stem, RGB image, labels with 255 for Unlabelled) of the first ``count`` train frames."""
    frames = []
    for path in sorted((CAMVID / "train").glob("*.png"))[:count]:
        image = Image.open(path).convert("RGB").resize(size, Image.BILINEAR)
        mask = Image.open(CAMVID / "trainannot" / path.name).resize(size, Image.NEAREST)
        labels = np.array(mask)
        labels[labels >= len(CLASSES)] = 255
        frames.append((path.stem, image, labels))
    return frames


def classes_file(mask_format: str) -> str:
    """classes.txt for ``mask_format``: names, with colours and the ignore colour for colour
    masks; two classes for binary road masks."""
    if mask_format == "binary":
        return "other\nroad\n"
    if mask_format == "colour":
        lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in zip(CLASSES, COLORS, strict=True)]
        return "\n".join([*lines, "ignore {} {} {}".format(*IGNORE_COLOR)]) + "\n"
    return "\n".join(CLASSES) + "\n"


def save_mask(path: Path, labels: np.ndarray, mask_format: str) -> None:
    """``labels`` as an index PNG (mode L), a palette PNG (mode P), a colour PNG or a 0/255
    binary PNG (road 255, the rest 0)."""
    if mask_format == "index":
        Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    elif mask_format == "palette":
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette(flat_palette(COLORS))
        image.save(path)
    elif mask_format == "colour":
        table = np.array([*COLORS, *[IGNORE_COLOR] * (256 - len(COLORS))], dtype=np.uint8)
        Image.fromarray(table[labels]).save(path)
    elif mask_format == "binary":
        Image.fromarray(np.where(labels == ROAD, 255, 0).astype(np.uint8), mode="L").save(path)
    else:
        raise ValueError(mask_format)


def make_folder_dataset(root: Path, mask_format: str, count: int = 6) -> Path:
    """root/images/*.jpg, root/masks/*.png in ``mask_format``, root/classes.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(classes_file(mask_format))
    for stem, image, labels in camvid_frames(count):
        image.save(root / "images" / f"{stem}.jpg", quality=90)
        save_mask(root / "masks" / f"{stem}.png", labels, mask_format)
    return root
