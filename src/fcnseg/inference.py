"""Prediction with a trained FCN: ``Segmenter.from_checkpoint(path).predict(image)``.

An FCN takes any input size (Section 3: "fully convolutional networks ... take input of
arbitrary size and produce correspondingly-sized output"), so images are predicted whole,
never resized or tiled: the label map has the image's height and width.

``engine`` picks what runs the model: PyTorch, or its ONNX export in ONNX Runtime or
OpenVINO (``fcnseg.engines``; ``"auto"`` picks the fastest measured). ``tta``
(``fcnseg.tta.TTA``) averages the scores of flipped and rescaled copies, on any engine.

A multi-input model (NYUDv2 RGB-D, RGB-HHA) predicts from a dict of its inputs
(``{"color": ..., "depth": ...}``), each normalised as the model says; a multi-task model
(SIFT Flow) gives one label map per task, as a dict.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .data.base import image_to_tensor, open_image, read_depth, read_image, rgb_array
from .data.palettes import flat_palette, voc_palette
from .devices import resolve_device
from .engines import (
    EngineError,
    cached_onnx,
    choose_engine,
    file_record,
    onnx_module,
)
from .fileio import atomic_write
from .metrics import class_labels
from .modelfile import read_record
from .models import FCN, InputSpec, ModelSpec
from .scoring import score
from .speed import (
    AdaptiveThreads,
    InferenceOptions,
    compiled,
    fast_forward,
    one_torch_thread,
    prepare_model,
)
from .tiling import Tiling, check_tile_size, sliding_window
from .tta import TTA, tta_forward
from .version import __version__
from .viz import overlay, overlay_picture
from .zoo import INT8, entry, is_pretrained_name, model_file

__all__ = [
    "Segmenter",
    "load_rgb",
    "load_input",
    "save_mask",
    "mask_image",
    "png_bytes",
    "backdrop",
    "prepared_size",
]

# The PNG text chunk that marks predict's outputs (masks and overlays).
MARK_KEY, MARK_VALUE = "Software", "fcnseg predict"

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path
Palette = Sequence[Sequence[int]]


class Segmenter:
    """A model with its classes, palette and input normalisations, ready to predict.

    Any model of the library: its inputs and tasks come from ``model.spec``. The model is
    switched to eval mode once, here (dropout off, batch-norm statistics fixed): a
    Segmenter exists to predict. ``speed`` says how it runs (``fcnseg.speed``): by default
    channels-last in fp32 under inference mode with batch norms folded into their
    convolutions (the fastest measured, docs/BENCHMARKS.md); **this prepares the model in
    place**, for inference only (pass a copy to keep training the original).
    ``InferenceOptions(bf16=True)`` adds bf16 autocast where bf16 measures faster,
    ``InferenceOptions(compile=True)`` compiles it (worth it for many images of one size).
    ``tiling`` (``fcnseg.tiling.Tiling``) scores images larger than a tile in overlapping
    tiles, bounding memory by the tile size instead of the image size; a tile side below
    the model's coarsest stride is refused (``check_tile_size``). ``tta`` averages
    the scores of flipped and rescaled copies of each image (``fcnseg.tta``).

    ``classes`` and ``palette`` are lists for a single-task model, or dicts by task; left
    out, classes are named "class 0", "class 1", ... and drawn in the VOC palette.
    ``device="auto"`` runs on the GPU when there is one, else on the CPU.
    """

    def __init__(
        self,
        model: FCN | torch.nn.Module,
        *,
        classes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        palette: Palette | Mapping[str, Palette] | None = None,
        device: torch.device | str = "cpu",  # or "auto": the GPU if there is one
        ignore_index: int = 255,
        speed: InferenceOptions | None = None,
        tiling: Tiling | None = None,
        tta: TTA | None = None,
        threads: int | str | None = None,
    ) -> None:
        self.spec: ModelSpec = model.spec
        self.engine = getattr(model, "engine", "torch")
        self.tta = tta
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.speed = speed or InferenceOptions()
        if tiling is not None:
            check_tile_size(tiling, self.spec.output_stride)
        self.tiling = tiling
        self.model = prepare_model(model.to(self.device).eval(), self.speed)
        self._runner = compiled(self.model, self.speed)
        self.ignore_index = ignore_index
        self.task_classes = _names_by_task(classes, self.spec)
        self.task_palettes = _palettes_by_task(palette, self.spec)
        self.threads = self._thread_choice(threads)

    def _thread_choice(self, threads: int | str | None) -> AdaptiveThreads | None:
        """``threads`` on the torch engine: None leaves torch's count alone, a number sets
        it, ``"auto"`` chooses per call (``AdaptiveThreads``; the CPU only)."""
        if threads == "auto":
            on_cpu = self.engine == "torch" and self.device.type == "cpu"
            return AdaptiveThreads() if on_cpu else None
        if isinstance(threads, bool) or not (threads is None or isinstance(threads, int)):
            raise ValueError(f"threads={threads!r}: give a number of threads, None or 'auto'")
        if threads is not None and self.engine == "torch":
            if threads < 1:
                raise ValueError(f"threads={threads}: give 1 or more")
            torch.set_num_threads(threads)
        return None

    @classmethod
    def from_checkpoint(
        cls,
        path: Path | str,
        *,
        device: torch.device | str = "cpu",
        speed: InferenceOptions | None = None,
        tiling: Tiling | None = None,
        tta: TTA | None = None,
        engine: str | None = None,
        threads: int | None = None,
    ) -> Segmenter:
        """Load a checkpoint or weights file of fcnseg (weights only; no code is run).

        ``engine``: ``torch``, ``onnxruntime``, ``openvino`` or ``auto`` (``fcnseg.engines``);
        the ONNX engines run the checkpoint's export, cached beside it. None: ``torch`` for
        a checkpoint, ``auto`` for an ONNX file. ``threads``: the compute threads of the
        engine, whichever it is (default: torch's count); torch has one count per process,
        which a torch-engine Segmenter given ``threads`` sets; ``"auto"`` lets the torch
        engine choose per call between one thread and all (``fcnseg.speed.AdaptiveThreads``:
        a machine with a busy core makes more threads slower) and gives the ONNX engines
        torch's count. A ``.onnx`` file from ``fcnseg export onnx`` or ``fcnseg quantize``
        runs on an ONNX engine.
        """
        onnx_threads = None if threads == "auto" else threads
        if Path(path).suffix.lower() == ".onnx":
            engine = engine or "auto"
            return cls.from_onnx(path, tiling=tiling, tta=tta, engine=engine, threads=onnx_threads)
        record = read_record(path, what="checkpoint")
        where = device if isinstance(device, torch.device) else resolve_device(device)
        chosen = choose_engine(engine or "torch", record.spec, str(where))
        if chosen != "torch":
            exported = cached_onnx(path, record)
            return cls.from_onnx(
                exported, tiling=tiling, tta=tta, engine=chosen, threads=onnx_threads
            )
        return cls(
            record.build(),
            classes=record.classes,
            palette=record.palette or None,
            device=device,
            ignore_index=record.ignore_index,
            speed=speed,
            tiling=tiling,
            tta=tta,
            threads=threads,
        )

    @classmethod
    def from_pretrained(cls, name: str, *, int8: bool = False, **options: Any) -> Segmenter:
        """A trained model of the zoo (``fcnseg.pretrained()``), e.g.
        ``"fcn8s_efficientnet_lite0.camvid"``; ``int8=True`` (or the name
        ``"<entry>.int8"``) runs its int8 ONNX file. ``options`` are
        ``from_checkpoint``'s (device, speed, tiling, tta, engine, threads). Nothing is
        downloaded: the files ship with fcnseg and are checked against their sha256."""
        name = name + INT8 if int8 and not name.endswith(INT8) else name
        if not is_pretrained_name(name):
            entry(name.removesuffix(INT8))  # the one-line error naming the closest entries
        return cls.from_checkpoint(model_file(name), **options)

    @classmethod
    def from_onnx(
        cls,
        path: Path | str,
        *,
        tiling: Tiling | None = None,
        tta: TTA | None = None,
        engine: str = "auto",
        threads: int | None = None,
    ) -> Segmenter:
        """A model exported by ``fcnseg export onnx`` (or ``fcnseg quantize``), run on the
        CPU by onnxruntime or OpenVINO (``auto``: OpenVINO when installed), with the class
        names and palette the file records."""
        if engine == "torch":
            raise EngineError(f"{path}: an .onnx file runs on onnxruntime or openvino, not torch")
        engine = choose_engine(engine, None)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        record = file_record(path)
        threads = threads or torch.get_num_threads()
        return cls(
            onnx_module(engine, path, record["spec"], threads),
            classes=record.get("classes") or None,
            palette=record.get("palette") or None,
            ignore_index=int(record.get("ignore_index", 255)),
            speed=InferenceOptions(channels_last=False, bf16=False, fold_batch_norm=False),
            tiling=tiling,
            tta=tta,
        )

    # -- what it predicts

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.spec.task_names

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.spec.input_names

    @property
    def classes(self) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
        """The class names, or a dict of them by task for a multi-task model."""
        return _single_or_dict(self.task_classes)

    @property
    def palette(self) -> list[tuple[int, ...]] | dict[str, list[tuple[int, ...]]]:
        return _single_or_dict(self.task_palettes)

    @property
    def num_classes(self) -> int | dict[str, int]:
        return _single_or_dict(self.spec.task_classes)

    @property
    def normalization(self):
        """The input normalisation, or a dict by input for a multi-input model."""
        norms = {item.name: item.normalization for item in self.spec.inputs}
        return _single_or_dict(norms)

    # -- predicting

    @torch.inference_mode()
    def predict(
        self,
        image: ImageLike | Mapping[str, ImageLike] | Sequence[Any],
        probabilities: bool = False,
        *,
        batch_size: int = 8,
    ):
        """The H x W label map (uint8 when the classes fit, else int64) of one image, or a
        list of them for several.

        ``image``: a PIL image, an H x W x 3 (or H x W) uint8 array in RGB, a 3 x H x W
        tensor in 0..255, or a file path (an unreadable file raises ``DatasetError``); for
        a multi-input model a dict of such inputs by name (depth: H x W as stored, or its
        16-bit PNG). With ``probabilities`` the result is ``(labels, probs)``, ``probs`` a
        C x H x W float32 array of class probabilities. A multi-task model gives dicts by
        task: ``{"semantic": labels, "geometric": labels}`` (and the same for ``probs``).

        Several images: a list (or tuple) of such images (dicts for a multi-input model),
        an N x C x H x W tensor or an N x H x W x C array give a list with one result per
        image, in order. Images of one size run together, ``batch_size`` at a time.
        """
        if _is_many(image):
            return self._predict_many(list(image), probabilities, batch_size)
        return _for_user(*self.label_maps(image, probabilities))

    def label_maps(
        self, image: ImageLike | Mapping[str, ImageLike], probabilities: bool = False
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """``predict`` of one image, by task whatever the model: the label maps, and their
        probabilities (None unless asked). For code that handles every model alike, where
        ``predict`` gives a single-task model's map itself."""
        return self._maps(self.batch(image), probabilities)[0]

    def overlay(
        self,
        image: ImageLike | Mapping[str, ImageLike],
        labels: np.ndarray | Mapping[str, np.ndarray] | None = None,
        *,
        task: str | None = None,
        legend: bool = True,
        alpha: float = 0.5,
    ) -> Image.Image:
        """``image`` with its classes painted over it: with ``legend``, the picture ``fcnseg
        predict`` saves as ``<name>_overlay.png`` (a legend of the classes shown under the
        image), else the image's own size (``fcnseg.viz.overlay``). ``labels``: what
        ``predict`` gave for it (predicted here when None); ``task`` picks a multi-task
        model's head (default: its first). A multi-input model draws on its colour input::

            segmenter.overlay("street.jpg").save("street_overlay.png")
        """
        task = task or self.tasks[0]
        if task not in self.tasks:
            raise ValueError(f"task {task!r}: the model predicts {list(self.tasks)}")
        if labels is None:
            labels = self.label_maps(image)[0][task]
        elif isinstance(labels, Mapping):
            labels = labels[task]
        raw = image if isinstance(image, Mapping) else {self.inputs[0]: image}
        loaded = {item.name: load_input(raw[item.name], item) for item in self.spec.inputs}
        rgb = backdrop(loaded, self.spec).permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        palette, classes = self.task_palettes[task], self.task_classes[task]
        if legend:
            picture = overlay_picture(
                rgb, labels, palette, classes, alpha=alpha, ignore_index=self.ignore_index
            )
        else:
            picture = overlay(
                rgb, labels, palette, alpha, classes=classes, ignore_index=self.ignore_index
            )
        return Image.fromarray(picture)

    def _predict_many(self, images: list, probabilities: bool, batch_size: int) -> list:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        inputs = [self.prepared(image) for image in images]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(inputs):
            by_size.setdefault(prepared_size(item), []).append(index)
        results: list[Any] = [None] * len(inputs)
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                maps = self.label_maps_of([inputs[i] for i in chunk], probabilities)
                for index, (labels, probs) in zip(chunk, maps, strict=True):
                    results[index] = _for_user(labels, probs)
        return results

    def label_maps_of(
        self, prepared: Sequence[Mapping[str, torch.Tensor]], probabilities: bool = False
    ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]]:
        """``label_maps`` of several ``prepared`` images of one size, run as one batch: what
        a server batching its requests calls."""
        batch = {
            name: torch.stack([item[name] for item in prepared]).to(self.device)
            for name in self.inputs
        }
        return self._maps(batch, probabilities)

    @property
    def _engine_labels(self) -> bool:
        """Whether the engine's own arg-max gives the label maps (see ``_maps``)."""
        plain = self.tiling is None and self.tta is None
        return plain and getattr(self.model, "has_labels", False)

    def _maps(self, batch: Mapping[str, torch.Tensor], probabilities: bool) -> list:
        """(labels by task, probabilities by task or None) of each image of ``batch``. An
        ONNX engine that takes the arg-max itself hands over the label maps, not C times
        their size in scores, when nothing else needs the scores (probabilities, tiles or
        TTA copies to combine)."""
        rows = range(next(iter(batch.values())).shape[0])
        if not probabilities and self._engine_labels:
            labels = self.model.labels(batch)
            return [({task: maps[row].numpy() for task, maps in labels.items()}, None) for row in rows]  # fmt: skip
        scores = self.scores(batch)
        with self._torch_side():
            return [_by_task(scores, row, probabilities) for row in rows]

    def _torch_side(self):
        """What runs torch's small work beside the engine: one torch thread beside an ONNX
        engine (``fcnseg.speed.one_torch_thread``), torch's own count on the torch engine."""
        return one_torch_thread() if self.engine != "torch" else contextlib.nullcontext()

    def scores(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's float32 scores by task for a normalised batch (inputs by name),
        whole or tile by tile, averaged over the TTA copies when asked. A batch that does
        not fit in memory raises a MemoryError that says which tiles to use."""
        if self.threads is None:
            return self._all_scores(batch)
        first = next(iter(batch.values()))
        with self.threads.call(first.shape[0] * first.shape[-2] * first.shape[-1]):
            return self._all_scores(batch)

    def _all_scores(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        forward = partial(fast_forward, self._scores, options=self.speed)
        if self.tiling is not None:
            forward = partial(sliding_window, forward, tiling=self.tiling)
        try:
            if self.tta is not None:
                return tta_forward(forward, batch, self.tta)
            return forward(batch)
        except (MemoryError, RuntimeError) as error:
            if not _out_of_memory(error):
                raise
            height, width = next(iter(batch.values())).shape[-2:]
            raise MemoryError(self._tile_advice(height, width)) from None

    def _tile_advice(self, height: int, width: int) -> str:
        """What to do about an image that does not fit: tiles of 1024 (the size the
        benchmarks measure for Lite0), or half the tiles already used."""
        if self.tiling is None:
            what, side = "to predict whole", 1024
        else:
            tile_height, tile_width = self.tiling.size
            what, side = f"in tiles of {tile_height}x{tile_width}", min(self.tiling.size) // 2
        if side < self.spec.output_stride:
            return f"image {height}x{width} does not fit in memory {what}: free some memory"
        return (
            f"image {height}x{width} does not fit in memory {what}: predict it in tiles of "
            f"{side} pixels (tiling=Tiling.of({side}); fcnseg predict --tile {side})"
        )

    def _scores(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return score(self._runner, batch)

    def batch(self, image: ImageLike | Mapping[str, ImageLike]) -> dict[str, torch.Tensor]:
        """A batch of one, normalised, by input name. A single-input model takes the image
        itself (or a dict naming its input)."""
        return {name: x[None].to(self.device) for name, x in self.prepared(image).items()}

    def prepared(self, image: ImageLike | Mapping[str, ImageLike]) -> dict[str, torch.Tensor]:
        """Each input of one image as a normalised C x H x W tensor (on the CPU), by input
        name: images of one size (``prepared_size``) batch together in ``label_maps_of``."""
        if not isinstance(image, Mapping):
            if len(self.spec.inputs) != 1:
                raise ValueError(
                    f"this model reads {list(self.inputs)}, got {type(image).__name__}: pass a "
                    "dict with one image per input"
                )
            image = {self.inputs[0]: image}
        if set(image) != set(self.inputs):
            raise ValueError(
                f"this model reads {list(self.inputs)}, got {sorted(image)}: pass one image "
                "per input"
            )
        with self._torch_side():
            inputs = {
                item.name: item.normalization(load_input(image[item.name], item))
                for item in self.spec.inputs
            }
        sizes = {name: tuple(x.shape[-2:]) for name, x in inputs.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the inputs of one image must share their size, got {sizes}")
        return inputs


def backdrop(images: Mapping[str, torch.Tensor], spec: ModelSpec) -> torch.Tensor:
    """The 3 x H x W image (0..255) overlays are drawn on, from each input as ``load_input``
    reads it: the first 3-channel input (the colour image), else the first input stretched
    to grey."""
    for item in spec.inputs:
        if item.channels == 3:
            return images[item.name]
    first = images[spec.inputs[0].name][:1]
    low, high = first.min(), first.max()
    return ((first - low) * (255 / max(float(high - low), 1e-6))).expand(3, -1, -1)


def prepared_size(prepared: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """The height and width of a ``Segmenter.prepared`` image."""
    height, width = next(iter(prepared.values())).shape[-2:]
    return int(height), int(width)


def _is_many(image: Any) -> bool:
    """Whether ``predict`` was given several images: a list or tuple, an N x C x H x W
    tensor or an N x H x W x C array."""
    if isinstance(image, list | tuple):
        return True
    return isinstance(image, torch.Tensor | np.ndarray) and image.ndim == 4


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: Python's MemoryError, or torch's
    RuntimeError on the CPU ("not enough memory") or a GPU ("out of memory")."""
    if isinstance(error, MemoryError):
        return True
    message = str(error)
    return "not enough memory" in message or "out of memory" in message


def _by_task(
    scores: Mapping[str, torch.Tensor], row: int, probabilities: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The label maps by task of image ``row`` of a batch's scores, and their
    probabilities by task when asked."""
    results = {task: _label_map(s[row].float(), probabilities) for task, s in scores.items()}
    if not probabilities:
        return results, None
    return {task: r[0] for task, r in results.items()}, {t: r[1] for t, r in results.items()}


def _for_user(labels: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray] | None):
    """What ``predict`` gives: a single-task model's map itself (with its probabilities
    when asked), dicts by task for several tasks."""
    if probs is None:
        return _single_or_dict(labels)
    return _single_or_dict(labels), _single_or_dict(probs)


def _single_or_dict(by_task: Mapping[str, Any]) -> Any:
    return next(iter(by_task.values())) if len(by_task) == 1 else dict(by_task)


def _names_by_task(classes: Any, spec: ModelSpec) -> dict[str, tuple[str, ...]]:
    given = classes if isinstance(classes, Mapping) else {spec.task_names[0]: classes}
    if classes is not None and not isinstance(classes, Mapping) and len(spec.tasks) != 1:
        raise ValueError(f"the model predicts {list(spec.task_names)}: give classes by task")
    names = {}
    for task in spec.tasks:
        listed = given.get(task.name) if given else None
        names[task.name] = (
            tuple(listed) if listed else tuple(f"class {i}" for i in range(task.classes))
        )
        if len(names[task.name]) != task.classes:
            raise ValueError(
                f"{len(names[task.name])} class names for the {task.classes} classes of "
                f"task {task.name!r}"
            )
    return names


def _palettes_by_task(palette: Any, spec: ModelSpec) -> dict[str, list[tuple[int, ...]]]:
    given = palette if isinstance(palette, Mapping) else {spec.task_names[0]: palette}
    palettes = {}
    for task in spec.tasks:
        colors = _colors(given.get(task.name) if palette is not None else None)
        palettes[task.name] = colors if len(colors) >= task.classes else voc_palette(task.classes)
    return palettes


def _colors(palette: Palette | None) -> list[tuple[int, ...]]:
    return [tuple(int(c) for c in color) for color in (palette or [])]


def _label_map(scores: torch.Tensor, probabilities: bool):
    """Labels of C x H x W scores (uint8 when the classes fit), with probabilities if asked."""
    labels = class_labels(scores, dim=0)
    labels = labels.to(torch.uint8 if scores.shape[0] <= 256 else torch.int64).cpu().numpy()
    if not probabilities:
        return labels
    return labels, scores.softmax(0).contiguous().cpu().numpy()


def load_input(image: ImageLike, item: InputSpec | None = None) -> torch.Tensor:
    """One input as a C x H x W float tensor with values as stored (0..255 for images).

    An RGB input reads any image form (``load_rgb``). Depth reads a 16-bit PNG or an
    H x W array as stored; other inputs read an image file in as many channels as they
    have (1: grey, 3: RGB, 4: RGBA), or an array or tensor of their channel count."""
    item = item or InputSpec()
    if item.channels == 3 and item.name != "depth":
        return load_rgb(image)
    if isinstance(image, str | Path):
        if item.name == "depth":
            return image_to_tensor(read_depth(Path(image)))
        image = open_image(Path(image))
    if isinstance(image, Image.Image):
        modes = {1: "L", 3: "RGB", 4: "RGBA"}
        if item.channels not in modes:
            raise ValueError(
                f"input {item.name!r} has {item.channels} channels: an image file gives 1, 3 or "
                "4; pass an H x W x C array"
            )
        image = np.asarray(image.convert(modes[item.channels]))
    tensor = image.float() if isinstance(image, torch.Tensor) else None
    if tensor is None:
        array = np.asarray(image, dtype=np.float32)
        tensor = image_to_tensor(array)
    elif tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] != item.channels:
        raise ValueError(
            f"input {item.name!r} must have {item.channels} channels, got shape "
            f"{tuple(tensor.shape)}"
        )
    return tensor


def load_rgb(image: ImageLike) -> torch.Tensor:
    """A 3 x H x W float tensor of 0..255 RGB from any accepted image form, by one rule.

    A file path and a PIL image of any mode convert alike (``rgb_array``): a 16-bit PIL
    image is scaled from 0..65535 as its file is, not clipped to near-white. Arrays and
    tensors are taken as 0..255, whatever their dtype: uint8 as it is, and float too (the
    scale ``fcnseg.data`` readers produce). Values they cannot hold in 0..255 are refused
    with a ValueError rather than predicted as garbage: any value above 255 (a 16-bit
    array: scale it first), and a float image whose largest value is at most 1.0 and that
    is not all zero (it looks like 0..1, torchvision's ToTensor: multiply it by 255).
    """
    if isinstance(image, str | Path):
        array = read_image(Path(image))  # EXIF-upright, any mode to RGB; DatasetError if bad
        return image_to_tensor(array)
    if isinstance(image, Image.Image):
        return image_to_tensor(rgb_array(image))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8 and image.numel():
            _check_0_to_255(float(image.max()), image.is_floating_point())
        return image.float()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {array.shape}")
    if array.dtype != np.uint8 and array.size:
        _check_0_to_255(float(array[..., :3].max()), np.issubdtype(array.dtype, np.floating))
    return image_to_tensor(array[..., :3].astype(np.float32))


def _check_0_to_255(largest: float, floating: bool) -> None:
    """Refuse an image whose values are not 0..255: predicting them as 0..255 gives garbage
    without a word."""
    if largest > 255:
        raise ValueError(
            f"the image's values reach {largest:g}, above 255: scale it to 0..255 (a 16-bit "
            "image: divide by 257; images are 0..255, uint8 or float)"
        )
    if floating and 0.0 < largest <= 1.0:
        raise ValueError(
            f"the float image's values are at most {largest:g}, which looks like 0..1 "
            "(ToTensor): multiply by 255 (images are 0..255, uint8 or float)"
        )


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG bytes with predict's mark and fcnseg's version: what ``fcnseg
    predict`` writes (later runs know the file as theirs) and ``fcnseg serve`` answers."""
    info = PngInfo()
    info.add_text(MARK_KEY, MARK_VALUE)
    info.add_text("fcnseg-version", __version__)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def mask_image(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """An index image (mode P): pixel values are the class indices, shown in ``palette``."""
    if labels.max(initial=0) > 255:
        raise ValueError("an index PNG holds at most 256 classes: save the labels as .npy")
    mask = Image.fromarray(labels.astype(np.uint8))  # mode L; a palette makes it P
    mask.putpalette(flat_palette([tuple(color) for color in palette]))
    return mask


def save_mask(
    labels: np.ndarray,
    path: Path | str,
    palette: Sequence[Sequence[int]],
    *,
    pnginfo: PngInfo | None = None,
) -> None:
    """An index PNG (mode P): pixel values are the class indices, shown in ``palette``;
    ``pnginfo`` adds text chunks (what ``fcnseg predict`` records of its run). Written
    atomically: a failed write leaves no half-written file."""
    image = mask_image(labels, palette)
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG", pnginfo=pnginfo))
