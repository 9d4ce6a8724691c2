"""Prediction with a trained FCN: ``Segmenter.from_checkpoint(path).predict(image)``.

An FCN takes any input size (Section 3: "fully convolutional networks ... take input of
arbitrary size and produce correspondingly-sized output"), so images are predicted whole,
never resized or tiled: the label map has the image's height and width.

A multi-input model (NYUDv2 RGB-D, RGB-HHA) predicts from a dict of its inputs
(``{"color": ..., "depth": ...}``), each normalised as the model says; a multi-task model
(SIFT Flow) gives one label map per task, as a dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.base import image_to_tensor, read_depth, read_image
from .data.palettes import flat_palette, voc_palette
from .engine.checkpoint import load_checkpoint, model_from_checkpoint
from .models import FCN, Normalization
from .speed import InferenceOptions, compiled, fast_forward, prepare_model
from .tiling import Tiling, sliding_window

__all__ = ["Segmenter", "load_rgb", "load_input", "save_mask"]

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path
Palette = Sequence[Sequence[int]]


class Segmenter:
    """A model with its classes, palette and input normalisation, ready to predict.

    The model is switched to eval mode once, here (dropout off, batch-norm statistics
    fixed): a Segmenter exists to predict. Build one from a checkpoint with
    ``from_checkpoint``. ``speed`` says how it runs (``fcnseg.speed``): by default
    channels-last in fp32 under inference mode with batch norms folded into their
    convolutions (the fastest measured, docs/BENCHMARKS.md); this prepares the model in
    place, for inference only (pass a copy to keep training the original).
    ``InferenceOptions(bf16=True)`` adds bf16 autocast where bf16 measures faster,
    ``InferenceOptions(compile=True)`` compiles it (worth it for many images of one size).
    ``tiling`` (``fcnseg.tiling.Tiling``) scores images larger than a tile in overlapping
    tiles, bounding memory by the tile size instead of the image size.
    """

    def __init__(
        self,
        model: FCN | torch.nn.Module,
        *,
        classes: Sequence[str] | Mapping[str, Sequence[str]],
        palette: Palette | Mapping[str, Palette] | None = None,
        normalization: Normalization | Mapping[str, Any] | None = None,
        device: torch.device | str = "cpu",
        ignore_index: int = 255,
        speed: InferenceOptions | None = None,
        tiling: Tiling | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.speed = speed or InferenceOptions()
        self.tiling = tiling
        self.model = prepare_model(model.to(self.device).eval(), self.speed)
        self._runner = compiled(self.model, self.speed)
        if isinstance(classes, Mapping):  # a multi-task model: names and colours by task
            palette = palette or {}
            self.classes = {task: tuple(names) for task, names in classes.items()}
            self.palette = {task: _colors(palette.get(task)) for task in self.classes}
            counts = {task: len(names) for task, names in self.classes.items()}
        else:
            self.classes, self.palette = tuple(classes), _colors(palette)
            counts = len(self.classes)
        self.normalization = normalization or model.normalization
        self.ignore_index = ignore_index
        if counts != model.num_classes:
            raise ValueError(f"{counts} class names for a model of {model.num_classes} classes")

    @classmethod
    def from_checkpoint(
        cls,
        path: Path | str,
        *,
        device: torch.device | str = "cpu",
        speed: InferenceOptions | None = None,
        tiling: Tiling | None = None,
    ) -> Segmenter:
        """Load a checkpoint written by ``fcnseg train`` (weights only; no code is run).

        A ``.onnx`` file from ``fcnseg export onnx`` runs in onnxruntime instead.
        """
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, tiling=tiling)
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path)
        return cls(
            model,
            classes=checkpoint["classes"],
            palette=checkpoint.get("palette"),
            device=device,
            ignore_index=checkpoint.get("ignore_index", 255),
            speed=speed,
            tiling=tiling,
        )

    @classmethod
    def from_onnx(cls, path: Path | str, *, tiling: Tiling | None = None) -> Segmenter:
        """An FCN exported by ``fcnseg export onnx``, run by onnxruntime on the CPU.

        The file records the class count and the input normalisation, not the class names:
        classes are named "class 0", "class 1", ... and drawn in the VOC palette.
        """
        from .export import load_onnx  # onnxruntime is an optional dependency

        runner = load_onnx(path)
        if runner.num_classes is None or runner.normalization is None:
            raise ValueError(
                f"{path}: no fcnseg metadata (class count, normalisation): export it with "
                "fcnseg export onnx"
            )
        return cls(
            _OnnxModule(runner),
            classes=[f"class {index}" for index in range(runner.num_classes)],
            palette=voc_palette(runner.num_classes),
            normalization=runner.normalization,
            speed=InferenceOptions(channels_last=False, bf16=False),  # onnxruntime decides
            tiling=tiling,
        )

    @property
    def num_classes(self) -> int | dict[str, int]:
        return self.model.num_classes

    @property
    def inputs(self) -> tuple[str, ...] | None:
        """The inputs a multi-input model reads (``("color", "depth")``), or None."""
        return tuple(self.normalization) if isinstance(self.normalization, Mapping) else None

    @torch.inference_mode()
    def predict(self, image: ImageLike | Mapping[str, ImageLike], probabilities: bool = False):
        """The H x W label map (uint8 when the classes fit, else int64) of one image.

        ``image``: a PIL image, an H x W x 3 (or H x W) uint8 array in RGB, a 3 x H x W tensor
        in 0..255, or a file path (an unreadable file raises ``DatasetError``); for a
        multi-input model a dict of such inputs by name (depth: H x W as stored, or its
        16-bit PNG). With ``probabilities`` the result is ``(labels, probs)``, ``probs`` a
        C x H x W float32 array of class probabilities. A multi-task model gives dicts by
        task: ``{"semantic": labels, "geometric": labels}`` (and the same for ``probs``).
        """
        scores = self.scores(self._batch(image))
        if isinstance(scores, Mapping):
            results = {task: _label_map(s[0].float(), probabilities) for task, s in scores.items()}
            if not probabilities:
                return results
            return {t: r[0] for t, r in results.items()}, {t: r[1] for t, r in results.items()}
        return _label_map(scores[0].float(), probabilities)

    def scores(self, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's float32 scores for a normalised batch, whole or tile by tile."""
        forward = partial(fast_forward, self._runner, options=self.speed)
        if self.tiling is None:
            return forward(batch)
        return sliding_window(forward, batch, self.tiling)

    def _batch(self, image: ImageLike | Mapping[str, ImageLike]) -> Any:
        """A batch of one, normalised: a tensor, or a dict by input for multi-input models."""
        inputs = self.inputs
        if inputs is None:
            return self.normalization(load_rgb(image))[None].to(self.device)
        if not isinstance(image, Mapping) or set(image) != set(inputs):
            given = sorted(image) if isinstance(image, Mapping) else type(image).__name__
            raise ValueError(
                f"this model reads {list(inputs)}, got {given}: pass a dict with one image "
                "per input"
            )
        return {
            name: self.normalization[name](load_input(name, image[name]))[None].to(self.device)
            for name in inputs
        }


