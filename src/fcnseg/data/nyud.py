"""NYUDv2 in the layout of the FCN reference (``nyud.tar.gz``), 40 classes (Gupta et al.).

``data/images/img_<id>.png`` (RGB), ``data/depth/img_<id>.png`` (16-bit depth),
``data/hha/img_<id>.png`` (HHA: horizontal disparity, height, angle; Gupta et al. ECCV 2014),
``segmentation/img_<id>.mat`` (variable ``segmentation``: 0 void, 1-40 the classes) and
``train.txt`` / ``val.txt`` / ``test.txt`` (795 train, 654 test). Labels lose 1, so void is
255, as in the reference.

Inputs: ``modalities`` picks any of color, depth and hha. One modality gives the image as a
tensor; several give a dict ``{"color": 3xHxW, "depth": 1xHxW, "hha": 3xHxW}`` in the order
asked, which the joint transforms move together (the photometric jitter touches only colour).
Depth is returned as stored; ``NYUD_NORMALIZATION`` holds the reference's per-input
preprocessing (BGR mean for colour, HHA mean, log depth minus its mean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..models.normalization import NYUD_NORMALIZATION, LogDepth
from .base import (
    LabelMap,
    Sample,
    SegmentationDataset,
    check_files,
    check_same_size,
    find_dir,
    image_to_tensor,
    label_to_tensor,
    read_depth,
    read_image,
    read_mat,
    read_split_file,
    register_dataset,
)
from .download import Resource, fetch_and_extract
from .palettes import voc_palette

__all__ = [
    "NYUD_CLASSES",
    "NYUD_RESOURCE",
    "NYUD_NORMALIZATION",
    "MODALITIES",
    "LogDepth",
    "NYUDv2",
]

NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refridgerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip

# The reference's copy of the data in its own layout (data/nyud/README.md).
NYUD_RESOURCE = Resource(
    url="http://dl.caffe.berkeleyvision.org/nyud.tar.gz", filename="nyud.tar.gz"
)

MODALITIES = ("color", "depth", "hha")
_FILES = {"color": "data/images", "depth": "data/depth", "hha": "data/hha"}
_FIX = "extract nyud.tar.gz there or call NYUDv2.download(root)"


@register_dataset("nyud")
class NYUDv2(SegmentationDataset):
    """NYUDv2, 40 classes; ``modalities`` any non-empty subset of color, depth, hha."""

    classes = NYUD_CLASSES
    palette = voc_palette(len(NYUD_CLASSES))
    label_map = LabelMap({0: 255, **{k: k - 1 for k in range(1, 41)}}, name="NYUDv2 40-class")

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transforms: Callable | None = None,
        *,
        modalities: str | Sequence[str] = ("color",),
    ) -> None:
        self.root = find_dir(root, ["", "nyud"], "segmentation", "NYUDv2", _FIX)
        self.split = split
        self.modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"modalities must be distinct names from {MODALITIES}, got {modalities!r}"
            )
        split_file = self.root / f"{split}.txt"
        ids = read_split_file(split_file, "use split train, val or test of nyud.tar.gz")
        samples = [
            Sample(
                i,
                self.root / _FILES[self.modalities[0]] / f"img_{i}.png",
                self.root / "segmentation" / f"img_{i}.mat",
                extra={m: self.root / _FILES[m] / f"img_{i}.png" for m in self.modalities[1:]},
            )
            for i in ids
        ]
        check_files(samples, split_file)
        super().__init__(samples, transforms)

    def read_label(self, sample: Sample) -> np.ndarray:
        return read_mat(sample.label, "segmentation")

    def _read(self, modality: str, path: Path, match: tuple[int, int]) -> np.ndarray:
        if modality == "depth":
            return read_depth(path)
        return read_image(path, match=match)

    def load(self, index: int) -> tuple[torch.Tensor | dict[str, torch.Tensor], torch.Tensor]:
        sample = self.samples[index]
        raw = self.read_label(sample)
        label = label_to_tensor(self.label_map(raw, sample.label))
        paths = {self.modalities[0]: sample.image, **sample.extra}
        inputs = {}
        for modality in self.modalities:
            array = self._read(modality, paths[modality], raw.shape[:2])
            check_same_size(array, raw, paths[modality], sample.label)
            inputs[modality] = image_to_tensor(array)
        if len(inputs) == 1:
            return inputs[self.modalities[0]], label
        return inputs, label

    @staticmethod
    def download(root: Path | str, *, progress=None) -> Path:
        """Fetch and extract the reference's nyud.tar.gz into ``root``; returns ``root``."""
        return fetch_and_extract(NYUD_RESOURCE, root, progress=progress)
