"""COCO-style annotations (``instances_*.json``) read as class masks.

The format annotation tools export (CVAT, Label Studio, Roboflow) and COCO itself use: one
JSON file with ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories``
(``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``, ``segmentation``,
``area``, ``iscrowd``). A segmentation is a list of polygons ``[x1, y1, x2, y2, ...]`` in
pixel coordinates, or a run-length encoding (``{"size": [h, w], "counts": ...}``, counts as
a list or COCO's compressed string), both in column-major order as pycocotools writes them.

Class 0 is ``background`` (pixels no annotation covers); the categories follow in the order
of their ids (``classes`` names them). Objects are painted largest first, so a smaller
object on a larger one stays visible; crowd regions (``iscrowd: 1``) are ignored (255), as
they mark many objects at once. Images without annotations are all background.

::

    root/annotations/instances_<split>.json + root/<split>/ (COCO: split = "train2017")
    root/<split>/_annotations.coco.json, images beside it (Roboflow's export)
    root/annotations/instances_default.json + root/images/ (CVAT's export, split = "default")

or name both with ``annotation_file`` and ``image_dir`` (relative to ``root``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    IGNORE_INDEX,
    DatasetError,
    Sample,
    SegmentationDataset,
    register_dataset,
    require_dir,
)
from .palettes import default_palette

__all__ = ["CocoSegmentation", "rasterize", "object_mask", "polygon_mask", "decode_rle"]

BACKGROUND = "background"


def _annotation_candidates(split: str) -> list[str]:
    return [
        f"annotations/instances_{split}.json",
        f"{split}/_annotations.coco.json",
        f"annotations/{split}.json",
    ]


def _image_candidates(split: str, annotation_folder: str) -> list[str]:
    return [split, f"images/{split}", "images", annotation_folder]


@register_dataset("coco")
class CocoSegmentation(SegmentationDataset):
    """Class masks from a COCO-style annotation file (see the module docstring)."""

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transforms: Callable | None = None,
        *,
        annotation_file: str | None = None,
        image_dir: str | None = None,
    ) -> None:
        self.root = require_dir(root, "dataset root", "point root at the folder of the COCO export")
        self.annotation_file = self._find(annotation_file, _annotation_candidates(split), split)
        content = _read_json(self.annotation_file)
        categories = sorted(_field(content, "categories", self.annotation_file), key=lambda c: c["id"])  # fmt: skip
        self.category_index = {c["id"]: index + 1 for index, c in enumerate(categories)}
        self.classes = (BACKGROUND, *(str(c["name"]) for c in categories))
        self.palette = default_palette(self.classes)
        folder = self.annotation_file.parent.relative_to(self.root).as_posix()
        images = self._image_folder(image_dir, _image_candidates(split, folder))
        self.images = {image["id"]: image for image in _field(content, "images", self.annotation_file)}  # fmt: skip
        self.objects: dict[Any, list[dict]] = {key: [] for key in self.images}
        for annotation in _field(content, "annotations", self.annotation_file):
            self._add(annotation)
        self._image_of: dict[str, dict] = {}
        for image in self.images.values():
            name = Path(str(image["file_name"])).with_suffix("").as_posix()
            if name in self._image_of:
                raise DatasetError(f"{self.annotation_file} lists the image {name} twice: keep one")  # fmt: skip
            self._image_of[name] = image
        if not self._image_of:
            raise DatasetError(f"{self.annotation_file} lists no images: is it the right file?")
        samples = [
            Sample(name, images / image["file_name"], self.annotation_file)
            for name, image in self._image_of.items()
        ]
        super().__init__(samples, transforms)

    def _find(self, given: str | None, candidates: Sequence[str], split: str) -> Path:
        if given is not None:
            path = self.root / given
            if not path.is_file():
                raise DatasetError(f"annotation file {path} not found: check annotation_file")
            return path
        for candidate in candidates:
            if (self.root / candidate).is_file():
                return self.root / candidate
        tried = ", ".join(candidates)
        raise DatasetError(
            f"{self.root}: no COCO annotation file for split {split!r} (looked for {tried}): "
            "name it with annotation_file = 'path/from/root.json'"
        )

    def _image_folder(self, given: str | None, candidates: Sequence[str]) -> Path:
        if given is not None:
            return require_dir(self.root / given, "image folder", "check image_dir")
        for candidate in candidates:
            if (self.root / candidate).is_dir():
                return self.root / candidate
        raise DatasetError(
            f"{self.root}: no image folder (looked for {', '.join(candidates)}): name it with "
            "image_dir = 'folder/from/root'"
        )

    def _add(self, annotation: dict) -> None:
        where = f"{self.annotation_file}: annotation {annotation.get('id', '?')}"
        if annotation.get("image_id") not in self.objects:
            raise DatasetError(f"{where} refers to image {annotation.get('image_id')!r}, which the file does not list")  # fmt: skip
        if annotation.get("category_id") not in self.category_index:
            raise DatasetError(f"{where} has category {annotation.get('category_id')!r}, which the file does not list")  # fmt: skip
        self.objects[annotation["image_id"]].append(annotation)

    def read_label(self, sample: Sample) -> np.ndarray:
        image = self._image_of[sample.id]
        return rasterize(
            self.objects[image["id"]],
            int(image["height"]),
            int(image["width"]),
            self.category_index,
            where=f"{self.annotation_file} (image {image['file_name']})",
        )


def _read_json(path: Path) -> dict:
    try:
        with path.open(encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"annotation file {path} cannot be read as JSON ({error}): re-export it") from None  # fmt: skip
    if not isinstance(content, dict):
        raise DatasetError(f"annotation file {path} is not a COCO file (no top-level object)")
    return content


def _field(content: dict, name: str, path: Path) -> list:
    value = content.get(name)
    if not isinstance(value, list):
        raise DatasetError(f"annotation file {path} has no {name!r} list: is it a COCO instances file?")  # fmt: skip
    return value


def rasterize(
    annotations: Sequence[dict],
    height: int,
    width: int,
    category_index: dict[Any, int],
    *,
    where: str = "annotation",
) -> np.ndarray:
    """The H x W uint8 class mask of one image's annotations: 0 background, each object's
    class where it lies (largest first, so smaller objects stay on top), 255 under crowds."""
    mask = np.zeros((height, width), dtype=np.uint8)
    ordered = sorted(annotations, key=lambda a: (bool(a.get("iscrowd")), -float(a.get("area", 0))))  # fmt: skip
    for annotation in ordered:
        region = object_mask(annotation.get("segmentation"), height, width, where)
        value = IGNORE_INDEX if annotation.get("iscrowd") else category_index[annotation["category_id"]]  # fmt: skip
        mask[region] = value
    return mask


def object_mask(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """H x W bool: the pixels of one segmentation (polygons or RLE)."""
    if isinstance(segmentation, list):
        region = np.zeros((height, width), dtype=bool)
        for polygon in segmentation:
            if len(polygon) >= 6:  # three points at least
                region |= polygon_mask(polygon, height, width)
        return region
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size", [height, width])
        if list(size) != [height, width]:
            raise DatasetError(f"{where}: an RLE of size {size} on an image of {height}x{width}")  # fmt: skip
        return decode_rle(segmentation["counts"], height, width, where)
    raise DatasetError(f"{where}: segmentation {str(segmentation)[:60]} is neither polygons nor RLE")  # fmt: skip


def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """H x W bool: the pixels whose centre lies inside ``[x1, y1, x2, y2, ...]`` (even-odd
    rule), pixel (row i, column j) covering [j, j+1) x [i, i+1). The rule pycocotools'
    rasteriser comes to: on 50 star-shaped polygons 1% of pixels differed (edge pixels
    whose centre lies on the line), against 7% for PIL's polygon fill."""
    xs = np.asarray(polygon[0::2], dtype=np.float64)
    ys = np.asarray(polygon[1::2], dtype=np.float64)
    region = np.zeros((height, width), dtype=bool)
    top, bottom = max(int(np.floor(ys.min())), 0), min(int(np.ceil(ys.max())) + 1, height)
    left, right = max(int(np.floor(xs.min())), 0), min(int(np.ceil(xs.max())) + 1, width)
    if top >= bottom or left >= right:
        return region
    centre_y = np.arange(top, bottom)[:, None] + 0.5
    centre_x = np.arange(left, right)[None, :] + 0.5
    inside = np.zeros((bottom - top, right - left), dtype=bool)
    for x0, y0, x1, y1 in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1), strict=True):
        if y0 == y1:
            continue  # a horizontal edge crosses no row's centre line
        crosses = (y0 > centre_y) != (y1 > centre_y)
        at = x0 + (centre_y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (centre_x < at)
    region[top:bottom, left:right] = inside
    return region


def decode_rle(counts: list[int] | str, height: int, width: int, where: str = "RLE") -> np.ndarray:
    """H x W bool from COCO run lengths (a list, or the compressed string pycocotools writes),
    alternating runs of 0s and 1s in column-major order, starting with 0s."""
    runs = _string_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != height * width or min(runs, default=0) < 0:
        raise DatasetError(f"{where}: its run lengths cover {sum(runs)} pixels, not {height}x{width}")  # fmt: skip
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def _string_counts(text: str) -> list[int]:
    """pycocotools' compressed counts: each number in 5-bit groups (0x20: more follow, 0x10
    in the last: negative), stored from the third on as the difference to the number two
    before."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            code = ord(text[position]) - 48
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
