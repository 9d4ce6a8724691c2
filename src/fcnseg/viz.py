"""Pictures of a run: training curves, the normalised confusion matrix, prediction overlays.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no display, no global
figure state), so they work on headless machines and inside training processes.

Every picture says what it shows without a report beside it: panels have a title over each
column and a legend of the class colours, overlays a legend, the confusion matrix marks the
classes the labels never contain. The ``*_figure`` functions build a picture as a matplotlib
``Figure`` (to inspect or save); ``figure_pixels`` renders one to an H x W x 3 array.

Overlays leave class 0 unpainted only where the dataset names it background, void or
unlabelled (VOC's "background"); a class 0 that is a real class (CamVid's Sky, Cityscapes'
road) is painted like any other.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from .data.palettes import VOC_VOID_COLOR, colorize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_curves",
    "curves_figure",
    "plot_confusion",
    "confusion_figure",
    "overlay",
    "overlay_figure",
    "overlay_picture",
    "panel_figure",
    "legend_entries",
    "LegendEntry",
    "paints_class_zero",
    "figure_pixels",
    "save_overlays",
    "Predictor",
    "raw_item",
]

_DPI = 100
_DRAWING = threading.Lock()  # one figure rendered at a time (overlay_picture)
# Names a dataset gives a class 0 that is no class at all: left unpainted in overlays.
_UNLABELLED_NAMES = {"background", "void", "unlabelled", "unlabeled"}
_FEW_CLASSES = 8  # a legend lists every class up to this many, else the classes shown


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _pixel_figure(width: int, height: int):
    """A figure of exactly ``width`` x ``height`` pixels (Agg truncates the size in pixels:
    a quarter pixel more keeps 2.9 / 100 * 100 = 289.999... from losing a column)."""
    return _figure((width + 0.25) / _DPI, (height + 0.25) / _DPI)


def figure_pixels(figure: Figure) -> np.ndarray:
    """H x W x 3 uint8: ``figure`` rendered (at its own size and dpi)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


class LegendEntry(NamedTuple):
    name: str
    color: tuple[int, int, int]


def paints_class_zero(classes: Sequence[str] | None) -> bool:
    """Whether overlays paint class 0: yes unless its name says background, void or
    unlabelled (any case, punctuation ignored); without names, no (the VOC convention)."""
    if not classes:
        return False
    return re.sub(r"[^a-z]", "", str(classes[0]).lower()) not in _UNLABELLED_NAMES


def legend_entries(
    maps: Sequence[np.ndarray],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    ignore_index: int = 255,
    hidden: Sequence[int] = (),
    void: bool = True,
    ignore_color: tuple[int, int, int] = VOC_VOID_COLOR,
) -> list[LegendEntry]:
    """The legend of pictures of ``maps``: every class when there are few (up to 8), else
    the classes that appear in the maps, in class order; ``hidden`` classes left out (those
    an overlay does not paint); with ``void``, an "ignored" entry where ignored pixels
    appear (drawn in ``ignore_color``, the dataset's own where it declares one)."""
    values = np.unique(np.concatenate([np.asarray(m).reshape(-1) for m in maps]))
    present = {int(v) for v in values if 0 <= v < len(classes)}
    shown = range(len(classes)) if len(classes) <= _FEW_CLASSES else sorted(present)
    colors = [tuple(c) for c in palette]
    entries = [
        LegendEntry(str(classes[i]), _class_color(i, colors, ignore_index))
        for i in shown
        if i not in hidden
    ]
    if void and ignore_index in values:
        entries.append(LegendEntry("ignored", tuple(ignore_color)))
    return entries


def _class_color(index: int, palette: list, ignore_index: int) -> tuple[int, int, int]:
    """The colour ``colorize`` draws ``index`` with (palette, or VOC colours past it)."""
    color = colorize(np.array([[index]]), palette, ignore_index)[0, 0]
    return (int(color[0]), int(color[1]), int(color[2]))


