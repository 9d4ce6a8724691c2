"""Which images ``fcnseg eval`` scores (issue 30): a run's checkpoint is scored on the
images the run held out for validation, where it held out a random share of the dataset
named (a folder without splits: the images of its ``val_images.txt``, drawn again with its
seed); and a warning counts the scored images that trained it, whose score flatters it.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset, Subset

from ..config import RANDOM_SPLIT, ConfigError, TrainConfig, from_dict
from ..data.base import item_names
from ..training.splits import VAL_LIST, held_out_indices, trained_images
from .options import open_dataset

__all__ = [
    "AUTO_SPLIT",
    "dataset_to_score",
    "split_to_score",
    "training_config",
    "warn_training_images",
]

AUTO_SPLIT = "auto"  # --split left out: the run's held-out images, or val


def training_config(record) -> TrainConfig | None:
    """The config of the run that wrote the checkpoint; None for a weights file (or a
    config this version cannot read)."""
    saved = (record.training or {}).get("config")
    if not isinstance(saved, dict):
        return None
    try:
        return from_dict(dict(saved), source="the checkpoint's config")
    except (ConfigError, TypeError, ValueError):
        return None


def _held_out_here(args: argparse.Namespace, trained: TrainConfig | None) -> bool:
    """Whether the checkpoint's run held out a random share of the dataset named here for
    its validation (the same reader and folder)."""
    if trained is None or trained.val_split != RANDOM_SPLIT:
        return False
    own_reader = trained.val_dataset in (None, trained.dataset)
    own_folder = trained.val_root in (None, trained.root)
    return own_reader and own_folder and _same_data(args, trained)


def _same_data(args: argparse.Namespace, trained: TrainConfig) -> bool:
    if trained.dataset != args.data or (trained.root is None) != (args.root is None):
        return False
    return trained.root is None or Path(trained.root).resolve() == args.root.resolve()


def split_to_score(args: argparse.Namespace, trained: TrainConfig | None) -> str | None:
    """``--split`` as given; ``auto``: the run's held-out images where it held some out of
    this dataset, else val; ``random`` only where it did."""
    if args.split == AUTO_SPLIT:
        return RANDOM_SPLIT if _held_out_here(args, trained) else "val"
    if args.split == RANDOM_SPLIT and not _held_out_here(args, trained):
        raise ValueError(
            f"--split random scores the images a run held out for validation, and "
            f"{args.checkpoint} was not trained with val_split = random on {args.data} at "
            f"{args.root}: name a split of the dataset (val, test, none)"
        )
    return args.split


def dataset_to_score(
    args: argparse.Namespace, trained: TrainConfig | None, normalization: Callable
) -> tuple[Dataset, Dataset]:
    """The images to score, and the reader they come from (whose classes the model must
    predict). ``random``: the images of the run's training split that it held out."""
    if args.split != RANDOM_SPLIT:
        dataset = open_dataset(args, args.split, normalization)
        return dataset, dataset
    full = open_dataset(args, trained.train_split, normalization)
    held = held_out_indices(len(full), trained.val_fraction, trained.split_seed)
    print(
        f"scoring the {len(held)} images the run of {args.checkpoint} held out for validation "
        f"(val_fraction {trained.val_fraction:g}, split_seed {trained.split_seed}: its "
        f"{VAL_LIST})"
    )
    return Subset(full, held), full


def warn_training_images(args, trained: TrainConfig | None, dataset) -> None:
    """One warning when images the checkpoint trained on are among those scored: their
    score flatters the model."""
    if trained is None or not _same_data(args, trained):
        return
    seen = trained_images(
        dataclasses.replace(trained, root=None if args.root is None else str(args.root))
    )
    scored = [Path(path).resolve() for _, path in item_names(dataset) if path]
    overlap = sum(path in seen for path in scored) if seen else 0
    if not overlap:
        return
    if trained.val_split == RANDOM_SPLIT:
        fix = "leave --split out to score the images its run held out"
    elif trained.val_split:
        fix = f"score the split its run validated on (--split {trained.val_split})"
    else:
        fix = "score images it did not train on"
    warnings.warn(
        f"{overlap} of the {len(scored)} images scored are training images of "
        f"{args.checkpoint}: their score flatters it; {fix}",
        stacklevel=2,
    )
