"""Joint image + label transforms for training, and the normalisation step.

Every step takes and returns ``(image, label)``. The image is a float tensor C x H x W in
0..255 RGB, or a dict of such tensors for multi-input datasets (NYUDv2: ``color``, ``depth``,
``hha``); the label is an int64 H x W tensor, or a dict of them (SIFT Flow: ``semantic``,
``geometric``). Geometric steps move every entry together; photometric jitter touches only the
colour image. The reference trains without augmentation (batch 1, whole images); these are
the options users expect on top.

Randomness comes from a ``torch.Generator``. A seeded ``Compose`` derives one per sample from
(seed, epoch, index), so a run repeats exactly whatever the number of loader workers.
Normalisation is the last step and takes the ``Normalization`` that the model's weights record
(``normalization_of(model)``), so preprocessing cannot be mismatched with the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..models.normalization import Normalization

__all__ = [
    "JointTransform",
    "Compose",
    "RandomScale",
    "RandomCrop",
    "RandomHorizontalFlip",
    "PhotometricJitter",
    "Normalize",
    "normalization_of",
    "zero_point",
    "train_transforms",
    "eval_transforms",
    "resize_image",
    "resize_label",
    "one_thread",
]

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
Fill = str | float | Sequence[float] | Normalization
COLOR_KEY = "color"  # the entry of a dict image that photometric jitter changes


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one thread, restoring the count after.

    Per-image ops are too small to share: on a busy 2-core machine, handing a 480x360 flip
    to a second thread took 8 ms against 0.15 ms on one. Loader workers already run on one
    thread; this gives the main process (num_workers=0) the same speed.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _each(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, Mapping):
        return {key: function(tensor) for key, tensor in value.items()}
    return function(value)


def _size(image: Inputs) -> tuple[int, int]:
    tensor = next(iter(image.values())) if isinstance(image, Mapping) else image
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform in 0..high inclusive."""
    return int(torch.randint(high + 1, (), generator=generator))


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of C x H x W (antialiased when shrinking)."""
    shrink = height < image.shape[-2] or width < image.shape[-1]
    return F.interpolate(
        image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
    )[0]


def resize_label(label: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest resize of H x W by index selection: exact for any integer dtype."""
    in_h, in_w = label.shape[-2:]
    rows = ((torch.arange(height) + 0.5) * (in_h / height)).long().clamp_(max=in_h - 1)
    cols = ((torch.arange(width) + 0.5) * (in_w / width)).long().clamp_(max=in_w - 1)
    return label.index_select(-2, rows).index_select(-1, cols)


def zero_point(normalization: Normalization) -> tuple[float, ...]:
    """The RGB 0..255 pixel that ``normalization`` maps to zero (its mean, in image units)."""
    mean = [m * 255.0 / normalization.input_range for m in normalization.mean]
    return tuple(reversed(mean)) if normalization.bgr else tuple(mean)


def normalization_of(model: Any) -> Normalization:
    """The input convention recorded by a model (or its backbone) for its weights."""
    for owner in (model, getattr(model, "backbone", None)):
        normalization = getattr(owner, "normalization", None)
        if isinstance(normalization, Normalization):
            return normalization
    raise ValueError(
        f"{type(model).__name__} records no .normalization: build it with fcnseg's builders "
        "or pass the Normalization of its weights explicitly"
    )


class JointTransform:
    """A step ``(image, label, generator=None) -> (image, label)``."""

    def __call__(
        self, image: Inputs, label: Any, *, generator: torch.Generator | None = None
    ) -> tuple[Inputs, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose(JointTransform):
    """Steps applied in order. With ``seed``, each sample's randomness is a pure function of
    (seed, epoch, index): the dataset passes ``index``, ``set_epoch`` moves to a new epoch."""

    def __init__(self, steps: Sequence[Callable], *, seed: int | None = None) -> None:
        self.steps = list(steps)
        self.seed = seed
        self.epoch = 0
        self._stream = torch.Generator().manual_seed(seed) if seed is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, index: int | None) -> torch.Generator | None:
        if self.seed is None:
            return None  # torch's global generator (seeded per worker by the DataLoader)
        if index is None:
            return self._stream  # sequential calls without an index: one seeded stream
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __call__(
        self,
        image: Inputs,
        label: Any,
        *,
        index: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Inputs, Any]:
        generator = generator if generator is not None else self._generator(index)
        with one_thread():
            for step in self.steps:
                if isinstance(step, JointTransform):
                    image, label = step(image, label, generator=generator)
                else:
                    image, label = step(image, label)
        return image, label

    def __repr__(self) -> str:
        inner = ", ".join(repr(step) for step in self.steps)
        return f"Compose([{inner}], seed={self.seed})"


