"""A user's own dataset as a plain folder.

::

    root/
      classes.txt      one class per line, in index order, each name once (UTF-8, with or
                       without a byte-order mark); optionally a colour after the name:
                       "road 128 64 128" or "road #804080"; a line "ignore R G B" names a
                       colour that means 255 (ignored) in colour masks; '#' starts a comment
      images/<stem>.jpg|png|...
      masks/<stem>.png index PNGs (mode P/L/16-bit: the values are the classes, 255 ignored)
                       or colour PNGs (mapped through the colours of classes.txt);
                       JPEG masks are refused: lossy compression invents labels at edges

Other layouts take reader options, named as mmsegmentation names them: ``img_dir`` and
``ann_dir`` (the two folders, default ``images`` and ``masks``), ``img_suffix`` and
``seg_map_suffix`` (the ending that follows the shared part of an image's and its mask's
names; default: the extension alone). Subfolders are searched, an image and its mask pair
by their path below their folder without the ending. So Cityscapes reads as
``img_dir = "leftImg8bit"``, ``ann_dir = "gtFine"``, ``img_suffix = "_leftImg8bit.png"``,
``seg_map_suffix = "_gtFine_labelTrainIds.png"`` (per-city subfolders, splits ``train``/``val``
as subfolders), and masks beside their photos (``x.jpg``, ``x_mask.png``) as ``ann_dir =
"images"``, ``seg_map_suffix = "_mask.png"``. An image without a mask says what was found
instead and which setting pairs them ("found x_mask.png: set seg_map_suffix = '_mask.png'").

Splits: ``split=None`` takes every image (``train_split = none`` / ``val_split = none`` in a
config, ``--split none`` on ``fcnseg eval``); otherwise ``images/<split>/`` + ``masks/<split>/``
or a ``<split>.txt`` listing names (stems; ``city/name`` in subfolders). Every image needs a
mask and every mask an image.

Masks whose stored values are not the class indices take ``value_map``, raw value -> class
(255: ignored), listing only the values that differ: ``{0: 0, 255: 1}`` for binary masks
saved as 0 and 255, ``{11: 255}`` for CamVid's void. ``ignore_index`` names the raw value
(or values) that mean "ignored", as torch's ``CrossEntropyLoss`` and mmsegmentation name
it: ``ignore_index = 11`` for CamVid. Values the map does not list keep their meaning (a
class index, or 255: ignored); any other value is an error naming the file and both keys.
In a config ``value_map = { 0 = 0, 255 = 1 }`` / ``ignore_index = 11`` at the top level
serve the training and validation sets alike (or set them in ``train_options`` /
``val_options``); on ``fcnseg eval`` ``--option value_map={0=0,255=1}``, ``--option
ignore_index=11``.

Up to ``scan_masks`` masks (spread over the split) are read when the dataset is built, so
bad masks fail before training: a 2-class dataset whose masks hold 255 and no 1 (foreground
saved as 255, which would be ignored) is an error saying how to map it, and so is one where
some masks hold 1 and others 255 and no 1 (two encodings mixed: an explicit value_map, even
``{0: 0, 1: 1, 255: 255}``, says what 255 means and lets it through); a class that occurs in
none of the scanned masks is a warning.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    DatasetError,
    LabelMap,
    Sample,
    SegmentationDataset,
    read_label,
    read_split_file,
    register_dataset,
    require_dir,
    require_file,
)
from .palettes import Color, default_palette

__all__ = ["ClassList", "read_classes", "has_split", "FolderDataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


class ClassList:
    """Names, optional colours and the optional ignore colour read from a classes file."""

    def __init__(
        self, names: list[str], colors: list[Color] | None, ignore_color: Color | None
    ) -> None:
        self.names, self.colors, self.ignore_color = names, colors, ignore_color


def _parse_color(tokens: list[str]) -> tuple[list[str], Color | None]:
    """Split trailing colour tokens off a line: (name tokens, colour or None)."""
    if tokens and _HEX.fullmatch(tokens[-1]):
        value = int(tokens[-1][1:], 16)
        return tokens[:-1], ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    if len(tokens) >= 4 and all(t.isdigit() for t in tokens[-3:]):
        rgb = tuple(int(t) for t in tokens[-3:])
        if max(rgb) > 255:
            raise ValueError(f"colour {rgb} has a channel above 255")
        return tokens[:-3], rgb  # type: ignore[return-value]
    return tokens, None


def _class_lines(path: Path) -> list[str]:
    """The lines of a classes file. utf-8-sig: editors on Windows start UTF-8 files with a
    byte-order mark, which would otherwise become part of the first class name."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"classes file {path} is not UTF-8 text ({error.reason} at byte {error.start}): "
            "save it as UTF-8"
        ) from None


