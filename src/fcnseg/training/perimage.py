"""Scores of each image, beside the dataset's: the worst images by mean IU are where bad
labels (and the model's blind spots) hide. ``fcnseg eval --per-image FILE.csv``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.base import item_names
from ..fileio import atomic_write
from ..metrics import ConfusionMatrix, MultiTaskConfusion, metrics_from_matrix
from ..modelfile import unwrap
from .distributed import Context
from .evaluate import eval_loader, evaluate

__all__ = ["ImageScore", "evaluate_per_image", "write_per_image_csv", "worst"]


@dataclass(frozen=True)
class ImageScore:
    image: str  # the dataset's id (the file stem for a folder dataset)
    path: str  # the image file, where the dataset names it
    pixel_acc: float
    mean_iu: float
    iu: list[float]  # per class; NaN where the class is in neither label nor prediction


def evaluate_per_image(
    model: nn.Module,
    dataset: Dataset,
    *,
    ignore_index: int = 255,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[MultiTaskConfusion, list[ImageScore]]:
    """The dataset's confusion (``evaluate``'s) and every image's scores, in the dataset's
    order. For single-task models: one set of class columns per row."""
    spec = unwrap(model).spec
    if len(spec.tasks) != 1:
        raise ValueError(
            f"per-image scores are for single-task models; {spec.label} predicts "
            f"{list(spec.task_names)}: evaluate without --per-image"
        )
    ((task, classes),) = spec.task_classes.items()
    scores, names = [], item_names(dataset)

    def score(predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        one = ConfusionMatrix(classes, ignore_index)  # the loader's batches are single images
        one.update(predictions[task], targets[task])
        metrics = metrics_from_matrix(one.matrix)
        name, path = names[len(scores)]
        scores.append(
            ImageScore(name, path, metrics["pixel_acc"], metrics["mean_iu"], metrics["iu"])
        )

    loader = eval_loader(dataset, Context(device=torch.device(device)), num_workers=num_workers)
    total = evaluate(
        model,
        loader,
        ignore_index=ignore_index,
        device=device,
        progress=progress,
        on_batch=score,
    )
    return total, scores


def worst(scores: Sequence[ImageScore], count: int = 5) -> list[ImageScore]:
    """The ``count`` images of lowest mean IU (those without a labelled pixel left out)."""
    scored = [score for score in scores if not math.isnan(score.mean_iu)]
    return sorted(scored, key=lambda score: score.mean_iu)[:count]


def write_per_image_csv(path: Path, scores: Sequence[ImageScore], classes: Sequence[str]) -> Path:
    """One row per image: image, path, pixel_acc, mean_iu, then ``iu_<class>`` per class;
    values as fractions in [0, 1], empty where undefined. Written atomically."""
    header = ["image", "path", "pixel_acc", "mean_iu", *(f"iu_{name}" for name in classes)]

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for score in scores:
                values = [score.pixel_acc, score.mean_iu, *score.iu]
                writer.writerow([score.image, score.path, *map(_cell, values)])

    return atomic_write(path, write)


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"
