"""Command-line options that several commands share, declared once."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import parse_literal
from ..data import DatasetError, build_dataset, eval_transforms
from ..devices import resolve_device
from ..engines import require
from ..inference import Segmenter
from ..speed import InferenceOptions
from ..tiling import Tiling
from ..tta import TTA
from ..zoo import INT8, entry, model_file

__all__ = [
    "add_dataset",
    "add_model_file",
    "add_segmenter",
    "check_segmenter",
    "add_engine",
    "add_speed",
    "add_threads",
    "add_tiling",
    "add_tta",
    "apply_threads",
    "check_engine",
    "open_dataset",
    "positive",
    "segmenter_of",
    "speed_of",
    "split_name",
    "tiling_of",
    "tta_of",
    "use_pretrained",
    "warn_cpu_engine",
]


def split_name(text: str) -> str | None:
    """ "none" (any case) is no split: the folder reader's flat layout has none."""
    return None if text.lower() == "none" else text


def _reader_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r} is not KEY=VALUE")
        options[key.strip()] = parse_literal(value.strip())
    return options


def add_dataset(parser: argparse.ArgumentParser, *, data_help: str, split: str, split_help: str):
    """``--data``, ``--root``, ``--split`` and ``--option KEY=VALUE``: a dataset to read."""
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--root", type=Path, help="the dataset's folder (not for synthetic)")
    parser.add_argument("--split", default=split, type=split_name, help=split_help)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reader option, e.g. size=96 or sbd_root=data/sbd (repeatable)",
    )


def open_dataset(args: argparse.Namespace, split: str | None, normalization: Callable) -> Dataset:
    """The ``--data`` reader on ``split``, images normalised for the model; a reader option
    it does not take is one line."""
    try:
        return build_dataset(
            args.data,
            root=args.root,
            split=split,
            transforms=eval_transforms(normalization),
            **_reader_options(args.option),
        )
    except TypeError as error:  # an option the reader does not take
        raise DatasetError(f"dataset {args.data!r}: {error}") from None


def positive(what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of ``what`` (threads, pixels, bytes), 1 or more."""

    def parse(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} is not a positive number of {what}")
        return value

    return parse


_threads = positive("threads")


def _threads_or_auto(text: str) -> int | str:
    return "auto" if text == "auto" else _threads(text)


def add_threads(parser: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--threads N``: CPU compute threads (default: PyTorch's, one per core); with
    ``auto``, also ``--threads auto``: chosen per call (``fcnseg.speed.AdaptiveThreads``)."""
    parser.add_argument(
        "--threads",
        type=_threads_or_auto if auto else _threads,
        metavar="N" + ("|auto" if auto else ""),
        help="CPU compute threads (default: one per core; 1 is faster on a busy machine"
        + ("; auto: 1 or all, whichever the last images ran faster on)" if auto else ")"),
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Set the compute threads ``--threads`` asks for (nothing when it was not given, or
    ``auto``: the Segmenter chooses)."""
    if isinstance(args.threads, int):
        torch.set_num_threads(args.threads)


def add_engine(parser: argparse.ArgumentParser) -> None:
    """``--engine``: what runs the model (``fcnseg.engines``)."""
    parser.add_argument(
        "--engine",
        metavar="NAME",
        help="torch, onnxruntime, openvino or auto (the fastest measured: docs/deploy.md); "
        "default: torch for a checkpoint, auto for an .onnx file",
    )


def check_engine(args: argparse.Namespace) -> None:
    """Refuse an unknown or missing engine in one line, before any file is read."""
    if args.engine is not None:
        require(args.engine)


def warn_cpu_engine(args: argparse.Namespace, engine: str, device: torch.device) -> None:
    """Say so when ``--device`` names a device the engine does not run on: the ONNX
    engines run on the CPU, and a GPU asked for would otherwise sit idle unnoticed."""
    if engine != "torch" and args.device != "auto" and device.type != "cpu":
        warnings.warn(
            f"engine {engine} runs on the CPU: --device {args.device} is not used "
            "(--engine torch runs the model there)",
            stacklevel=2,
        )


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of scales like 0.75,1,1.25"
        ) from None
    if not scales:
        raise argparse.ArgumentTypeError("give one scale or more, like 0.75,1,1.25")
    return scales


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta`` (mirrored copies) and ``--tta-scales`` (rescaled copies)."""
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the scores of the image and its mirror image "
        "(twice the time)",
    )
    parser.add_argument(
        "--tta-scales",
        type=_scales,
        metavar="S,S,...",
        help="test-time augmentation: average the scores of the image resized by each scale "
        "(e.g. 0.75,1,1.25; with --tta, of each mirror image too)",
    )


def tta_of(args: argparse.Namespace) -> TTA | None:
    """The ``fcnseg.tta.TTA`` the options ask for, or None."""
    if not args.tta and args.tta_scales is None:
        return None
    return TTA.of(args.tta_scales, flip=args.tta)


def add_tiling(parser: argparse.ArgumentParser) -> None:
    """``--tile PIXELS`` and ``--tile-overlap PIXELS`` (``fcnseg.tiling``)."""
    parser.add_argument(
        "--tile",
        type=positive("pixels"),
        metavar="PIXELS",
        help="predict larger images in overlapping tiles of this side (default: whole)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        metavar="PIXELS",
        help="pixels adjacent tiles share (default: a third of --tile)",
    )


def tiling_of(args: argparse.Namespace) -> Tiling | None:
    if args.tile is None:
        if args.tile_overlap is not None:
            raise ValueError("--tile-overlap needs --tile: give the tile side as well")
        return None
    if args.tile_overlap is not None and not 0 <= args.tile_overlap < args.tile:
        raise ValueError(
            f"--tile-overlap {args.tile_overlap} must be at least 0 and less than --tile "
            f"{args.tile}"
        )
    return Tiling.of(args.tile, args.tile_overlap)


def add_speed(parser: argparse.ArgumentParser) -> None:
    """``--bf16`` and ``--compile``: how the torch engine runs the model (``fcnseg.speed``)."""
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast (fast on GPUs from compute capability 8.0; measure on a CPU)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (pays for many images of one size)",
    )