def read_classes(path: Path) -> ClassList:
    """Parse a classes file (see the module docstring)."""
    if not path.is_file():
        raise DatasetError(f"classes file {path} not found: write one class name per line")
    names: list[str] = []
    colors: list[Color | None] = []
    lines: dict[str, int] = {}  # the line of each class name
    ignore_color = None
    for number, line in enumerate(_class_lines(path), start=1):
        tokens = line.split()
        for position, token in enumerate(tokens):
            if token.startswith("#") and not _HEX.fullmatch(token):
                tokens = tokens[:position]  # a comment
                break
        if not tokens:
            continue
        try:
            name_tokens, color = _parse_color(tokens)
        except ValueError as error:
            raise DatasetError(f"{path} line {number}: {error}") from None
        name = " ".join(name_tokens)
        if not name:
            raise DatasetError(f"{path} line {number}: a colour without a class name")
        if name == "ignore":
            if color is None:
                raise DatasetError(
                    f"{path} line {number}: 'ignore' needs a colour, e.g. ignore 0 0 0"
                )
            ignore_color = color
            continue
        if name in lines:
            raise DatasetError(
                f"{path} line {number}: class {name!r} is already named on line "
                f"{lines[name]}: class names must be distinct (results are keyed by name)"
            )
        lines[name] = number
        names.append(name)
        colors.append(color)
    if not names:
        raise DatasetError(f"classes file {path} names no classes: write one class name per line")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{path} lists {len(names)} classes: at most 255 fit an 8-bit mask")
    given = [c for c in colors if c is not None]
    if given and len(given) != len(colors):
        missing = names[colors.index(None)]
        raise DatasetError(
            f"{path}: class {missing!r} has no colour: give every class a colour or none"
        )
    if len(set(given)) != len(given):
        raise DatasetError(f"{path}: two classes share a colour: colours must be distinct")
    return ClassList(names, given or None, ignore_color)  # type: ignore[arg-type]


def _by_key(
    folder: Path, suffixes: tuple[str, ...], kind: str, suffix: str | None, skip: str | None
) -> dict[str, Path]:
    """The ``kind`` files under ``folder`` (subfolders too) by key: the path from ``folder``
    without ``suffix`` (``img_suffix``, ``seg_map_suffix``), or without the extension when
    no suffix is given (then one of ``suffixes``). Files ending in ``skip`` are not ``kind``
    files (masks beside their images). Something else under such a name (a FIFO, a folder)
    is refused, not passed over as if the file were missing."""
    files: dict[str, Path] = {}
    for path in _walk(folder):
        name = path.name
        if skip and name.endswith(skip):
            continue
        if suffix is not None:
            if not name.endswith(suffix) or len(name) == len(suffix):
                continue
            key = path.relative_to(folder).as_posix()[: -len(suffix)]
        elif path.suffix.lower() in suffixes:
            key = path.relative_to(folder).with_suffix("").as_posix()
        else:
            continue
        if not path.exists():  # a dangling link: no file
            continue
        require_file(path, kind)
        if key in files:
            raise DatasetError(
                f"{kind}s {files[key].name} and {path.name} share the name {key!r}: keep one"
            )
        files[key] = path
    return files


