"""Train/val splits a run makes itself: a folder dataset without splits, and a seeded random
hold-out (``val_split = "random"``) recorded in the run folder's ``val_images.txt``."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset

from ..config import RANDOM_SPLIT, ConfigError, TrainConfig
from ..data import DatasetError, build_dataset
from ..data.base import item_names
from ..data.folder import has_split
from ..fileio import atomic_write

__all__ = [
    "fit_folder_splits",
    "held_out_indices",
    "hold_out",
    "trained_images",
    "write_val_list",
    "VAL_LIST",
]

VAL_LIST = "val_images.txt"  # in the run folder: the ids of a random split's val images


def fit_folder_splits(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """A folder dataset that lacks the train or val split the config names takes every image
    for training and holds out ``val_fraction`` of them; the config says so (it is what the
    run saves) and the notes say so to the user."""
    if config.dataset != "folder" or config.root is None:
        return config, []
    notes, changes = [], {}
    own_val = config.val_dataset in (None, "folder") and config.val_root in (None, config.root)
    img_dir = config.train_options.get("img_dir", "images")
    if config.train_split is not None and not has_split(config.root, config.train_split, img_dir):
        changes["train_split"] = None
        notes.append(f"{config.root} has no {config.train_split!r} split: training on its images")
    val = config.val_split
    img_dir = config.val_options.get("img_dir", img_dir)
    if own_val and val not in (None, RANDOM_SPLIT) and not has_split(config.root, val, img_dir):
        changes["val_split"] = RANDOM_SPLIT
        either = " either" if notes else ""
        notes.append(
            f"no {val!r} split{either}: validating on a random {config.val_fraction:.0%} of "
            f"the training images (split_seed={config.split_seed}; listed in {VAL_LIST})"
        )
    return dataclasses.replace(config, **changes), notes


def hold_out(
    train_set: Dataset, val_set: Dataset, fraction: float, seed: int
) -> tuple[Subset, Subset]:
    """Split the images of ``train_set`` (``val_set`` reads the same images, with its own
    transforms): ``fraction`` of them, at least one, drawn with ``seed``, for validation."""
    count = len(train_set)
    if count < 2:
        raise ConfigError(
            f"val_split = {RANDOM_SPLIT!r} needs at least 2 images to hold one out, the "
            f"training set has {count}: add images, or validate on them all with val_split=none"
        )
    held = held_out_indices(count, fraction, seed)
    train_indices = sorted(set(range(count)) - set(held))
    return Subset(train_set, train_indices), Subset(val_set, held)


def held_out_indices(count: int, fraction: float, seed: int) -> list[int]:
    """The indices, in order, that ``hold_out`` keeps for validation out of ``count``."""
    held = min(count - 1, max(1, round(fraction * count)))
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[:held].tolist())


def trained_images(config: TrainConfig) -> set[Path] | None:
    """The image files a run of ``config`` trained on (its training split, less the images
    it held out); None where that cannot be told here: a dataset without image files
    (synthetic), or one that does not open from this folder."""
    try:
        with warnings.catch_warnings():  # the run warned about its data when it started
            warnings.simplefilter("ignore")
            train_set = build_dataset(
                config.dataset, root=config.root, split=config.train_split, **config.train_options
            )
    except (DatasetError, TypeError, ValueError, OSError):
        return None
    paths = [path for _, path in item_names(train_set)]
    if not paths or not all(paths):
        return None
    held: set[int] = set()
    if config.val_split == RANDOM_SPLIT and len(paths) > 1:
        held = set(held_out_indices(len(paths), config.val_fraction, config.split_seed))
    return {Path(path).resolve() for index, path in enumerate(paths) if index not in held}


def write_val_list(run_dir: Path, val_set: Subset) -> Path:
    """``val_images.txt``: one held-out image id per line."""
    path = run_dir / VAL_LIST
    text = "".join(f"{name}\n" for name, _ in item_names(val_set))
    atomic_write(path, lambda temporary: temporary.write_text(text))
    return path
