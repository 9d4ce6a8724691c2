"""Pictures of a run: training curves, the normalised confusion matrix, prediction overlays.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no display, no global
figure state), so they work on headless machines and inside training processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from .data.palettes import colorize

if TYPE_CHECKING:
    from .inference import Segmenter

__all__ = [
    "plot_curves",
    "plot_confusion",
    "overlay",
    "comparison_panel",
    "save_overlays",
    "raw_item",
]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    path: Path | str,
    *,
    runs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Loss, learning rate and validation metrics against iterations, from a run's
    ``log.jsonl`` records (or several runs by name, drawn over each other)."""
    runs = dict(runs) if runs else {"": records}
    figure = _figure(13, 3.6)
    loss_ax, lr_ax, val_ax = figure.subplots(1, 3)
    for name, log in runs.items():
        train = [r for r in log if r.get("event") == "train"]
        val = [r for r in log if r.get("event") == "val"]
        prefix = f"{name} " if name else ""
        if train:
            steps = [r["iteration"] for r in train]
            loss_ax.plot(steps, [r["loss"] for r in train], label=f"{prefix}loss")
            lr_ax.plot(steps, [r["lr"] for r in train], label=f"{prefix}lr")
        if val:
            steps = [r["iteration"] for r in val]
            for key, style in (("mean_iu", "-o"), ("pixel_acc", "--x")):
                values = [r[key] if r[key] is not None else np.nan for r in val]
                val_ax.plot(steps, values, style, label=f"{prefix}{key.replace('_', ' ')}")
    loss_ax.set(title="training loss", xlabel="iteration")
    lr_ax.set(title="learning rate", xlabel="iteration")
    val_ax.set(title="validation", xlabel="iteration", ylim=(0, 1))
    for ax in (loss_ax, lr_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if any(r.get("loss", 1) > 0 for log in runs.values() for r in log if r.get("event") == "train"):
        loss_ax.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_confusion(
    matrix: torch.Tensor | np.ndarray, classes: Sequence[str], path: Path | str, title: str = ""
) -> Path:
    """The confusion matrix with each row divided by its label count: row i shows where
    the pixels of class i went (the diagonal is the per-class accuracy)."""
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.45 * len(classes) + 2)
    figure = _figure(size + 1, size)
    ax = figure.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels=classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="label", title=title or "confusion (rows normalised)")
    if len(classes) <= 25:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if normalised[i, j] >= 0.01:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)  # fmt: skip
    figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """H x W x 3 uint8: the class colours blended over the image (background class 0 and
    ignored pixels left as they are)."""
    image = np.asarray(image, dtype=np.float32)
    colors = colorize(labels, [tuple(c) for c in palette]).astype(np.float32)
    painted = (labels > 0) & (labels != 255)
    blended = np.where(painted[..., None], (1 - alpha) * image + alpha * colors, image)
    return blended.clip(0, 255).astype(np.uint8)


def comparison_panel(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    palette: Sequence[Sequence[int]],
    gap: int = 4,
    scale: int = 1,
) -> np.ndarray:
    """The image, then each label map (truth, predictions) in colour, side by side;
    ``scale`` enlarges every tile by pixel repetition (small images stay legible)."""
    tiles = [np.asarray(image, dtype=np.uint8)]
    tiles += [colorize(m, [tuple(c) for c in palette]) for m in maps]
    tiles = [tile.repeat(scale, axis=0).repeat(scale, axis=1) for tile in tiles]
    height = tiles[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for tile in tiles:
        row += [tile, spacer]
    return np.concatenate(row[:-1], axis=1)


def raw_item(dataset: Dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 RGB, H x W labels) of item ``index`` before any transform."""
    if isinstance(dataset, Subset):
        return raw_item(dataset.dataset, dataset.indices[index])
    load = getattr(dataset, "load", None)
    image, label = load(index) if load is not None else dataset[index]
    if isinstance(image, Mapping):
        image = image["color"]
    image = image.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
    return image, np.asarray(label)


def save_overlays(
    segmenter: Segmenter, dataset: Dataset, folder: Path | str, *, count: int = 4
) -> list[Path]:
    """For the first ``count`` images of ``dataset``: image | label | prediction PNGs and a
    blended overlay, into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(count, len(dataset))):
        image, label = raw_item(dataset, index)
        prediction = segmenter.predict(image)
        panel = comparison_panel(image, [label, prediction], segmenter.palette)
        path = folder / f"{index:03d}.png"
        Image.fromarray(panel).save(path)
        Image.fromarray(overlay(image, prediction, segmenter.palette)).save(
            folder / f"{index:03d}_overlay.png"
        )
        written.append(path)
    return written
