"""Shared reader machinery: the dataset base class, image and label decoding, label tables,
split files, the one-line errors, and the dataset registry.

Every reader returns ``(image, label)``: the image a float tensor 3 x H x W holding RGB in
0..255 (normalisation is a transform step, because it belongs to the model's weights), the
label an int64 tensor H x W with classes in [0, num_classes) and 255 ignored. Files are
decoded with PIL and numpy only, no per-pixel Python, so a loader is never the bottleneck.

Bad input never surfaces as a deep PIL or scipy traceback: it raises ``DatasetError``, one
line naming the file, what is wrong and what fixes it.
"""

from __future__ import annotations

import inspect
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Subset

from .errors import DatasetError
from .palettes import Color, colors_to_indices
from .transforms import Compose

__all__ = [
    "DatasetError",
    "IGNORE_INDEX",
    "Sample",
    "LabelMap",
    "SegmentationDataset",
    "read_image",
    "rgb_array",
    "read_label",
    "read_mat",
    "read_depth",
    "open_image",
    "read_split_file",
    "require_dir",
    "require_file",
    "find_dir",
    "image_to_tensor",
    "label_to_tensor",
    "check_same_size",
    "register_dataset",
    "build_dataset",
    "list_datasets",
    "reader_options",
    "item_names",
]

IGNORE_INDEX = 255
_EXIF_ORIENTATION = 0x0112
# What PIL raises on corrupt, truncated or unidentifiable files.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
)