def _walk(folder: Path) -> list[Path]:
    """Every entry under ``folder``, sorted, entering each real subfolder once (links that
    lead back up are not followed twice)."""
    found, seen = [], set()
    for top, folders, names in os.walk(folder, followlinks=True):
        identity = os.stat(top)
        if (identity.st_dev, identity.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((identity.st_dev, identity.st_ino))
        folders.sort()
        found += [Path(top) / name for name in sorted(names)]
    return found


def _partner_hint(name: str, others: Sequence[str], own: str, other: str) -> str:
    """Why the file ``name`` (its path in its folder) found no partner among ``others``
    when one of them shares the start of its name: " (found x_mask.png: set seg_map_suffix
    = '_mask.png')", with ``own`` and ``other`` the options that hold each side's ending
    (``img_suffix``, ``seg_map_suffix``); "" when none does."""
    best = max(others, key=lambda o: (_shared(name, o), "label" in o.lower(), -len(o)), default="")
    common = name[: _shared(name, best)]
    if not name[len(common) :].startswith("."):  # "a_1_leftImg8bit" / "a_1_gtFine": cut at "_"
        common = common[: max(common.rfind(sep) for sep in "_-.")] if common else ""
    if len(common) <= name.rfind("/") + 1 or len(common) < len(Path(name).stem) // 2:
        return ""
    endings = [(own, name[len(common) :]), (other, best[len(common) :])]
    plain = (*IMAGE_SUFFIXES, *MASK_SUFFIXES)  # an extension alone needs no option
    fixes = [f"{option} = '{ending}'" for option, ending in endings if ending.lower() not in plain]  # fmt: skip
    return f" (found {best}: set {' and '.join(fixes)})" if fixes else ""


def _shared(name: str, other: str) -> int:
    return len(os.path.commonprefix([name, other]))


def _names(folder: Path) -> list[str]:
    return [path.relative_to(folder).as_posix() for path in _walk(folder) if path.is_file()]


def has_split(root: Path | str, split: str, img_dir: str = "images") -> bool:
    """Whether the folder dataset at ``root`` has ``split``: ``<img_dir>/<split>/`` or
    ``<split>.txt``."""
    root = Path(root)
    return (root / img_dir / split).is_dir() or (root / f"{split}.txt").is_file()


def _refuse_lossy_masks(folder: Path, seg_map_suffix: str | None) -> None:
    """JPEG masks are refused: lossy compression blurs the edges between regions
    into values of neither class (or of a third one), labels nobody drew."""
    for path in _walk(folder):
        is_mask = path.name.endswith(seg_map_suffix) if seg_map_suffix else True
        if is_mask and path.is_file() and path.suffix.lower() in LOSSY_MASK_SUFFIXES:
            raise DatasetError(
                f"mask {path} is {path.suffix.lstrip('.').upper()}: lossy compression invents "
                "labels at the edges between regions; save the masks as PNG (lossless), e.g. "
                "convert them from the original label images, not from these files"
            )


@register_dataset("folder")
class FolderDataset(SegmentationDataset):
    """images/ + masks/ with matching names and a classes file; other folder names, name
endings and subfolders by reader options (see the module docstring)."""

    def __init__(
        self,
        root: Path | str,
        split: str | None = None,
        transforms: Callable | None = None,
        *,
        classes_file: str = "classes.txt",
        value_map: Mapping[int | str, int] | None = None,
        ignore_index: int | Sequence[int] | None = None,
        img_dir: str = "images",
        ann_dir: str = "masks",
        img_suffix: str | None = None,
        seg_map_suffix: str | None = None,
        scan_masks: int = 100,
    ) -> None:
        self.root = require_dir(root, "dataset root", "create images/, masks/ and classes.txt")
        self.split = split
        self.img_dir, self.ann_dir = img_dir, ann_dir
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        class_list = read_classes(self.root / classes_file)
        self.classes = tuple(class_list.names)
        self.palette = class_list.colors or default_palette(self.classes)
        self.mask_colors = class_list.colors
        self.ignore_color = class_list.ignore_color  # how pictures draw ignored pixels
        if class_list.colors is not None:
            self.mask_colors = list(class_list.colors)
            self.mask_values = list(range(len(class_list.colors)))
            if class_list.ignore_color is not None:
                self.mask_colors.append(class_list.ignore_color)
                self.mask_values.append(IGNORE_INDEX)
        for key, given in (("value_map", value_map), ("ignore_index", ignore_index)):
            if given is not None and self.mask_colors is not None:
                raise DatasetError(
                    f"{self.root}: {key} is for index masks, and classes.txt gives colours: "
                    f"drop {key} (colour masks map through the class colours; a line "
                    "'ignore R G B' names the colour to ignore)"
                )
        self.value_map = None if value_map is None else self._check_value_map(value_map)
        self.ignored = self._check_ignore_index(ignore_index)
        self.label_map = self._label_map()
        super().__init__(self._pair(), transforms)
        self._scan(scan_masks)

    def _check_value_map(self, value_map: Mapping[int | str, int]) -> dict[int, int]:
        """``value_map`` as {raw: class} ints, 255 ignored unless mapped; one-line errors."""
        checked: dict[int, int] = {}
        for raw, target in value_map.items():
            if isinstance(raw, str) and raw.strip().isdigit():
                raw = int(raw)  # TOML and JSON keys are strings
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
                raise DatasetError(
                    f"value_map key {raw!r} is not a mask value: use 0..65535, e.g. "
                    "{0 = 0, 255 = 1}"
                )
            valid = isinstance(target, int) and not isinstance(target, bool)
            if not valid or not (0 <= target < len(self.classes) or target == IGNORE_INDEX):
                name = f"class {target}" if valid else repr(target)
                raise DatasetError(
                    f"value_map maps {raw} to {name}: map each value to a class 0.."
                    f"{len(self.classes) - 1} of {self.root / 'classes.txt'} or to 255 (ignore)"
                )
            checked[raw] = target
        return checked

    def _check_ignore_index(self, ignore_index: int | Sequence[int] | None) -> tuple[int, ...]:
        """The raw values ``ignore_index`` names; a class index or a value ``value_map``
        maps is refused (what would the value mean?)."""
        if ignore_index is None:
            return ()
        values = (ignore_index,) if isinstance(ignore_index, int) else tuple(ignore_index)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise DatasetError(f"ignore_index {value!r} is not a mask value: use 0..65535")
            if value in (self.value_map or {}):
                raise DatasetError(
                    f"ignore_index {value} is also a key of value_map: keep one (value_map "
                    f"{{{value} = 255}} ignores it too)"
                )
            if value < len(self.classes):
                raise DatasetError(
                    f"ignore_index {value} is class {self.classes[value]!r} of "
                    f"{self.root / 'classes.txt'}: name only the classes there, or move the "
                    "value with value_map"
                )
        return values

    def _label_map(self) -> LabelMap:
        """Raw values -> classes: each class index and 255 as they are, then value_map, then
        ignore_index; a value outside it names both keys as the fix."""
        mapping = {k: k for k in range(len(self.classes))}
        mapping[IGNORE_INDEX] = IGNORE_INDEX
        mapping.update(self.value_map or {})
        mapping.update({value: IGNORE_INDEX for value in self.ignored})
        fix = (
            "map it to a class with value_map = {{{value} = C}}, or ignore it with "
            "ignore_index = {value} (in the config, or --option on fcnseg eval)"
        )
        return LabelMap(mapping, name=f"{len(self.classes)}-class", fix=fix)

    def _pair(self) -> list[Sample]:
        images_dir, masks_dir, wanted = self._split_folders()
        beside = images_dir.resolve() == masks_dir.resolve()
        if beside and not self.seg_map_suffix:
            raise DatasetError(
                f"{images_dir}: images and masks share the folder: set seg_map_suffix to the "
                "ending of the masks' names (e.g. seg_map_suffix = '_mask.png')"
            )
        skip = self.seg_map_suffix if beside else None
        images = _by_key(images_dir, IMAGE_SUFFIXES, "image", self.img_suffix, skip)
        _refuse_lossy_masks(masks_dir, self.seg_map_suffix)
        masks = _by_key(masks_dir, MASK_SUFFIXES, "mask", self.seg_map_suffix, None)
        keys = wanted if wanted is not None else sorted(images.keys() | masks.keys())
        for key in keys:  # images without masks first: their hint names the mask to read
            if key in images and key not in masks:
                self._refuse_unpaired(key, images, masks_dir, "image")
        for key in keys:
            if key not in images:
                self._refuse_unpaired(key, masks, images_dir, "mask")
        if not keys:
            raise DatasetError(f"{images_dir} holds no images: put images and masks there")
        return [Sample(key, images[key], masks[key]) for key in keys]

    def _split_folders(self) -> tuple[Path, Path, list[str] | None]:
        """The images and masks folders of the split, and the names a ``<split>.txt``
        lists (None: every image)."""
        images_dir = require_dir(
            self.root / self.img_dir,
            "images folder",
            f"put the images in {self.img_dir}/ (or name their folder with img_dir)",
        )
        masks_dir = require_dir(
            self.root / self.ann_dir,
            "masks folder",
            f"put the masks in {self.ann_dir}/ (or name their folder with ann_dir)",
        )
        if self.split is None:
            return images_dir, masks_dir, None
        if (images_dir / self.split).is_dir():
            require_dir(masks_dir / self.split, "masks folder", f"put the {self.split} masks there")
            return images_dir / self.split, masks_dir / self.split, None
        if (self.root / f"{self.split}.txt").is_file():
            listed = read_split_file(self.root / f"{self.split}.txt", "list one name per line")
            return images_dir, masks_dir, listed
        raise DatasetError(
            f"{self.root}: no split {self.split!r}: create {self.img_dir}/{self.split}/ and "
            f"{self.ann_dir}/{self.split}/, or {self.split}.txt listing names; or, to take every "
            "image, set the split to none (train_split=none / val_split=none, "
            "--split none on fcnseg eval)"
        )

    def _refuse_unpaired(self, key: str, found: dict[str, Path], missing_in: Path, kind: str):
        """The one-line error for ``key``, a ``kind`` file (or a name of ``<split>.txt``)
        without its partner in ``missing_in``, with the suffixes that would pair it."""
        if key not in found:  # listed in <split>.txt, and neither file exists
            raise DatasetError(
                f"{self.root / f'{self.split}.txt'} lists {key!r}, which has no image in "
                f"{missing_in}: add it or remove the line"
            )
        path = found[key]
        name = path.relative_to(path.parents[len(Path(key).parts) - 1]).as_posix()
        if kind == "image":
            expected = missing_in / (key + (self.seg_map_suffix or ".png"))
            hint = _partner_hint(name, _names(missing_in), "img_suffix", "seg_map_suffix")
            raise DatasetError(
                f"image {path} has no mask {expected}{hint}: add the mask or remove the image"
            )
        hint = _partner_hint(name, _names(missing_in), "seg_map_suffix", "img_suffix")
        raise DatasetError(
            f"{path}: no image {key}{self.img_suffix or '.*'} in {missing_in}{hint}: add the "
            "image or remove the mask"
        )

    def _scan(self, count: int) -> None:
        """Read up to ``count`` masks spread over the split: which classes occur, and whether
        255 stands in for the foreground of a binary dataset (see the module docstring)."""
        if count <= 0:
            return
        picks = np.linspace(0, len(self.samples) - 1, min(count, len(self.samples)))
        picks = np.unique(picks.round().astype(int))
        seen = np.zeros(IGNORE_INDEX + 1, dtype=bool)  # the classes, and 255 for ignored
        examples: dict[int, Path] = {}  # a mask holding 1; one holding 255 and no 1
        for index in picks:
            sample = self.samples[index]
            label = self.label_map(self.read_label(sample), sample.label)
            present = np.bincount(label.ravel(), minlength=IGNORE_INDEX + 1) > 0
            seen |= present
            if present[1] or present[IGNORE_INDEX]:
                examples.setdefault(1 if present[1] else IGNORE_INDEX, sample.label)
        where = f"{len(picks)} {self.split} masks" if self.split else f"{len(picks)} masks"
        if self._guesses_what_255_means():
            self._refuse_255_as_foreground(examples, where)
        self._warn_missing_classes(seen, where)

    def _guesses_what_255_means(self) -> bool:
        """Binary index masks and no value_map saying what 255 means."""
        explicit = self.value_map is not None or IGNORE_INDEX in self.ignored
        return self.num_classes == 2 and self.mask_colors is None and not explicit

    def _refuse_255_as_foreground(self, examples: dict[int, Path], where: str) -> None:
        """Masks with 255 and no 1 hold the foreground as 255 (which is ignored): in every
        scanned mask, or beside masks that hold it as 1 (two encodings mixed in one set)."""
        if IGNORE_INDEX not in examples:
            return
        if 1 not in examples:
            raise DatasetError(
                f"{self.root}: the {where} scanned hold 255 and no 1, and 255 means "
                "ignored, so the foreground would never be learnt or scored: map it with "
                "value_map = {0 = 0, 255 = 1} (in the config, or --option "
                "value_map={0=0,255=1} on fcnseg eval), or save the foreground as 1"
            )
        raise DatasetError(
            f"{self.root}: mask {examples[IGNORE_INDEX]} holds 255 and no 1 while mask "
            f"{examples[1]} holds 1, and 255 means ignored, so the foreground of masks like "
            "the first would never be learnt or scored: if both mean the foreground, map them "
            "with value_map = {0 = 0, 1 = 1, 255 = 1} (in the config, or "
            "--option value_map={0=0,1=1,255=1} on fcnseg eval) or save it as 1 in every "
            "mask; if 255 does mark pixels to ignore, say so with value_map = "
            "{0 = 0, 1 = 1, 255 = 255}"
        )

    def _warn_missing_classes(self, seen: np.ndarray, where: str) -> None:
        missing = [f"{self.classes[k]!r} ({k})" for k in range(self.num_classes) if not seen[k]]
        if missing:
            subject = "class " if len(missing) == 1 else "classes "
            verb = "occurs" if len(missing) == 1 else "occur"
            warnings.warn(
                f"{self.root}: {subject}{', '.join(missing)} never {verb} in the {where} "
                "scanned: check the masks and classes.txt",
                stacklevel=4,
            )

    def read_label(self, sample: Sample) -> np.ndarray:
        if self.mask_colors is None:
            return read_label(sample.label)
        return read_label(sample.label, self.mask_colors, self.mask_values)
