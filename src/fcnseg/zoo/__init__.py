"""Trained FCNs that ship with fcnseg: the model zoo.

Each entry is named ``<model>.<dataset>`` (``fcn8s_efficientnet_lite0.camvid``) and lives in
this folder as package data: its weights (``.safetensors``, an fcnseg model file), its int8
ONNX file (``.int8.onnx``, from ``fcnseg quantize --agreement 99``), the label maps it
predicts for two check images (``.check.png``, ``.synthetic.png``) and its card (``.json``):
recipe and config, steps, wall time, machine, validation metrics, int8 agreement, classes,
palette, the sha256 of each file and the data's licence note. ``tools/add_to_zoo.py`` makes
an entry from a training run.

    >>> import fcnseg
    >>> [entry.name for entry in fcnseg.pretrained()]  # doctest: +SKIP
    ['fcn8s_efficientnet_lite0.camvid']
    >>> model = fcnseg.build_model("fcn8s_efficientnet_lite0", weights="camvid")  # doctest: +SKIP
    >>> segmenter = fcnseg.Segmenter.from_pretrained("fcn8s_efficientnet_lite0.camvid")  # doctest: +SKIP

Nothing is downloaded: a file whose bytes no longer match the sha256 its card records is
refused in one line (the installation was damaged: reinstall fcnseg). ``<name>.int8`` names
an entry's int8 file wherever a model file is read (``fcnseg predict --pretrained``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..builder import build_model as build_untrained
from ..fileio import FileFormatError, file_digest
from ..modelfile import read_record
from ..models.fcn import FCN
from ..models.spec import SpecError

__all__ = [
    "FOLDER",
    "INT8",
    "Pretrained",
    "PretrainedError",
    "build_model",
    "check_image",
    "entry",
    "is_pretrained_name",
    "model_file",
    "pretrained",
]

FOLDER = Path(__file__).resolve().parent
INT8 = ".int8"  # "<entry>.int8": the entry's int8 ONNX file
CARD_SUFFIX = ".json"


class PretrainedError(FileFormatError):
    """An unknown zoo name, or a zoo file that fails its checksum (one line, with the fix)."""


@dataclass(frozen=True)
class Pretrained:
    """One entry of the zoo: its card and where its files are."""

    name: str  # "<model>.<dataset>"
    card: dict[str, Any]
    folder: Path

    @property
    def model(self) -> str:
        return self.card["model"]

    @property
    def dataset(self) -> str:
        return self.card["dataset"]

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def val_mean_iu(self) -> float:
        """Mean IU on the dataset's val split (0 to 1), of the shipped weights."""
        return float(self.card["metrics"]["val"]["mean_iu"])

    @property
    def int8_agreement(self) -> float | None:
        """The share of val labels (0 to 1) the int8 file keeps, or None without one."""
        int8 = self.card.get("int8")
        return None if int8 is None else float(int8["val_agreement"])

    @property
    def size_bytes(self) -> int:
        return int(self.card["files"]["weights"]["bytes"])

    def file(self, kind: str = "weights") -> Path:
        """The entry's ``weights`` or ``int8`` file, after checking its sha256."""
        described = self.card["files"].get(kind)
        if described is None:
            raise PretrainedError(f"pretrained model {self.name} ships no {kind} file")
        path = self.folder / described["file"]
        _check_sha256(path, described["sha256"], self.name)
        return path

    def check_mask(self, which: str) -> np.ndarray:
        """The label map stored for a check image: ``frame`` (a CamVid val frame, named in
        the card) or ``synthetic`` (``check_image()``)."""
        with Image.open(self.folder / self.card["check"][which]["mask"]) as image:
            return np.asarray(image).copy()


def pretrained(folder: Path | None = None) -> list[Pretrained]:
    """Every entry of the zoo, by name, with its card."""
    folder = folder or FOLDER
    return [_read_card(path) for path in sorted(folder.glob(f"*{CARD_SUFFIX}"))]


def entry(name: str, folder: Path | None = None) -> Pretrained:
    """The entry named ``name`` (``<model>.<dataset>``); an unknown name is one line listing
    the closest names."""
    entries = {item.name: item for item in pretrained(folder)}
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, entries, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    listed = ", ".join(entries) or "none"
    raise PretrainedError(
        f"no pretrained model {name!r}: {hint}the zoo holds {listed} (fcnseg models --pretrained)"
    )


def is_pretrained_name(text: str | Path, folder: Path | None = None) -> bool:
    """Whether ``text`` names a zoo entry (or its ``.int8`` file) rather than a file."""
    name = str(text).removesuffix(INT8)
    return any(item.name == name for item in pretrained(folder))


def model_file(name_or_path: str | Path, folder: Path | None = None) -> Path:
    """The checked file of a zoo name (``<entry>`` its weights, ``<entry>.int8`` its int8
    ONNX file); anything that names no entry is taken as a path."""
    text = str(name_or_path)
    entries = {item.name: item for item in pretrained(folder)}
    base = text.removesuffix(INT8)
    if base not in entries:
        return Path(name_or_path)
    return entries[base].file("weights" if base == text else "int8")


def build_model(
    model: str | Any,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> FCN:
    """Build a registered model by name, or any ``ModelSpec``; ``weights`` names trained
    weights of the zoo for it (``"camvid"``: the entry ``<model>.camvid``).

    Without ``weights`` this is ``fcnseg.builder.build_model`` (``options`` are
    ``ModelSpec`` fields; ``num_classes`` sets the class count). With them the model is the
    entry's, as trained: ``num_classes`` may only repeat its class count, and build options
    do not apply (fine-tune onto other classes with ``init_from``).
    """
    if weights is None:
        return build_untrained(model, num_classes=num_classes, **options)
    if not isinstance(model, str):
        raise SpecError("weights= names a zoo entry of a registered model: pass the model's name")
    found = entry(f"{model}.{weights}")
    if options:
        raise SpecError(
            f"{found.name} is built as trained: drop {', '.join(sorted(options))}, or build "
            f"{model} untrained and fine-tune it (init_from={found.name})"
        )
    classes = len(found.classes)
    if num_classes is not None and num_classes != classes:
        raise SpecError(
            f"{found.name} predicts {classes} classes, not num_classes={num_classes}: fine-tune "
            f"it onto yours (fcnseg train root=DATA init_from={found.name})"
        )
    return read_record(found.file("weights")).build()


def check_image() -> np.ndarray:
    """A 360 x 480 RGB image made from a fixed seed (smooth blobs of colour): the
    synthetic check image whose label map each entry stores. Same bytes on every machine
    (PCG64 and PIL's 8-bit bilinear resize are exact)."""
    generator = np.random.Generator(np.random.PCG64(2015))
    coarse = generator.integers(0, 256, size=(9, 12, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((480, 360), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------


def _read_card(path: Path) -> Pretrained:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        name = card["name"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PretrainedError(
            f"{path}: not a readable zoo card ({error}): reinstall fcnseg"
        ) from None
    return Pretrained(name=name, card=card, folder=path.parent)


def _check_sha256(path: Path, expected: str, name: str) -> None:
    if not path.is_file():
        raise PretrainedError(
            f"pretrained model {name}: {path} is missing (a damaged installation): reinstall fcnseg"
        )
    if _sha256(path, path.stat().st_mtime_ns, path.stat().st_size) != expected:
        raise PretrainedError(
            f"pretrained model {name}: {path} does not match the sha256 its card records (the "
            "file was damaged after installation): reinstall fcnseg"
        )


@cache
def _sha256(path: Path, mtime_ns: int, size: int) -> str:
    """A file's sha256, once per path, modification time and size."""
    return file_digest(path)