def _add_legend(figure: Figure, entries: Sequence[LegendEntry], width: int, bottom: int) -> int:
    """A legend of colour swatches, centred in a ``width``-pixel-wide band whose lower edge
    is ``bottom`` pixels above the figure's, in as many columns as fit; its height (px)."""
    if not entries:
        return 0
    from matplotlib.patches import Patch
    from matplotlib.transforms import IdentityTransform

    handles = [
        Patch(facecolor=np.array(e.color) / 255, edgecolor="0.3", label=e.name) for e in entries
    ]
    renderer = figure.canvas.get_renderer()

    def place(columns: int):
        return figure.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(width / 2, bottom),
            bbox_transform=IdentityTransform(),  # display pixels: the figure's height is free
            ncol=columns,
            fontsize=8,
            frameon=False,
            handlelength=1.2,
            columnspacing=1.0,
            borderaxespad=0.0,
        )

    legend = place(1)
    widest = legend.get_window_extent(renderer).width  # one column: the widest entry
    legend.remove()
    columns = max(1, min(len(entries), int((width - 8) // max(widest, 1.0))))
    legend = place(columns)
    while columns > 1 and legend.get_window_extent(renderer).width > width - 4:
        legend.remove()  # columns size to their own widest entry: rarely, one fewer fits
        columns -= 1
        legend = place(columns)
    return math.ceil(legend.get_window_extent(renderer).height)


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    path: Path | str,
    *,
    runs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Loss, learning rate and validation metrics against iterations, from a run's
    ``log.jsonl`` records (or several runs by name, drawn over each other), saved to
    ``path`` (``curves_figure``)."""
    figure = curves_figure(records, runs=runs)
    figure.savefig(path)
    return Path(path)


def curves_figure(
    records: Sequence[Mapping[str, Any]],
    *,
    runs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Figure:
    """``plot_curves``' figure: each run in one colour in every panel (its mean IU solid,
    its pixel accuracy dashed)."""
    runs = dict(runs) if runs else {"": records}
    figure = _figure(13, 3.6)
    loss_ax, lr_ax, val_ax = figure.subplots(1, 3)
    for index, (name, log) in enumerate(runs.items()):
        color = f"C{index}"
        train = [r for r in log if r.get("event") == "train"]
        val = [r for r in log if r.get("event") == "val"]
        prefix = f"{name} " if name else ""
        if train:
            steps = [r["iteration"] for r in train]
            loss_ax.plot(steps, [r["loss"] for r in train], color=color, label=f"{prefix}loss")
            lr_ax.plot(steps, [r["lr"] for r in train], color=color, label=f"{prefix}lr")
        if val:
            steps = [r["iteration"] for r in val]
            for key, style in (("mean_iu", "-o"), ("pixel_acc", "--x")):
                values = [r[key] if r[key] is not None else np.nan for r in val]
                label = f"{prefix}{key.replace('_', ' ')}"
                val_ax.plot(steps, values, style, color=color, label=label)
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
    return figure


def plot_confusion(
    matrix: torch.Tensor | np.ndarray, classes: Sequence[str], path: Path | str, title: str = ""
) -> Path:
    """The confusion matrix with each row divided by its label count, saved to ``path``
    (``confusion_figure``)."""
    confusion_figure(matrix, classes, title).savefig(path)
    return Path(path)


def confusion_figure(
    matrix: torch.Tensor | np.ndarray, classes: Sequence[str], title: str = ""
) -> Figure:
    """The confusion matrix with each row divided by its label count: row i shows where
    the pixels of class i went (the diagonal is the per-class accuracy). A class with no
    labelled pixel has no row to show: it is greyed and its name marked "(absent)"."""
    from matplotlib import colormaps

    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    absent = rows[:, 0] == 0
    size = max(4.0, 0.45 * len(classes) + 2)
    figure = _figure(size + 1, size)
    ax = figure.subplots()
    cmap = colormaps["Blues"].with_extremes(bad="0.8")  # masked (absent) rows in grey
    shown = np.ma.masked_array(normalised, np.broadcast_to(absent[:, None], normalised.shape))
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    names = [f"{name} (absent)" if gone else str(name) for name, gone in zip(classes, absent, strict=True)]  # fmt: skip
    ax.set_xticks(ticks, labels=[str(name) for name in classes], rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels=names, fontsize=8)
    for label, gone in zip(ax.get_yticklabels(), absent, strict=True):
        if gone:
            label.set_color("0.45")
    if absent.any():
        title = (title or "confusion (rows normalised)") + "\ngrey rows: no labelled pixel"
    ax.set(xlabel="predicted", ylabel="label", title=title or "confusion (rows normalised)")
    if len(classes) <= 25:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if normalised[i, j] >= 0.01:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)  # fmt: skip
    figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    return figure


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    *,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """H x W x 3 uint8: the class colours blended over the image. Ignored pixels are left
    as they are, and class 0 too unless ``classes`` names it a real class
    (``paints_class_zero``: CamVid's Sky is painted, VOC's background is not)."""
    image = np.asarray(image, dtype=np.float32)
    labels = np.asarray(labels)
    colors = colorize(labels, [tuple(c) for c in palette], ignore_index).astype(np.float32)
    painted = labels != ignore_index
    if not paints_class_zero(classes):
        painted &= labels != 0
    blended = np.where(painted[..., None], (1 - alpha) * image + alpha * colors, image)
    return blended.clip(0, 255).astype(np.uint8)


_OVERLAY_MIN_WIDTH = 240  # pixels: room for a legend under a small image


def overlay_figure(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> Figure:
    """The ``overlay`` at its own size in the top-left corner, pixel for pixel, and a legend
    of the classes painted below it; at least 240 pixels wide (white beside a narrower
    image)."""
    blended = overlay(image, labels, palette, alpha, classes=classes, ignore_index=ignore_index)
    height, width = blended.shape[:2]
    hidden = () if paints_class_zero(classes) else (0,)
    entries = legend_entries(
        [labels], classes, palette, ignore_index=ignore_index, hidden=hidden, void=False
    )
    total = max(width, _OVERLAY_MIN_WIDTH)
    figure = _pixel_figure(total, height + 400)  # the legend's height decides the rest
    band = _add_legend(figure, entries, total, bottom=4)
    band = band + 8 if band else 0
    figure.set_size_inches((total + 0.25) / _DPI, (height + band + 0.25) / _DPI)
    figure.figimage(blended, xo=0, yo=band, origin="upper")  # no resampling: exact pixels
    return figure


def overlay_picture(
    image: np.ndarray,
    labels: np.ndarray,
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """``overlay_figure`` rendered: H' x W' x 3 uint8, the picture ``fcnseg predict`` saves
    as ``<name>_overlay.png``. Safe from many threads: matplotlib's text rendering shares
    state, so one picture is drawn at a time."""
    with _DRAWING:
        figure = overlay_figure(
            image, labels, palette, classes, alpha=alpha, ignore_index=ignore_index
        )
        return figure_pixels(figure)


# panel_figure's layout, in pixels
_MARGIN, _GAP, _TITLE_BAND = 8, 8, 24
_TILE_MIN, _TILE_MAX = 160, 512


def panel_tile_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of each tile of ``panel_figure`` for an image of that size: enlarged
    by a whole factor to at least 160 pixels on its longer side, or shrunk to 512."""
    longest = max(height, width)
    if longest < _TILE_MIN:
        scale: float = math.ceil(_TILE_MIN / longest)
    elif longest > _TILE_MAX:
        scale = _TILE_MAX / longest
    else:
        scale = 1
    return max(1, round(height * scale)), max(1, round(width * scale))


def panel_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    palette: Sequence[Sequence[int]],
    *,
    titles: Sequence[str],
    classes: Sequence[str],
    ignore_index: int = 255,
    ignore_color: tuple[int, int, int] = VOC_VOID_COLOR,
) -> Figure:
    """The image, then each label map (truth, predictions) in colour, side by side, each
    under its title (``titles``: one for the image and one per map), above a legend of the
    class colours (``legend_entries``). Tiles are ``panel_tile_size``, 8 pixels apart and
    from the edges, under a 24-pixel title band; ignored pixels in ``ignore_color``."""
    colors = [tuple(c) for c in palette]
    tiles = [np.asarray(image, dtype=np.uint8)]
    tiles += [colorize(m, colors, ignore_index, ignore_color) for m in maps]
    if len(titles) != len(tiles):
        raise ValueError(f"{len(titles)} titles for {len(tiles)} pictures (image and maps)")
    tile_h, tile_w = panel_tile_size(*tiles[0].shape[:2])
    width = 2 * _MARGIN + len(tiles) * tile_w + (len(tiles) - 1) * _GAP
    figure = _pixel_figure(width, 2000)  # the legend's height decides the rest
    entries = legend_entries(
        maps, classes, palette, ignore_index=ignore_index, ignore_color=ignore_color
    )
    band = _add_legend(figure, entries, width, bottom=_MARGIN)
    band = band + _GAP if band else 0
    height = _MARGIN + band + tile_h + _TITLE_BAND + _MARGIN
    figure.set_size_inches((width + 0.25) / _DPI, (height + 0.25) / _DPI)
    bottom = (_MARGIN + band) / height
    for index, (tile, title) in enumerate(zip(tiles, titles, strict=True)):
        left = (_MARGIN + index * (tile_w + _GAP)) / width
        ax = figure.add_axes((left, bottom, tile_w / width, tile_h / height))
        ax.imshow(tile, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=10, pad=4)
        ax.set_axis_off()
    return figure


def _reader(dataset: Dataset) -> Dataset:
    """The reader under any ``Subset`` (a random validation split)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


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


class Predictor(Protocol):
    """What ``save_overlays`` needs of a predictor (an ``inference.Segmenter`` of a
    single-task model, or a stand-in): an H x W label map per image, class names, palette."""

    classes: Sequence[str]
    palette: Sequence[Sequence[int]]
    ignore_index: int

    def predict(self, image: np.ndarray) -> np.ndarray: ...


def save_overlays(
    segmenter: Predictor, dataset: Dataset, folder: Path | str, *, count: int = 4
) -> list[Path]:
    """For the first ``count`` images of ``dataset``: an image | label | prediction panel
    (``NNN.png``, titled, with a legend) and the prediction blended over the image
    (``NNN_overlay.png``, with a legend), into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"classes": segmenter.classes, "ignore_index": segmenter.ignore_index}
    ignore_color = getattr(_reader(dataset), "ignore_color", None) or VOC_VOID_COLOR
    written = []
    for index in range(min(count, len(dataset))):
        image, label = raw_item(dataset, index)
        prediction = segmenter.predict(image)
        panel = panel_figure(
            image,
            [label, prediction],
            segmenter.palette,
            titles=("image", "label", "prediction"),
            ignore_color=ignore_color,
            **names,
        )
        path = folder / f"{index:03d}.png"
        Image.fromarray(figure_pixels(panel)).save(path)
        blended = overlay_figure(image, prediction, segmenter.palette, **names)
        Image.fromarray(figure_pixels(blended)).save(folder / f"{index:03d}_overlay.png")
        written.append(path)
    return written
