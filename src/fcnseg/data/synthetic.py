"""``synthetic``: procedural scenes of textured shapes, generated on the fly with no files.

Each image is a cluttered background (gradient, low-frequency shading, grey blobs and
strokes that stay background) with 4-9 objects painted in random order, so later ones
occlude earlier ones. Six classes, each a shape with its own texture and colour family:

    disc      red, radially shaded         box     blue, checkered, rotated
    triangle  green, striped               ring    yellow, a hole showing what is behind
    pole      magenta bar 1.5-5 px wide    spot    cyan clusters of dots, radius 2-5 px

Objects range from dots of a few pixels to a third of the image. Poles, ring walls and spots
are far below the 32-pixel stride of FCN-32s, which can only paint them as blobs; the finer
skips of FCN-8s can follow them, which is what the dataset is for. Recognition itself is easy
(colour and texture), so a small CPU model learns it in minutes.

Image ``index`` of ``split`` under ``seed`` is always the same: every random draw comes from
a generator seeded by (seed, split, index). A 128x128 image takes about a millisecond.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from .base import SegmentationDataset, image_to_tensor, register_dataset
from .palettes import voc_palette

__all__ = ["SYNTHETIC_CLASSES", "SyntheticShapes", "render_scene"]

SYNTHETIC_CLASSES = ("background", "disc", "box", "triangle", "ring", "pole", "spot")
_HUES = {1: 0.0, 2: 0.62, 3: 0.33, 4: 0.14, 5: 0.83, 6: 0.5}  # colour family of each class
_CLASS_FREQUENCY = (0.15, 0.15, 0.15, 0.15, 0.2, 0.2)  # of classes 1-6 among the objects
_SPLITS = {"train": 0, "val": 1, "test": 2}
_DEFAULT_COUNTS = {"train": 1000, "val": 100, "test": 100}


def _color(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255


@lru_cache(maxsize=16)
def _upsampler(length: int, coarse: int) -> np.ndarray:
    """length x coarse linear interpolation matrix (smooth noise from a coarse grid)."""
    position = np.linspace(0, coarse - 1, length)
    low = np.floor(position).astype(int).clip(0, coarse - 2)
    weight = position - low
    matrix = np.zeros((length, coarse), dtype=np.float32)
    matrix[np.arange(length), low] = 1 - weight
    matrix[np.arange(length), low + 1] = weight
    return matrix


class _Canvas:
    """Image and label being painted; shapes are rasterised in their bounding window only."""

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = height, width, rng
        self.image = np.empty((height, width, 3), dtype=np.float32)
        self.label = np.zeros((height, width), dtype=np.uint8)

    def window(self, cy: float, cx: float, radius: float):
        """Slices of the box around (cy, cx), with local offsets dy (h x 1) and dx (1 x w)."""
        y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, self.h)
        x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, self.w)
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        return (slice(y0, y1), slice(x0, x1)), dy, dx

    def paint(self, where, mask: np.ndarray, color: np.ndarray, shade, class_id: int | None):
        """Colour ``mask`` of window ``where`` as ``color * shade``; label it unless None."""
        region = self.image[where]
        shade = np.broadcast_to(shade, mask.shape)[mask]
        region[mask] = color[None, :] * shade[:, None]
        if class_id is not None:
            self.label[where][mask] = class_id


def _rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _background(canvas: _Canvas) -> None:
    rng, h, w = canvas.rng, canvas.h, canvas.w
    low = _color(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.6))
    high = _color(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.5, 0.9))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.arange(w)[None, :] / w + np.sin(angle) * np.arange(h)[:, None] / h
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    coarse = rng.normal(0, 0.12, size=(6, 6)).astype(np.float32)
    shading = 1 + _upsampler(h, 6) @ coarse @ _upsampler(w, 6).T
    canvas.image[:] = (low + (high - low) * ramp[..., None]) * shading[..., None]
    for _ in range(rng.integers(2, 7)):  # clutter blobs: background, whatever their size
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.04, 0.25) * min(h, w)
        found = canvas.window(cy, cx, r)
        if found:
            where, dy, dx = found
            u, v = _rotate(dy, dx, rng.uniform(0, np.pi))
            mask = (u / r) ** 2 + (v / (r * rng.uniform(0.3, 1))) ** 2 <= 1
            color = _color(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.25, 0.85))
            canvas.paint(where, mask, color, 1.0, None)
    for _ in range(rng.integers(0, 3)):  # dull strokes: thin like poles, but background
        _bar(canvas, _color(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.2, 0.7)), None)


def _bar(canvas: _Canvas, color: np.ndarray, class_id: int | None) -> None:
    rng, h, w = canvas.rng, canvas.h, canvas.w
    length = rng.uniform(0.3, 1.0) * h
    half_width = rng.uniform(0.75, 2.5)  # 1.5-5 px wide
    tilt = rng.normal(0, 0.2) if rng.random() < 0.7 else rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    found = canvas.window(cy, cx, length / 2 + half_width)
    if found:
        where, dy, dx = found
        across, along = _rotate(dy, dx, tilt)
        mask = (np.abs(across) <= half_width) & (np.abs(along) <= length / 2)
        canvas.paint(where, mask, color, 1.0, class_id)


def _object(canvas: _Canvas, class_id: int) -> None:
    rng, h, w = canvas.rng, canvas.h, canvas.w
    color = _color(_HUES[class_id] + rng.normal(0, 0.03), rng.uniform(0.55, 1), rng.uniform(0.6, 1))
    if class_id == 5:
        _bar(canvas, color, class_id)
        return
    size = min(h, w)
    cy, cx = rng.uniform(-0.05, 1.05) * h, rng.uniform(-0.05, 1.05) * w
    if class_id == 6:  # a cluster of small dots
        spread = rng.uniform(0.05, 0.2) * size
        for _ in range(rng.integers(3, 10)):
            r = rng.uniform(2.0, 5.0)
            y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
            found = canvas.window(y, x, r)
            if found:
                where, dy, dx = found
                canvas.paint(where, dy**2 + dx**2 <= r * r, color, 1.0, class_id)
        return
    r = rng.uniform(0.06, 0.33) * size
    found = canvas.window(cy, cx, r)
    if not found:
        return
    where, dy, dx = found
    u, v = _rotate(dy, dx, rng.uniform(0, 2 * np.pi))
    if class_id == 1:  # disc, shaded towards its rim
        distance = np.sqrt(dy**2 + dx**2) / r
        mask, shade = distance <= 1, 1 - 0.45 * distance
    elif class_id == 2:  # rotated box, checkered
        aspect = rng.uniform(0.5, 1)
        mask = (np.abs(u) <= r * 0.8) & (np.abs(v) <= r * 0.8 * aspect)
        period = rng.uniform(2.5, 6)
        shade = 0.65 + 0.35 * ((np.floor(u / period) + np.floor(v / period)) % 2)
    elif class_id == 3:  # triangle (three half-planes), striped
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        mask = np.ones(np.broadcast(dy, dx).shape, dtype=bool)
        for a in angles:  # inside: on the centre's side of each edge
            mask &= dx * np.cos(a) + dy * np.sin(a) <= r * 0.5
        shade = 0.7 + 0.3 * np.sin(2 * np.pi * u / rng.uniform(3, 7))
    else:  # ring: a wall 10-35% of the radius thick; the hole shows what lies behind
        distance = np.sqrt(dy**2 + dx**2)
        mask = (distance <= r) & (distance >= r * rng.uniform(0.65, 0.9))
        shade = 1.0
    canvas.paint(where, mask, color, shade, class_id)


def render_scene(
    height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: H x W x 3 uint8 RGB and H x W uint8 labels (0 background, 1-6 the shapes)."""
    canvas = _Canvas(height, width, rng)
    _background(canvas)
    # thin poles and small spots drawn a little more often: they are what boundaries test
    count = rng.integers(4, 10)
    for class_id in rng.choice(np.arange(1, 7), size=count, p=_CLASS_FREQUENCY):
        _object(canvas, int(class_id))
    noise = rng.normal(0, 4, size=(height, width, 1)).astype(np.float32)
    image = np.clip(canvas.image + noise, 0, 255).astype(np.uint8)
    return image, canvas.label