class RandomScale(JointTransform):
    """Resize by a factor drawn uniformly from [min_scale, max_scale] (bilinear / nearest)."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, image, label, *, generator=None):
        factor = _uniform(self.min_scale, self.max_scale, generator)
        height, width = _size(image)
        new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
        if (new_h, new_w) == (height, width):
            return image, label
        image = _each(image, lambda t: resize_image(t, new_h, new_w))
        label = _each(label, lambda t: resize_label(t, new_h, new_w))
        return image, label


def _fill_values(image: torch.Tensor, fill: Any) -> torch.Tensor:
    """Per-channel padding values for ``image`` (C,)."""
    channels = image.shape[0]
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(
                f"fill must be 'mean', a number, a sequence or a Normalization, got {fill!r}"
            )
        return image.mean(dim=(-2, -1))
    if isinstance(fill, Normalization):
        fill = zero_point(fill)
    values = torch.as_tensor(fill, dtype=image.dtype).flatten()
    if values.numel() == 1:
        values = values.expand(channels)
    if values.numel() != channels:
        raise ValueError(f"fill has {values.numel()} values for an image of {channels} channels")
    return values


class RandomCrop(JointTransform):
    """A random ``size`` window; a smaller image is placed at a random offset on a canvas of
    its mean colour (or ``fill``) with ignored labels, so padding teaches nothing.

    ``fill`` is 'mean' (each image's own channel means), numbers, or a ``Normalization``
    (its zero point, so padding is exactly 0 after normalisation); a dict image may give a
    dict of fills by key (missing keys use 'mean').
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        fill: Fill | Mapping[str, Fill] = "mean",
        ignore_index: int = 255,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if min(self.size) < 1:
            raise ValueError(f"crop size must be positive, got {size}")
        self.fill = fill
        self.ignore_index = ignore_index

    @staticmethod
    def _window(length: int, crop: int, generator) -> tuple[int, int, int]:
        """(source start, destination start, span) along one axis."""
        if length >= crop:
            return _randint(length - crop, generator), 0, crop
        return 0, _randint(crop - length, generator), length

    def __call__(self, image, label, *, generator=None):
        height, width = _size(image)
        src_y, dst_y, span_y = self._window(height, self.size[0], generator)
        src_x, dst_x, span_x = self._window(width, self.size[1], generator)
        source = (slice(src_y, src_y + span_y), slice(src_x, src_x + span_x))
        destination = (slice(dst_y, dst_y + span_y), slice(dst_x, dst_x + span_x))

        def place(tensor: torch.Tensor, fill: torch.Tensor | int) -> torch.Tensor:
            shape = (*tensor.shape[:-2], *self.size)
            if isinstance(fill, torch.Tensor):
                canvas = fill.to(tensor.dtype).view(-1, 1, 1).expand(shape).clone()
            else:
                canvas = torch.full(shape, fill, dtype=tensor.dtype)
            canvas[(..., *destination)] = tensor[(..., *source)]
            return canvas

        if isinstance(image, Mapping):
            fills = self.fill if isinstance(self.fill, Mapping) else {COLOR_KEY: self.fill}
            image = {
                key: place(t, _fill_values(t, fills.get(key, "mean"))) for key, t in image.items()
            }
        else:
            image = place(image, _fill_values(image, self.fill))
        label = _each(label, lambda t: place(t, self.ignore_index))
        return image, label


class RandomHorizontalFlip(JointTransform):
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image, label, *, generator=None):
        if float(torch.rand((), generator=generator)) >= self.p:
            return image, label
        flip = lambda t: t.flip(-1)  # noqa: E731
        return _each(image, flip), _each(label, flip)