class _OnnxModule(torch.nn.Module):
    """An onnxruntime session behind the interface Segmenter uses (tensor in, tensor out)."""

    def __init__(self, runner) -> None:
        super().__init__()
        self.runner, self.num_classes = runner, runner.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner(x.cpu().numpy()))


def _colors(palette: Palette | None) -> list[tuple[int, ...]]:
    return [tuple(int(c) for c in color) for color in (palette or [])]


def _label_map(scores: torch.Tensor, probabilities: bool):
    """Labels of C x H x W scores (uint8 when the classes fit), with probabilities if asked."""
    labels = scores.argmax(0).cpu().numpy()
    labels = labels.astype(np.uint8 if scores.shape[0] <= 256 else np.int64)
    if not probabilities:
        return labels
    return labels, scores.softmax(0).cpu().numpy()


def load_input(name: str, image: ImageLike) -> torch.Tensor:
    """One input of a multi-input model as a C x H x W float tensor: colour as
    ``load_rgb``; depth as stored (a 16-bit PNG or an H x W array); HHA as an RGB image."""
    if name == "color":
        return load_rgb(image)
    if isinstance(image, str | Path):
        array = read_depth(Path(image)) if name == "depth" else read_image(Path(image))
        return image_to_tensor(array)
    if isinstance(image, torch.Tensor):
        return image.float() if image.dim() == 3 else image.float()[None]
    return image_to_tensor(np.asarray(image, dtype=np.float32))


def load_rgb(image: ImageLike) -> torch.Tensor:
    """A 3 x H x W float tensor of 0..255 RGB from any accepted image form.

    Arrays and tensors are taken as 0..255, whatever their dtype: uint8 as it is, and float
    too (the scale ``fcnseg.data`` readers produce). A float image whose largest value is at
    most 1.0 and that is not all zero is refused with a ValueError: it looks like 0..1
    (torchvision's ToTensor), which the model would see as an almost black image; multiply
    it by 255 first.
    """
    if isinstance(image, str | Path):
        array = read_image(Path(image))  # EXIF-upright, any mode to RGB; DatasetError if bad
        return image_to_tensor(array)
    if isinstance(image, Image.Image):
        return image_to_tensor(np.asarray(image.convert("RGB")))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
        if image.is_floating_point():
            _check_0_to_255(float(image.max()) if image.numel() else 0.0)
        return image.float()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        _check_0_to_255(float(array[..., :3].max(initial=0.0)))
    return image_to_tensor(array[..., :3].astype(np.float32))


def _check_0_to_255(largest: float) -> None:
    """Refuse a float image in 0..1: predicting it as 0..255 gives garbage without a word."""
    if 0.0 < largest <= 1.0:
        raise ValueError(
            f"the float image's values are at most {largest:g}, which looks like 0..1 "
            "(ToTensor): multiply by 255 (images are 0..255, uint8 or float)"
        )


def save_mask(labels: np.ndarray, path: Path | str, palette: Sequence[Sequence[int]]) -> None:
    """An index PNG (mode P): pixel values are the class indices, shown in ``palette``."""
    if labels.max(initial=0) > 255:
        raise ValueError("an index PNG holds at most 256 classes: save the labels as .npy")
    mask = Image.fromarray(labels.astype(np.uint8))  # mode L; a palette makes it P
    mask.putpalette(flat_palette([tuple(color) for color in palette]))
    mask.save(path)