def speed_of(args: argparse.Namespace) -> InferenceOptions | None:
    """The ``InferenceOptions`` that ``--bf16`` and ``--compile`` ask for; None: the defaults."""
    if not (args.bf16 or args.compile):
        return None
    return InferenceOptions(bf16=args.bf16, compile=args.compile)


def add_segmenter(parser: argparse.ArgumentParser) -> None:
    """How a command that predicts runs its model: ``--device``, ``--threads`` (or auto),
    ``--engine``, ``--tta``, ``--bf16``/``--compile``, ``--tile`` (``segmenter_of``)."""
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    add_threads(parser, auto=True)
    add_engine(parser)
    add_tta(parser)
    add_speed(parser)
    add_tiling(parser)


def check_segmenter(args: argparse.Namespace) -> None:
    """Refuse, before anything slow, what ``segmenter_of`` would: an unknown
    ``--pretrained`` name (``--checkpoint`` then names its file), engine, device or tiles."""
    use_pretrained(args, int8="file")
    tiling_of(args)
    check_engine(args)
    resolve_device(args.device)


def segmenter_of(args: argparse.Namespace) -> Segmenter:
    """The ``Segmenter`` of the model file, run as ``add_segmenter``'s options say
    (``check_segmenter`` first)."""
    apply_threads(args)
    device = resolve_device(args.device)
    segmenter = Segmenter.from_checkpoint(
        args.checkpoint,
        device=device,
        tiling=tiling_of(args),
        tta=tta_of(args),
        engine=args.engine,
        threads=args.threads,
        speed=speed_of(args),
    )
    warn_cpu_engine(args, segmenter.engine, device)
    return segmenter


def add_model_file(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--checkpoint FILE`` or ``--pretrained NAME`` (a trained model of the zoo): one of
    the two, required."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help=help)
    source.add_argument(
        "--pretrained",
        metavar="NAME",
        help="a trained model that ships with fcnseg, e.g. fcn8s_efficientnet_lite0.camvid "
        "(fcnseg models --pretrained lists them)",
    )


def use_pretrained(args: argparse.Namespace, *, int8: str) -> None:
    """Point ``args.checkpoint`` at the file ``--pretrained`` names, checked against the
    sha256 of its card. ``int8`` says what ``<entry>.int8`` means to the command: ``"file"``
    (the int8 file is the model file: predict), ``"onnx"`` (the entry's weights, and its
    int8 file as ``--onnx``: eval) or ``"refuse"`` (export, quantize: it is int8 already)."""
    name = getattr(args, "pretrained", None)
    if name is None:
        return
    if not name.endswith(INT8) or int8 == "file":
        entry(name.removesuffix(INT8))  # an unknown name: one line with the closest names
        args.checkpoint = model_file(name)
        return
    base = name.removesuffix(INT8)
    if int8 == "refuse":
        raise ValueError(f"--pretrained {name} is an int8 ONNX file already: give {base}")
    if args.onnx is not None:
        raise ValueError(f"--pretrained {name} brings its own --onnx file: drop --onnx {args.onnx}")
    args.checkpoint = entry(base).file("weights")
    args.onnx = entry(base).file("int8")