def _gray(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, 1 x H x W."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(0, keepdim=True)


class PhotometricJitter(JointTransform):
    """Brightness, contrast and saturation scaled by factors in [1 - x, 1 + x], clamped to
    0..255. Only the colour image changes (depth, HHA and labels stay as they are)."""

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25):
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not 0 <= value < 1:
                raise ValueError(f"{name} jitter must be in [0, 1), got {value}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def _jitter(self, image: torch.Tensor, generator) -> torch.Tensor:
        b = _uniform(1 - self.brightness, 1 + self.brightness, generator)
        c = _uniform(1 - self.contrast, 1 + self.contrast, generator)
        s = _uniform(1 - self.saturation, 1 + self.saturation, generator)
        image = image * b
        image = (image - image.mean()) * c + image.mean()
        if image.shape[0] == 3:
            gray = _gray(image)
            image = (image - gray) * s + gray
        return image.clamp_(0.0, 255.0)

    def __call__(self, image, label, *, generator=None):
        if isinstance(image, Mapping):
            if COLOR_KEY not in image:
                return image, label
            return {**image, COLOR_KEY: self._jitter(image[COLOR_KEY], generator)}, label
        return self._jitter(image, generator), label


class Normalize(JointTransform):
    """The model's input convention: a ``Normalization`` (or any image -> image callable), or a
    dict of them by input name for dict images."""

    def __init__(self, normalization: Callable | Mapping[str, Callable]) -> None:
        self.normalization = normalization

    def __call__(self, image, label, *, generator=None):
        if isinstance(image, Mapping):
            if not isinstance(self.normalization, Mapping):
                if set(image) != {COLOR_KEY}:
                    raise ValueError(
                        f"inputs {sorted(image)} need a normalisation each: pass a dict by input name"
                    )
                return {COLOR_KEY: self.normalization(image[COLOR_KEY])}, label
            missing = set(image) - set(self.normalization)
            if missing:
                raise ValueError(f"no normalisation given for input(s) {sorted(missing)}")
            return {key: self.normalization[key](t) for key, t in image.items()}, label
        if isinstance(self.normalization, Mapping):
            raise ValueError("a dict of normalisations needs a dict image (several inputs)")
        return self.normalization(image), label


def _convention(source: Any) -> Any:
    """A model stands for the normalisation it records; anything else is used as given."""
    return normalization_of(source) if isinstance(source, torch.nn.Module) else source


def train_transforms(
    normalization: Callable | Mapping[str, Callable] | torch.nn.Module | None,
    *,
    crop_size: int | tuple[int, int] | None = None,
    scale: tuple[float, float] | None = (0.5, 2.0),
    flip: bool = True,
    jitter: bool = True,
    seed: int | None = None,
) -> Compose:
    """The usual training pipeline: scale, crop (padding with the zero point), flip, jitter,
    normalise. ``normalization`` is the model itself (its recorded convention is used), a
    ``Normalization``, a dict of them by input, or None to leave images in 0..255 RGB."""
    normalization = _convention(normalization)
    steps: list[JointTransform] = []
    if scale is not None:
        steps.append(RandomScale(*scale))
    if crop_size is not None:
        fill = normalization if isinstance(normalization, Normalization) else "mean"
        steps.append(RandomCrop(crop_size, fill=fill))
    if flip:
        steps.append(RandomHorizontalFlip())
    if jitter:
        steps.append(PhotometricJitter())
    if normalization is not None:
        steps.append(Normalize(normalization))
    return Compose(steps, seed=seed)


def eval_transforms(normalization: Callable | Mapping[str, Callable] | torch.nn.Module) -> Compose:
    """Whole images, normalised (as the model records, when given the model): the
    reference's evaluation input."""
    return Compose([Normalize(_convention(normalization))])
