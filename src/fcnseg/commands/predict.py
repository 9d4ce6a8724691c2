"""``fcnseg predict``: label maps for image files, folders or glob patterns.

    fcnseg predict --checkpoint runs/x/best.pt photos/ extra/*.jpg --out predictions/

For each image it writes ``<name>.png``, an index PNG whose pixel values are the class
indices shown in the dataset's palette, and ``<name>_overlay.png`` (the classes blended over
the image, pixel for pixel in its top-left corner, above a legend of the class colours; at
least 240 pixels wide); ``--probabilities`` adds
``<name>_probs.npy`` (C x H x W float32). Images of any size are predicted whole, or with
``--tile 1024`` in overlapping 1024 x 1024 tiles (memory bounded by the tile, not the
image; ``fcnseg.tiling``). An input that cannot be read is reported at the end; the others
are still processed.

A two-headed checkpoint (SIFT Flow) writes one map per task: ``<name>_semantic.png``,
``<name>_geometric.png`` (and ``<name>_semantic_overlay.png``, ``<name>_semantic_probs.npy``
...). Multi-input checkpoints (NYUDv2 RGB-D, RGB-HHA) read more than one image per
prediction: use ``fcnseg.inference.Segmenter`` with a dict of inputs.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import DatasetError
from ..engine.distributed import resolve_device
from ..inference import Segmenter, load_rgb, save_mask
from ..tiling import Tiling
from ..viz import figure_pixels, overlay_figure

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict label maps for images",
        description="Write an index PNG mask (dataset palette) and an overlay per image.",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a .pt from fcnseg train, or a .onnx from fcnseg export onnx",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--probabilities", action="store_true", help="also save class probabilities (.npy)"
    )
    parser.add_argument("--no-overlay", action="store_true", help="masks only")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument(
        "--tile",
        type=_positive,
        metavar="PIXELS",
        help="predict larger images in overlapping tiles of this side (default: whole)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        metavar="PIXELS",
        help="pixels adjacent tiles share (default: a third of --tile)",
    )
    parser.set_defaults(run=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of pixels")
    return value


def _tiling(args: argparse.Namespace) -> Tiling | None:
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


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image paths from files, folders (their images, sorted) and glob patterns; and the
    inputs that matched nothing, with the reason."""
    found: list[Path] = []
    failed: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                failed.append((item, "folder holds no images"))
            found += images
        elif path.exists():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            images = [p for p in matches if p.is_file()]
            if not images:
                failed.append((item, "pattern matches no file"))
            found += images
        else:
            failed.append((item, "no such file or folder"))
    unique = list(dict.fromkeys(found))
    return unique, failed


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any work is done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fcnseg-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PermissionError(
            f"cannot write to output folder {folder} ({reason}): choose another --out"
        ) from None


def _output_stem(path: Path, used: set[str]) -> str:
    """``path``'s name without suffix, made unique among the outputs (a.jpg and a.png)."""
    stem, number = path.stem, 1
    while stem in used:
        number += 1
        stem = f"{path.stem}-{number}"
    used.add(stem)
    return stem


def _write(
    args,
    rgb,
    stem: str,
    labels: np.ndarray,
    probs: np.ndarray | None,
    segmenter: Segmenter,
    task: str | None = None,
) -> None:
    """``<stem>.png``, its overlay and probabilities, as the options ask; ``task`` picks the
    palette and class names of a multi-task model's map."""
    task = task or segmenter.tasks[0]
    palette, classes = segmenter.task_palettes[task], segmenter.task_classes[task]
    save_mask(labels, args.out / f"{stem}.png", palette)
    if not args.no_overlay:
        image = rgb.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        ignore = segmenter.ignore_index
        figure = overlay_figure(image, labels, palette, classes, ignore_index=ignore)
        Image.fromarray(figure_pixels(figure)).save(args.out / f"{stem}_overlay.png")
    if probs is not None:
        np.save(args.out / f"{stem}_probs.npy", probs)


def run(args: argparse.Namespace) -> int:
    tiling = _tiling(args)
    check_writable(args.out)
    segmenter = Segmenter.from_checkpoint(
        args.checkpoint, device=resolve_device(args.device), tiling=tiling
    )
    if len(segmenter.inputs) != 1:
        raise ValueError(
            f"{args.checkpoint} reads {' + '.join(segmenter.inputs)}, and fcnseg predict reads "
            "one RGB image: predict with fcnseg.inference.Segmenter and a dict of inputs"
        )
    paths, failed = expand_inputs(args.inputs)
    used: set[str] = set()
    written = 0
    for path in paths:
        try:
            rgb = load_rgb(path)
        except (DatasetError, OSError, ValueError) as error:
            failed.append((str(path), str(error)))
            continue
        stem = _output_stem(path, used)
        result = segmenter.predict(rgb, probabilities=args.probabilities)
        labels, probs = result if args.probabilities else (result, None)
        if isinstance(labels, dict):  # a multi-task model: one map per task
            names = []
            for task, task_labels in labels.items():
                task_probs = None if probs is None else probs[task]
                _write(args, rgb, f"{stem}_{task}", task_labels, task_probs, segmenter, task)
                names.append(f"{stem}_{task}.png")
        else:
            _write(args, rgb, stem, labels, probs, segmenter)
            names = [f"{stem}.png"]
        written += 1
        print(f"{path} -> {', '.join(str(args.out / name) for name in names)}")
    print(f"{written} image(s) predicted into {args.out}{os.sep}")
    if failed:
        print(f"{len(failed)} input(s) failed:")
        for item, reason in failed:
            print(f"  {item}: {reason}")
        return 1
    return 0
