"""PASCAL-Context (Mottaghi et al., CVPR 2014): 59 classes + background on VOC2010 images.

The annotations (``trainval.tar.gz``) are full-scene label maps over the 400+ raw labels:
``trainval/<id>.mat`` with variable ``LabelMap`` and ``labels.txt`` naming each raw label
(``<index>: <name>``). The 59-class task keeps the 59 most frequent (``59_labels.txt``, or
the reference's list built in here) and, as the FCN reference does, maps every other raw
label to background (0): 60 outputs, nothing ignored. Images come from VOC2010
``JPEGImages``; splits from VOC2010 ``ImageSets/Main/{train,val}.txt`` (4,998 / 5,105).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import (
    DatasetError,
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
from .voc import VOC_RESOURCES, find_voc

__all__ = ["CONTEXT_CLASSES", "CONTEXT_RESOURCES", "PascalContext", "context_label_map"]

# Background then the 59 classes in the reference's output order (classes-59.txt).
CONTEXT_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book", "building",
    "cabinet", "ceiling", "clothes", "computer", "cup", "door", "fence", "floor", "flower",
    "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain",
    "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow",
    "bedcloth", "track", "tree", "truck", "wall", "water", "window", "wood",
)  # fmt: skip

# Task names that labels.txt spells differently (the reference's own fix-up).
_ALIASES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}

CONTEXT_RESOURCES = {
    "annotations": Resource(
        url="https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        filename="trainval.tar.gz",
        md5="df034edb2c12aa7d33b42b20bb1796e3",
    ),
    "59_labels": Resource(
        url="https://cs.stanford.edu/~roozbeh/pascal-context/59_labels.txt",
        filename="59_labels.txt",
        md5="993901f2d930cc038c406845f08fa082",
        archive=False,
    ),
    "images": VOC_RESOURCES["2010"],
}

_FIX = "extract trainval.tar.gz there or call PascalContext.download(root)"


def _key(name: str) -> str:
    return name.replace(" ", "").lower()


def _read_names(path: Path) -> dict[int, str]:
    """``<index>: <name>`` lines -> {index: name}."""
    names = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        index, sep, name = line.partition(":")
        if not sep or not index.strip().isdigit():
            raise DatasetError(f"{path} line {number}: expected '<index>: <name>', got {line!r}")
        names[int(index)] = name.strip()
    return names


def context_label_map(labels_file: Path, task_names: tuple[str, ...]) -> LabelMap:
    """Raw label index -> task index (1..59), every other raw label -> 0 (background)."""
    if not labels_file.is_file():
        raise DatasetError(f"label list {labels_file} not found: {_FIX}")
    raw = {_key(name): index for index, name in _read_names(labels_file).items()}
    mapping = {0: 0, **{index: 0 for index in raw.values()}}
    for task_index, name in enumerate(task_names, start=1):
        key = _key(name)
        key = key if key in raw else _key(_ALIASES.get(key, key))
        if key not in raw:
            raise DatasetError(
                f"{labels_file} has no label {name!r}: is it the PASCAL-Context labels.txt?"
            )
        mapping[raw[key]] = task_index
    return LabelMap(mapping, name="PASCAL-Context")


@register_dataset("context")
class PascalContext(SegmentationDataset):
    """PASCAL-Context, 60 classes (background + 59).

    ``root`` holds ``trainval/`` and ``labels.txt``; ``voc_root`` the VOC2010 images
    (default: searched under ``root``). ``split`` train or val.
    """

    classes = CONTEXT_CLASSES
    palette = voc_palette(len(CONTEXT_CLASSES))

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transforms: Callable | None = None,
        *,
        voc_root: Path | str | None = None,
    ) -> None:
        self.root = find_dir(root, ["", "pascal-context"], "trainval", "PASCAL-Context", _FIX)
        try:
            self.voc = find_voc(voc_root if voc_root is not None else self.root, "2010")
        except DatasetError as error:
            raise DatasetError(f"{error} (or pass voc_root=<folder holding VOC2010>)") from None
        self.split = split
        self.label_map = context_label_map(self.root / "labels.txt", self._task_names())
        split_file = self.voc / "ImageSets" / "Main" / f"{split}.txt"
        ids = read_split_file(split_file, "use split train or val of a complete VOC2010")
        samples = [
            Sample(i, self.voc / "JPEGImages" / f"{i}.jpg", self.root / "trainval" / f"{i}.mat")
            for i in ids
        ]
        check_files(samples, split_file)
        super().__init__(samples, transforms)

    def _task_names(self) -> tuple[str, ...]:
        listed = self.root / "59_labels.txt"
        if not listed.is_file():
            return CONTEXT_CLASSES[1:]
        names = _read_names(listed)
        if len(names) != 59:
            raise DatasetError(f"{listed} lists {len(names)} classes, expected 59")
        return tuple(names[k] for k in sorted(names))

    def read_label(self, sample: Sample) -> np.ndarray:
        return read_mat(sample.label, "LabelMap")

    @staticmethod
    def download(root: Path | str, *, progress=None) -> Path:
        """Fetch the Context annotations, the 59-class list and VOC2010 into ``root``."""
        for resource in CONTEXT_RESOURCES.values():
            fetch_and_extract(resource, root, progress=progress)
        return Path(root).expanduser()
