"""SBD (Hariharan et al.'s Semantic Boundaries Dataset) and the paper's seg11valid split.

SBD as published (``benchmark.tgz``): ``benchmark_RELEASE/dataset/img/<id>.jpg``,
``cls/<id>.mat`` holding the struct ``GTcls`` whose field ``Segmentation`` is the class map
(VOC's 21 classes, no void border), and ``train.txt`` (8,498 ids) / ``val.txt``.

The paper trains on SBD train and validates on seg11valid: the images of VOC2011
segmentation val that are not in SBD train (736 when both lists are complete), read from
VOC2011 itself, so no training image is ever evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import (
    LabelMap,
    Sample,
    SegmentationDataset,
    check_files,
    find_dir,
    read_mat,
    read_split_file,
    register_dataset,
)
from .download import Resource, fetch_and_extract
from .palettes import voc_palette
from .voc import VOC_CLASSES, VOCSegmentation, find_voc

__all__ = ["SBD_RESOURCE", "SBD", "Seg11Valid", "seg11valid_ids", "find_sbd"]

SBD_RESOURCE = Resource(
    url="http://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    filename="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
)

_FIX = "extract benchmark.tgz there or call SBD.download(root)"


def find_sbd(root: Path | str) -> Path:
    """The ``dataset`` folder of SBD under ``root``."""
    return find_dir(root, ["", "dataset", "benchmark_RELEASE/dataset"], "cls", "SBD", _FIX)


@register_dataset("sbd")
class SBD(SegmentationDataset):
    """SBD class segmentation: 21 VOC classes; ``split`` train (8,498 images) or val."""

    classes = VOC_CLASSES
    palette = voc_palette(len(VOC_CLASSES))
    label_map = LabelMap.identity(len(VOC_CLASSES), name="SBD")

    def __init__(
        self, root: Path | str, split: str = "train", transforms: Callable | None = None
    ) -> None:
        self.root = find_sbd(root)
        self.split = split
        split_file = self.root / f"{split}.txt"
        ids = read_split_file(split_file, "use split train or val of a complete SBD")
        samples = [
            Sample(i, self.root / "img" / f"{i}.jpg", self.root / "cls" / f"{i}.mat") for i in ids
        ]
        check_files(samples, split_file)
        super().__init__(samples, transforms)

    def read_label(self, sample: Sample) -> np.ndarray:
        return read_mat(sample.label, "GTcls", "Segmentation")

    @staticmethod
    def download(root: Path | str, *, progress=None) -> Path:
        """Fetch and extract benchmark.tgz into ``root``; returns ``root``."""
        return fetch_and_extract(SBD_RESOURCE, root, progress=progress)


def seg11valid_ids(voc2011_root: Path | str, sbd_root: Path | str) -> list[str]:
    """VOC2011 segmentation val minus SBD train, in VOC's order (736 ids when complete)."""
    voc = find_voc(voc2011_root, "2011")
    val = read_split_file(
        voc / "ImageSets" / "Segmentation" / "val.txt", "seg11valid needs a complete VOC2011"
    )
    sbd_train = set(read_split_file(find_sbd(sbd_root) / "train.txt", _FIX))
    return [i for i in val if i not in sbd_train]


@register_dataset("seg11valid")
class Seg11Valid(VOCSegmentation):
    """The paper's validation set: VOC2011 val images not in SBD train, VOC2011 labels.

    ``root`` is the VOC2011 folder (as for ``VOCSegmentation``), ``sbd_root`` SBD's.
    """

    def __init__(
        self,
        root: Path | str,
        split: str = "seg11valid",
        transforms: Callable | None = None,
        *,
        sbd_root: Path | str,
    ) -> None:
        if split not in ("seg11valid", "val"):
            raise ValueError(f"Seg11Valid is a validation set: split 'seg11valid', not {split!r}")
        ids = seg11valid_ids(root, sbd_root)
        super().__init__(root, "val", transforms, year="2011", ids=ids)
        self.split = "seg11valid"
