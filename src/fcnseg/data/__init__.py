"""Datasets in their published formats, joint transforms, batching, and ``synthetic``.

Every reader is a map-style ``torch.utils.data.Dataset`` built as
``Reader(root=..., split=..., transforms=None)`` returning ``(image, label)``: a float
3 x H x W RGB tensor in 0..255 and an int64 H x W label with 255 ignored. Readers carry
``classes``, ``palette``, ``num_classes`` and ``ignore_index``. ``build_dataset(name, ...)``
builds one by name (``list_datasets()``); bad files raise ``DatasetError``, one line naming
the file and the fix.
"""

from .base import (
    IGNORE_INDEX,
    DatasetError,
    LabelMap,
    SegmentationDataset,
    build_dataset,
    list_datasets,
    register_dataset,
)
from .camvid import CAMVID_CLASSES, CamVid
from .cityscapes import CITYSCAPES_CLASSES, Cityscapes
from .coco import CocoSegmentation
from .collate import PadCollate, pad_collate
from .context import CONTEXT_CLASSES, PascalContext
from .download import Resource, extract, fetch, fetch_and_extract
from .folder import FolderDataset
from .nyud import NYUD_CLASSES, NYUD_NORMALIZATION, LogDepth, NYUDv2
from .palettes import CAMVID_PALETTE, CITYSCAPES_PALETTE, colorize, voc_palette
from .sbd import SBD, Seg11Valid, seg11valid_ids
from .siftflow import SIFTFLOW_CLASSES, SIFTFLOW_GEOMETRIC_CLASSES, SiftFlow
from .synthetic import SYNTHETIC_CLASSES, SyntheticShapes
from .transforms import (
    Compose,
    Normalize,
    PhotometricJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    eval_transforms,
    normalization_of,
    train_transforms,
)
from .voc import VOC_CLASSES, VOCSegmentation

__all__ = [
    "IGNORE_INDEX",
    "DatasetError",
    "LabelMap",
    "SegmentationDataset",
    "build_dataset",
    "list_datasets",
    "register_dataset",
    "VOCSegmentation",
    "SBD",
    "Seg11Valid",
    "seg11valid_ids",
    "CamVid",
    "SiftFlow",
    "NYUDv2",
    "PascalContext",
    "Cityscapes",
    "CocoSegmentation",
    "FolderDataset",
    "SyntheticShapes",
    "VOC_CLASSES",
    "CAMVID_CLASSES",
    "SIFTFLOW_CLASSES",
    "SIFTFLOW_GEOMETRIC_CLASSES",
    "NYUD_CLASSES",
    "NYUD_NORMALIZATION",
    "LogDepth",
    "CONTEXT_CLASSES",
    "CITYSCAPES_CLASSES",
    "SYNTHETIC_CLASSES",
    "Compose",
    "RandomScale",
    "RandomCrop",
    "RandomHorizontalFlip",
    "PhotometricJitter",
    "Normalize",
    "normalization_of",
    "train_transforms",
    "eval_transforms",
    "PadCollate",
    "pad_collate",
    "Resource",
    "fetch",
    "extract",
    "fetch_and_extract",
    "voc_palette",
    "CAMVID_PALETTE",
    "CITYSCAPES_PALETTE",
    "colorize",
]
