"""Cityscapes fine annotations, mapped to the 19 evaluation classes (train ids).

Layout: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` (8-bit label ids 0-33). The label ids
of the 19 classes map to train ids 0-18; every other id (void, ego vehicle, rectification
border, the rarely seen caravan, trailer, guard rail, ...) is 255. The publisher requires a
login, so there is no download helper.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import (
    DatasetError,
    LabelMap,
    Sample,
    SegmentationDataset,
    register_dataset,
    require_dir,
)
from .palettes import CITYSCAPES_PALETTE

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_TRAIN_IDS", "Cityscapes"]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# label id -> train id for the 19 classes (cityscapesScripts helpers/labels.py).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
_FIX = "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com (login required) and extract both there"


@register_dataset("cityscapes")
class Cityscapes(SegmentationDataset):
    """Cityscapes fine, 19 classes; ``split`` train, val or test."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    label_map = LabelMap(
        {**{k: 255 for k in range(34)}, **CITYSCAPES_TRAIN_IDS, 255: 255},
        name="Cityscapes label-id",
    )

    def __init__(
        self, root: Path | str, split: str = "train", transforms: Callable | None = None
    ) -> None:
        self.root = require_dir(root, "Cityscapes root", _FIX)
        self.split = split
        images_dir = require_dir(
            self.root / "leftImg8bit" / split, "Cityscapes images folder", _FIX
        )
        labels_dir = require_dir(self.root / "gtFine" / split, "Cityscapes labels folder", _FIX)
        images = {
            p.relative_to(images_dir).as_posix()[: -len(_IMAGE_SUFFIX)]: p
            for p in images_dir.glob(f"*/*{_IMAGE_SUFFIX}")
        }
        labels = {
            p.relative_to(labels_dir).as_posix()[: -len(_LABEL_SUFFIX)]: p
            for p in labels_dir.glob(f"*/*{_LABEL_SUFFIX}")
        }
        if not images:
            raise DatasetError(f"no *{_IMAGE_SUFFIX} images under {images_dir}: {_FIX}")
        unlabelled = sorted(images.keys() - labels.keys())
        if unlabelled:
            name = unlabelled[0]
            raise DatasetError(
                f"image {images[name]} has no label {labels_dir / (name + _LABEL_SUFFIX)}: "
                "extract gtFine_trainvaltest.zip completely"
            )
        orphans = sorted(labels.keys() - images.keys())
        if orphans:
            name = orphans[0]
            raise DatasetError(
                f"label {labels[name]} has no image {images_dir / (name + _IMAGE_SUFFIX)}: "
                "extract leftImg8bit_trainvaltest.zip completely"
            )
        samples = [Sample(Path(n).name, images[n], labels[n]) for n in sorted(images)]
        super().__init__(samples, transforms)

    @staticmethod
    def download(root: Path | str, **_: object) -> Path:
        """Cityscapes cannot be fetched without the publisher's login."""
        raise DatasetError(f"Cityscapes needs a login: {_FIX} ({root})")