@register_dataset("synthetic", needs_root=False)
class SyntheticShapes(SegmentationDataset):
    """Procedural scenes, deterministic by (seed, split, index); see the module docstring.

    ``size`` is an int or (height, width); ``num_images`` defaults to 1000 for train and 100
    for val and test.
    """

    classes = SYNTHETIC_CLASSES
    palette = voc_palette(len(SYNTHETIC_CLASSES))

    def __init__(
        self,
        split: str = "train",
        transforms: Callable | None = None,
        *,
        size: int | tuple[int, int] = 128,
        num_images: int | None = None,
        seed: int = 0,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"synthetic has splits {', '.join(_SPLITS)}, not {split!r}")
        self.split, self.seed = split, int(seed)
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 8:
            raise ValueError(f"synthetic images need at least 8x8 pixels, got {self.size}")
        self.num_images = _DEFAULT_COUNTS[split] if num_images is None else int(num_images)
        super().__init__([], transforms)

    def __len__(self) -> int:
        return self.num_images

    @property
    def ids(self) -> list[str]:
        return [f"{self.split}_{i:06d}" for i in range(len(self))]

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` as numpy arrays (H x W x 3 uint8, H x W uint8)."""
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        return render_scene(*self.size, rng)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.generate(index)
        return image_to_tensor(image), torch.from_numpy(label.astype(np.int64))
