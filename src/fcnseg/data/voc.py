"""PASCAL VOC 2011/2012 segmentation, read from the VOCdevkit as published.

Layout: ``VOCdevkit/VOC<year>/JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette
PNGs whose indices are the labels: 0 background, 1-20 the classes, 255 the void border drawn
around objects) and ``ImageSets/Segmentation/{train,val,trainval}.txt``. The paper validates
on seg11valid (``fcnseg.data.sbd.Seg11Valid``), a subset of VOC2011 val.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import (
    LabelMap,
    Sample,
    SegmentationDataset,
    check_files,
    find_dir,
    read_label,
    read_split_file,
    register_dataset,
)
from .download import Resource, fetch_and_extract
from .palettes import VOC_VOID_COLOR, voc_palette

__all__ = ["VOC_CLASSES", "VOC_RESOURCES", "VOCSegmentation", "find_voc"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The trainval tars at the publisher (host.robots.ox.ac.uk); sizes and MD5s as published.
VOC_RESOURCES = {
    "2012": Resource(
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        filename="VOCtrainval_11-May-2012.tar",
        size=1999639040,
        md5="6cd6e144f989b92b3379bac3b3de84fd",
    ),
    "2011": Resource(
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar",
        filename="VOCtrainval_25-May-2011.tar",
        md5="6c3384ef61512963050cb5d687e5bf1e",
    ),
    "2010": Resource(
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        filename="VOCtrainval_03-May-2010.tar",
        md5="da459979d0c395079b5c75ee67908abb",
    ),
}


def find_voc(root: Path | str, year: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` (the 2011 tar nests it in TrainVal/)."""
    return find_dir(
        root,
        ["", f"VOC{year}", f"VOCdevkit/VOC{year}", f"TrainVal/VOCdevkit/VOC{year}"],
        "JPEGImages",
        f"PASCAL VOC{year}",
        f"extract {VOC_RESOURCES[year].filename if year in VOC_RESOURCES else 'the VOC tar'} "
        f"there or call VOCSegmentation.download(root, year={year!r})",
    )


@register_dataset("voc")
class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC segmentation: 21 classes (background + 20), 255 void.

    ``root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC<year>``;
    ``split`` one of train, val, trainval (``ImageSets/Segmentation/<split>.txt``).
    """

    classes = VOC_CLASSES
    palette = voc_palette(len(VOC_CLASSES))
    label_map = LabelMap.identity(len(VOC_CLASSES), name="PASCAL VOC")

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transforms: Callable | None = None,
        *,
        year: str = "2012",
        ids: list[str] | None = None,
    ) -> None:
        self.root = find_voc(root, str(year))
        self.split, self.year = split, str(year)
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if ids is None:
            ids = read_split_file(
                split_file, "use split train, val or trainval of a complete VOCdevkit"
            )
        samples = [
            Sample(
                i,
                self.root / "JPEGImages" / f"{i}.jpg",
                self.root / "SegmentationClass" / f"{i}.png",
            )
            for i in ids
        ]
        check_files(samples, split_file)
        super().__init__(samples, transforms)

    def read_label(self, sample: Sample):
        # A mask re-saved as colours (palette lost) still reads: VOC colours back to indices.
        colors = [*self.palette, VOC_VOID_COLOR]
        return read_label(sample.label, colors, [*range(len(self.palette)), 255])

    @staticmethod
    def download(root: Path | str, *, year: str = "2012", progress=None) -> Path:
        """Fetch and extract the VOC<year> trainval tar into ``root``; returns ``root``."""
        return fetch_and_extract(VOC_RESOURCES[str(year)], root, progress=progress)