@dataclass(frozen=True)
class Sample:
    """One item of a dataset: its id and the files it reads."""

    id: str
    image: Path
    label: Path | None = None
    extra: Mapping[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Files and folders


def require_dir(path: Path | str, what: str, fix: str) -> Path:
    """``path`` as a Path, or a DatasetError naming it and the fix when it is not a folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {path} {state}: {fix}")
    return path


def require_file(path: Path | str, kind: str) -> None:
    """A DatasetError when ``path`` is not a regular file: missing, or something else under
    its name (a FIFO, whose read would block forever; a folder; a socket or device)."""
    path = Path(path)
    if path.is_file():
        return
    if not path.exists():
        raise DatasetError(
            f"{kind} {path} is missing: check the path, or re-extract the dataset it belongs to"
        )
    raise DatasetError(
        f"{kind} {path} is not a regular file but {_file_type(path)}: put the {kind} file "
        "there (re-extract the dataset)"
    )


def _file_type(path: Path) -> str:
    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "no regular file"


def find_dir(root: Path | str, candidates: Iterable[str], marker: str, what: str, fix: str) -> Path:
    """The first ``root / candidate`` holding ``marker``: publishers' archives nest differently."""
    root = require_dir(root, f"{what} root", fix)
    tried = []
    for candidate in candidates:
        path = root / candidate if candidate else root
        if (path / marker).exists():
            return path
        tried.append(str(Path(candidate) / marker) if candidate else marker)
    raise DatasetError(f"{root}: no {what} found (looked for {', '.join(tried)}): {fix}")


def read_split_file(path: Path, fix: str) -> list[str]:
    """The non-empty, stripped lines of a split list."""
    if not path.is_file():
        raise DatasetError(f"split file {path} not found: {fix}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"split file {path} cannot be read ({error}): {fix}") from None
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DatasetError(f"split file {path} is empty: {fix}")
    return ids


def check_files(samples: Sequence[Sample], listed_in: Path | str) -> None:
    """Fail early, before training starts, when a listed image or its label is missing."""
    names: dict[Path, set[str]] = {}

    def exists(path: Path) -> bool:
        folder = path.parent
        if folder not in names:
            names[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return path.name in names[folder]

    for sample in samples:
        if not exists(sample.image):
            raise DatasetError(
                f"image {sample.image} (listed in {listed_in}) is missing: "
                "re-extract the dataset or remove the entry from the list"
            )
        if sample.label is not None and not exists(sample.label):
            raise DatasetError(
                f"label {sample.label} for image {sample.image.name} is missing: "
                "re-extract the dataset or remove the entry from the list"
            )
        for name, path in sample.extra.items():
            if not exists(path):
                raise DatasetError(
                    f"{name} file {path} for image {sample.image.name} is missing: "
                    "re-extract the dataset or remove the entry from the list"
                )


# ---------------------------------------------------------------------------------------------
# Decoding


def _open(path: Path, kind: str) -> Image.Image:
    require_file(path, kind)
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as error:
        raise DatasetError(_too_large(path, kind, error)) from None
    except _DECODE_ERRORS as error:
        raise DatasetError(
            f"{kind} {path} cannot be decoded ({type(error).__name__}: {error}): "
            "the file is corrupt or truncated; re-download or re-extract it"
        ) from None
    return image


def _too_large(path: Path, kind: str, error: Image.DecompressionBombError) -> str:
    """PIL refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` (a small file can
    inflate to gigabytes): say so, and how a user who trusts the file lifts the limit."""
    numbers = re.findall(r"(\d+) pixels", str(error))  # "Image size (N pixels) ... of M pixels"
    if len(numbers) == 2:
        size = f"{int(numbers[0]):,} pixels, over the limit of {int(numbers[1]):,}"
    else:
        size = str(error)
    return (
        f"{kind} {path} is too large to decode safely ({size}: PIL's guard against "
        "decompression bombs): shrink or tile it; or, if you trust the file, raise the limit "
        "from Python before reading (PIL.Image.MAX_IMAGE_PIXELS = None, or a larger pixel count)"
    )


def rgb_array(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 from any PIL mode: gray, palette, alpha, CMYK, 16-bit and float.

    PIL's own ``convert("RGB")`` clips 16-bit values to 255 (a near-white image): every
    image, read from a file or given in memory, is converted here instead."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image).astype(np.float64)
        # 16-bit files span 0..65535; a 32-bit 'I' image holding 8-bit values is left as is.
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    # RGBA/LA/PA: the alpha channel is dropped (the colour under it is what the camera saw).
    return np.asarray(image.convert("RGB"))


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1


def read_image(path: Path, match: tuple[int, int] | None = None) -> np.ndarray:
    """H x W x 3 uint8 RGB, turned upright by its EXIF orientation.

    Annotation tools show photos upright, so labels follow the EXIF-rotated image. When
    ``match`` (the label's H x W) fits only the stored pixels, the label was drawn on the
    stored pixels and the rotation is not applied.
    """
    image = _open(path, "image")
    if _orientation(image) != 1:
        upright = ImageOps.exif_transpose(image)
        if match is None or (upright.height, upright.width) == tuple(match):
            image = upright
    return rgb_array(image)


def read_label(
    path: Path,
    colors: Sequence[Color] | None = None,
    values: Sequence[int] | None = None,
) -> np.ndarray:
    """An H x W integer map from an index PNG (mode P, L or 16-bit), or from a colour PNG
    mapped through ``colors`` -> ``values`` when given.

    Palette PNGs are read as their indices (VOC's layout), never converted to colours.
    """
    image = _open(path, "label")
    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("P", "L", "1") or mode.startswith("I"):
        return np.asarray(image)
    if mode == "LA":
        return np.asarray(image)[..., 0]
    if mode in ("RGB", "RGBA"):
        if colors is None:
            raise DatasetError(
                f"label {path} is a colour ({mode}) image: save labels as index PNGs "
                "(mode P or L) or give the class colours"
            )
        if values is None:
            values = list(range(len(colors)))
        return colors_to_indices(np.asarray(image), colors, values, path)
    raise DatasetError(f"label {path} has unsupported mode {mode}: save it as an index PNG")


def open_image(path: Path) -> Image.Image:
    """The image at ``path`` in its own mode, turned upright by its EXIF orientation."""
    return ImageOps.exif_transpose(_open(path, "image"))


def read_depth(path: Path) -> np.ndarray:
    """H x W float32 depth as stored (NYUDv2: 16-bit PNG)."""
    image = _open(path, "depth image")
    return np.asarray(image).astype(np.float32)


def read_mat(path: Path, key: str, field_name: str | None = None) -> np.ndarray:
    """Array ``key`` (or struct field ``key.field_name``) of a MATLAB v5 file."""
    try:
        import scipy.io
    except ImportError:
        raise DatasetError(
            f"reading {path} needs scipy: pip install scipy (or fcnseg[data])"
        ) from None
    require_file(path, "label")
    try:
        content = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises many types; any parser failure is a bad file
        raise DatasetError(
            f"label {path} cannot be read as a MATLAB file ({type(error).__name__}: {error}): "
            "re-download or re-extract it"
        ) from None
    if key not in content:
        found = ", ".join(k for k in content if not k.startswith("__")) or "none"
        raise DatasetError(
            f"{path} has no variable {key!r} (found: {found}): is it the right file?"
        )
    value = content[key]
    if field_name is not None:
        if not hasattr(value, field_name):
            raise DatasetError(f"{path}: {key} has no field {field_name!r}: is it the right file?")
        value = getattr(value, field_name)
    array = np.asarray(value)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        name = key if field_name is None else f"{key}.{field_name}"
        raise DatasetError(f"{path}: {name} is not a 2-D label map (shape {array.shape})")
    return array


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """H x W x C (or H x W) array -> contiguous float32 C x H x W tensor, in one copy."""
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def label_to_tensor(array: np.ndarray) -> torch.Tensor:
    """H x W integer array -> int64 tensor (copied only when needed)."""
    array = np.asarray(array, dtype=np.int64)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def check_same_size(
    image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path
) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"label {label_path} is {label.shape[1]}x{label.shape[0]} but image {image_path.name} "
            f"is {image.shape[1]}x{image.shape[0]} (WxH): they must be the same size"
        )


# ---------------------------------------------------------------------------------------------
# Label tables


class LabelMap:
    """Raw label values -> training ids (ignore = 255) through a lookup table.

    A raw value the table does not know (say 37 in a 21-class VOC mask) is an error naming the
    file, so a mislabelled file never trains silently as some class.
    """

    def __init__(
        self, mapping: Mapping[int, int], name: str = "dataset", fix: str | None = None
    ) -> None:
        if not mapping:
            raise ValueError("a LabelMap needs at least one raw value")
        self.offset = min(mapping)
        self.table = np.full(max(mapping) - self.offset + 1, -1, dtype=np.int64)
        for raw, target in mapping.items():
            self.table[raw - self.offset] = target
        self.name = name
        # what to do about a value the table does not know ({value} is filled in)
        self.fix = fix or "fix the file or use the reader of the dataset it belongs to"
        # 8-bit PNGs (most labels) index a 256-entry table directly: one pass, no range checks.
        self._uint8_table = np.full(256, -1, dtype=np.int64)
        for raw, target in mapping.items():
            if 0 <= raw < 256:
                self._uint8_table[raw] = target

    @classmethod
    def identity(
        cls, num_classes: int, ignore: Iterable[int] = (IGNORE_INDEX,), name: str = "dataset"
    ) -> LabelMap:
        """Classes 0..num_classes-1 as they are, every value in ``ignore`` to 255."""
        mapping = {k: k for k in range(num_classes)}
        mapping.update({k: IGNORE_INDEX for k in ignore})
        return cls(mapping, name)

    def valid_values(self) -> str:
        """The accepted raw values as ranges, e.g. '0-20, 255'."""
        valid = np.flatnonzero(self.table >= 0) + self.offset
        runs, start = [], valid[0]
        for previous, current in zip(valid[:-1], valid[1:], strict=True):
            if current != previous + 1:
                runs.append((start, previous))
                start = current
        runs.append((start, valid[-1]))
        return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)

    def __call__(self, raw: np.ndarray, path: Path | str) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.dtype == np.uint8:
            mapped = self._uint8_table[raw]
            bad = mapped < 0
            if bad.any():
                self._fail(raw, bad, path)
            return mapped
        if not np.issubdtype(raw.dtype, np.integer):
            if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
                raise DatasetError(
                    f"label {path} holds non-integer values: labels must be integers"
                )
            raw = raw.astype(np.int64)
        index = raw.astype(np.intp, copy=False) - self.offset
        inside = (index >= 0) & (index < len(self.table))
        mapped = self.table[np.where(inside, index, 0)]
        bad = ~inside | (mapped < 0)
        if bad.any():
            self._fail(raw, bad, path)
        return mapped

    def _fail(self, raw: np.ndarray, bad: np.ndarray, path: Path | str) -> None:
        value = int(raw[bad].flat[0])
        raise DatasetError(
            f"label {path} holds value {value} ({int(bad.sum())} pixels), not a {self.name} "
            f"label (valid raw values: {self.valid_values()}): {self.fix.format(value=value)}"
        )


# ---------------------------------------------------------------------------------------------
# The dataset base class


class SegmentationDataset(Dataset):
    """Map-style dataset of ``(image, label)`` pairs read from files.

    Subclasses set ``classes``, ``palette`` and ``label_map`` and fill ``samples``; a reader
    with several inputs or labels overrides ``load``. ``transforms`` is a joint
    ``(image, label) -> (image, label)`` callable; a seeded ``fcnseg.data.transforms.Compose``
    also gets the sample index, so augmentation depends on (seed, epoch, index) only and not
    on how many loader workers run.
    """

    classes: tuple[str, ...] = ()
    palette: list[Color] = []
    ignore_index: int = IGNORE_INDEX
    label_map: LabelMap | None = None

    def __init__(self, samples: Sequence[Sample], transforms: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        return [sample.id for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image, label = self.load(index)
        return self.apply_transforms(image, label, index)

    def apply_transforms(self, image: Any, label: Any, index: int) -> tuple[Any, Any]:
        if self.transforms is None:
            return image, label
        if isinstance(self.transforms, Compose):
            return self.transforms(image, label, index=index)
        return self.transforms(image, label)

    def set_epoch(self, epoch: int) -> None:
        """Vary seeded augmentation by epoch (call before creating each epoch's iterator)."""
        if hasattr(self.transforms, "set_epoch"):
            self.transforms.set_epoch(epoch)

    def read_label(self, sample: Sample) -> np.ndarray:
        """The raw label values of ``sample`` (before ``label_map``)."""
        assert sample.label is not None
        return read_label(sample.label)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        raw = self.read_label(sample)
        image = read_image(sample.image, match=raw.shape[:2])
        check_same_size(image, raw, sample.image, sample.label)
        label = self.label_map(raw, sample.label) if self.label_map is not None else raw
        return image_to_tensor(image), label_to_tensor(label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


# ---------------------------------------------------------------------------------------------
# Registry: build_dataset("camvid", root=..., split="train")


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Dataset]
    needs_root: bool


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, needs_root: bool = True) -> Callable:
    """Class decorator adding a reader to ``build_dataset`` under ``name``."""

    def add(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, needs_root)
        return factory

    return add


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def build_dataset(
    name: str, *, root: Path | str | None = None, split: str | None = "train", **options: Any
) -> Dataset:
    """The reader registered as ``name``, e.g. ``build_dataset("voc", root=..., split="val")``;
    ``split=None`` for a reader without splits (the folder reader's flat layout)."""
    if name not in _REGISTRY:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(list_datasets())}")
    entry = _REGISTRY[name]
    if split is None and not _takes_no_split(entry.factory):
        raise DatasetError(
            f"dataset {name!r} has splits and split none means all images of a dataset "
            "without splits: choose a split (train_split / val_split in a config, --split on "
            "fcnseg eval)"
        )
    if entry.needs_root:
        if root is None:
            raise DatasetError(
                f"dataset {name!r} reads files: pass root=<its folder> (a config key, or "
                "--root on fcnseg eval)"
            )
        return entry.factory(root=root, split=split, **options)
    if root is not None:
        raise DatasetError(
            f"dataset {name!r} is generated and takes no root: drop root= (or --root)"
        )
    return entry.factory(split=split, **options)


# What build_dataset and the engine pass themselves: not a reader option of a config.
_PASSED = frozenset({"self", "root", "split", "transforms"})


def reader_options(name: str) -> tuple[str, ...] | None:
    """The keyword options the reader ``name`` takes (``train_options``, ``--option``), so
    that a misspelt one is refused before any work; None when any key may be right (an
    unregistered name, a reader taking ``**options``)."""
    if name not in _REGISTRY:
        return None
    try:
        parameters = inspect.signature(_REGISTRY[name].factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the reader decide
        return None
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return tuple(parameter.name for parameter in parameters if parameter.name not in _PASSED)


def _takes_no_split(factory: Callable[..., Dataset]) -> bool:
    """Whether a reader reads every image when given ``split=None`` (its default is None)."""
    try:
        parameter = inspect.signature(factory).parameters.get("split")
    except (TypeError, ValueError):  # no signature to read: let the reader decide
        return True
    return parameter is not None and parameter.default is None


def item_names(dataset: Dataset) -> list[tuple[str, str]]:
    """(id, image path) of every item of a reader, or of a Subset (nested) of one; the
    index and "" where the reader names no samples (synthetic images)."""
    indices: Sequence[int] = range(len(dataset))
    while isinstance(dataset, Subset):  # a Subset of a Subset (of ...) of the reader
        indices = [dataset.indices[index] for index in indices]
        dataset = dataset.dataset
    samples = getattr(dataset, "samples", None)
    if not samples:
        return [(str(index), "") for index in indices]
    return [(samples[index].id, str(samples[index].image)) for index in indices]
