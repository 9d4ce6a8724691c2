"""``fcnseg predict``: label maps for image files, folders or glob patterns.

    fcnseg predict --checkpoint runs/x/best.pt photos/ extra/*.jpg --out predictions/

For each image it writes ``<name>.png``, an index PNG whose pixel values are the class
indices shown in the dataset's palette, and ``<name>_overlay.png``; ``--probabilities`` adds
``<name>_probs.npy`` (C x H x W float32). Images of any size are predicted whole, or with
``--tile 1024`` in overlapping 1024 x 1024 tiles (memory bounded by the tile, not the
image; ``fcnseg.tiling``; a tile below the model's coarsest stride is refused). An input
that cannot be read is reported at the end; the others are still processed. A recursive
glob (``'photos/**/*.jpg'``) enters each real folder once, whatever links lead back into
it, and each real file is predicted once, however many paths name it.

``--engine`` runs the model on onnxruntime or OpenVINO (``auto``: the fastest measured),
from an export cached beside the checkpoint; ``--tta`` / ``--tta-scales`` average the
scores of mirrored / rescaled copies (docs/deploy.md). A ``.onnx`` file (``fcnseg export
onnx``, ``fcnseg quantize``) runs as ``--checkpoint`` too.

A two-headed checkpoint (SIFT Flow) writes one map per task: ``<name>_semantic.png``,
``<name>_geometric.png`` (and ``<name>_semantic_overlay.png``, ``<name>_semantic_probs.npy``
...).

A multi-input checkpoint (NYUDv2 RGB-D, RGB-HHA) reads one file per input, each given as
``--input NAME=PATH`` with the input names the model declares (``fcnseg models`` lists
them)::

    fcnseg predict --checkpoint rgbd.pt --input color=img.png --input depth=depth.png --out o/
    fcnseg predict --checkpoint rgbd.pt --input color=data/images --input depth=data/depth --out o/

PATH is a file, a folder or a glob, as above. With one file per input those files make one
prediction, whatever their names; otherwise the files are paired by stem (NYUDv2's
``images/img_5001.png`` with ``depth/img_5001.png``), and a stem that some input lacks is
reported as a failure. Outputs are named after the first input's file; the overlay is drawn
on the first 3-channel input (the colour image). Depth reads a 16-bit PNG as stored.

No file but predict's own earlier outputs is ever written over: the PNGs it writes carry a
``Software: fcnseg predict`` text chunk, and when a name is taken by an input or by any other
file, the outputs take the next free ``<name>-2``, ``<name>-3``, ... (printed per image). The
same mark keeps folders and globs from feeding predict's outputs back in as inputs, so
``--out`` may be the input folder.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import DatasetError
from ..fileio import atomic_write
from ..inference import (
    MARK_KEY,
    MARK_VALUE,
    Segmenter,
    backdrop,
    load_input,
    mask_image,
    png_bytes,
)
from ..models import ModelSpec
from ..training.checkpoint import WriteError, writing
from ..viz import overlay_picture
from .globbing import file_identity, glob_files
from .options import add_model_file, add_segmenter, check_segmenter, segmenter_of
from .outputs import unwritable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict label maps for images",
        description="Write an index PNG mask (dataset palette) and an overlay per image.",
    )
    add_model_file(
        parser,
        help="a .pt from fcnseg train, or a .onnx from fcnseg export onnx or fcnseg quantize",
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files, folders, globs (one-input models)"
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        dest="named_inputs",
        metavar="NAME=PATH",
        help="one input of a multi-input model, by the model's input name; PATH is a file, a "
        "folder or a glob (repeat for each input: --input color=img.png --input "
        "depth=depth.png, or folders --input color=images/ --input depth=depth/, paired by "
        "file stem)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--probabilities", action="store_true", help="also save class probabilities (.npy)"
    )
    parser.add_argument("--no-overlay", action="store_true", help="masks only")
    add_segmenter(parser)
    parser.set_defaults(run=run)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image paths from files, folders (their images, sorted) and glob patterns; and the
    inputs that matched nothing, with the reason. Folders and globs leave out the masks and
    overlays predict wrote (a file named on its own is taken as it is). Each real file comes
    once, by its first path, however many paths or links lead to it (``globbing``); a link
    that leads back to itself raises a ValueError naming it."""
    found: list[Path] = []
    failed: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            images = [p for p in images if not written_by_predict(p)]
            if not images:
                failed.append((item, "folder holds no images"))
            found += images
        elif path.exists():
            found.append(path)
        elif glob.has_magic(item):
            images = [p for p in glob_files(item) if not written_by_predict(p)]
            if not images:
                failed.append((item, "pattern matches no file"))
            found += images
        else:
            file_identity(path)  # raises for a link that leads back to itself
            failed.append((item, "no such file or folder"))
    return _each_file_once(found), failed


def _each_file_once(paths: list[Path]) -> list[Path]:
    """``paths`` in order, less those that reach a file an earlier one reached; a path to
    nothing stays (its reading reports it)."""
    unique: dict[object, Path] = {}
    for path in paths:
        unique.setdefault(file_identity(path) or path, path)
    return list(unique.values())


def written_by_predict(path: Path) -> bool:
    """Whether ``path`` is a mask or overlay written by fcnseg predict (its PNG mark); a
    probabilities file counts as predict's when the mask beside it does."""
    if path.name.endswith("_probs.npy"):
        return written_by_predict(path.with_name(path.name[: -len("_probs.npy")] + ".png"))
    if path.suffix.lower() != ".png" or not path.is_file():
        return False
    try:
        with Image.open(path) as image:  # reads the chunks before the pixels only
            return image.info.get(MARK_KEY) == MARK_VALUE
    except (OSError, SyntaxError, ValueError):
        return False  # unreadable: not ours, so never written over


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any work is done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
    else:
        reason = unwritable(folder)
    if reason is not None:
        raise PermissionError(
            f"cannot write to output folder {folder} ({reason}): choose another --out"
        )


class OutputNames:
    """Chooses each image's output stem so that no output lands on an input, on a file
    predict did not write, or on an earlier image's outputs of this run."""

    def __init__(self, args: argparse.Namespace, tasks: tuple[str, ...], inputs: list[Path]):
        self.out, self.tasks = args.out, tasks
        self.suffixes = [".png"]
        if not args.no_overlay:
            self.suffixes.append("_overlay.png")
        if args.probabilities:
            self.suffixes.append("_probs.npy")
        self.inputs = {file_identity(path) for path in inputs} - {None}
        self.used: set[str] = set()

    def stem(self, path: Path) -> str:
        """``path``'s name without suffix, or ``<name>-N`` with the first N that is free."""
        stem, number = path.stem, 1
        while stem in self.used or not self._free(stem):
            number += 1
            stem = f"{path.stem}-{number}"
        self.used.add(stem)
        return stem

    def maps(self, stem: str) -> dict[str, str]:
        """The name of each task's label map: the stem itself for a single task, else
        ``<stem>_<task>`` (what a user of a one-task model expects, one file per image)."""
        several = len(self.tasks) > 1
        return {task: f"{stem}_{task}" if several else stem for task in self.tasks}

    def _free(self, stem: str) -> bool:
        for name in self.maps(stem).values():
            for suffix in self.suffixes:
                target = self.out / f"{name}{suffix}"
                if os.path.lexists(target) and not written_by_predict(target):
                    return False  # a user's file, or a link of theirs (to nothing, or a loop)
                if file_identity(target) in self.inputs:
                    return False
        return True


def _save_png(image: Image.Image, path: Path) -> None:
    """Save with predict's mark (``png_bytes``), so later runs know the file as theirs;
    atomically, so a full disk leaves no half-written file (``WriteError`` names the file)."""
    data = png_bytes(image)
    with writing(path, kept=False):
        atomic_write(path, lambda temporary: temporary.write_bytes(data))


def _save_npy(array: np.ndarray, path: Path) -> None:
    def save(temporary: Path) -> None:
        with temporary.open("wb") as file:  # a file object: np.save adds no suffix
            np.save(file, array)

    with writing(path, kept=False):
        atomic_write(path, save)


def _write(
    args,
    rgb,
    stem: str,
    labels: np.ndarray,
    probs: np.ndarray | None,
    segmenter: Segmenter,
    task: str,
) -> None:
    """``<stem>.png``, its overlay (with a legend) and probabilities, as the options ask;
    ``task`` picks the palette and class names."""
    palette, classes = segmenter.task_palettes[task], segmenter.task_classes[task]
    _save_png(mask_image(labels, palette), args.out / f"{stem}.png")
    if not args.no_overlay:
        image = rgb.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        ignore = segmenter.ignore_index
        picture = overlay_picture(image, labels, palette, classes, ignore_index=ignore)
        _save_png(Image.fromarray(picture), args.out / f"{stem}_overlay.png")
    if probs is not None:
        _save_npy(probs, args.out / f"{stem}_probs.npy")


def run(args: argparse.Namespace) -> int:
    check_segmenter(args)
    check_writable(args.out)  # before the model loads
    segmenter = segmenter_of(args)
    jobs, failed = collect_inputs(args, segmenter.spec)
    inputs = [file for _, files in jobs for file in files.values()]
    names = OutputNames(args, segmenter.tasks, inputs)
    written, bar = 0, _progress_bar(len(jobs))
    for path, files in jobs:
        bar.update(1)
        try:
            images = _load(files, segmenter.spec)
        except (DatasetError, OSError, ValueError) as error:
            failed.append((str(path), str(error)))
            continue
        stem = names.stem(path)
        rgb = backdrop(images, segmenter.spec)
        source = " + ".join(str(file) for file in files.values())
        try:
            labels, probs = segmenter.label_maps(images, probabilities=args.probabilities)
        except MemoryError as error:  # the advice holds for the images after it too: stop
            raise ValueError(f"{source}: {error}") from None
        maps = names.maps(stem)
        try:
            for task, name in maps.items():
                task_probs = None if probs is None else probs[task]
                _write(args, rgb, name, labels[task], task_probs, segmenter, task)
        except WriteError as error:  # a full disk: say so, and try the others
            failed.append((source, str(error)))
            continue
        written += 1
        masks = ", ".join(str(args.out / f"{name}.png") for name in maps.values())
        bar.write(f"{source} -> {masks}")
    bar.close()
    print(f"{written} image(s) predicted into {args.out}{os.sep}")
    if failed:
        print(f"{len(failed)} input(s) failed:")
        for item, reason in failed:
            print(f"  {item}: {reason}")
        return 1
    return 0


def _progress_bar(total: int):
    """A bar over the images on a terminal (with more than one image), the per-image lines
    written above it; a plain printer of those lines otherwise."""
    from tqdm import tqdm

    shown = sys.stdout.isatty() and total > 1
    return tqdm(total=total, desc="predict", unit="image", disable=not shown, file=sys.stdout)


# ---------------------------------------------------------------------------------------------
# The files of each prediction, one per model input


Job = tuple[Path, dict[str, Path]]  # (the file outputs are named after, {input: file})


def collect_inputs(args: argparse.Namespace, spec: ModelSpec) -> tuple[list[Job], list]:
    """The files of each prediction, by the model's input names, and the inputs that failed
    (with the reason). A one-input model reads the positional INPUTs (and ``--input`` with
    its name); a multi-input model reads one ``--input NAME=PATH`` per input."""
    named = _named_inputs(args.named_inputs, spec, args.checkpoint)
    if len(spec.inputs) == 1:
        name = spec.input_names[0]
        paths, failed = expand_inputs([*args.inputs, *named.get(name, [])])
        if not paths and not failed:
            raise ValueError("give the images to predict: files, folders or glob patterns")
        return [(path, {name: path}) for path in paths], failed
    wanted = " ".join(f"--input {name}=PATH" for name in spec.input_names)
    if args.inputs or set(named) != set(spec.input_names):
        raise ValueError(
            f"{args.checkpoint} reads {' + '.join(spec.input_names)}: give each input as "
            f"{wanted} (files, or folders paired by file stem)"
        )
    found: dict[str, list[Path]] = {}
    failed: list[tuple[str, str]] = []
    for name in spec.input_names:
        found[name], bad = expand_inputs(named[name])
        failed += [(f"{name}={item}", reason) for item, reason in bad]
    return pair_by_stem(found, failed)


def _named_inputs(items: list[str], spec: ModelSpec, checkpoint: Path) -> dict[str, list[str]]:
    named: dict[str, list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--input {item!r} is not NAME=PATH (for example color=photo.png)")
        if name not in spec.input_names:
            raise ValueError(
                f"--input {item!r}: {checkpoint} has no input {name!r}; it reads "
                f"{', '.join(spec.input_names)}"
            )
        named.setdefault(name, []).append(path)
    return named


def pair_by_stem(found: dict[str, list[Path]], failed: list) -> tuple[list[Job], list]:
    """One job per stem that every input has (one file per input: one job, whatever the
    names); a stem some input lacks, or has twice, is a failure."""
    names = list(found)
    if all(len(paths) == 1 for paths in found.values()):
        files = {name: paths[0] for name, paths in found.items()}
        return [(files[names[0]], files)], failed
    stems: dict[str, dict[str, list[Path]]] = {}
    for name, paths in found.items():
        for path in paths:
            stems.setdefault(path.stem, {}).setdefault(name, []).append(path)
    jobs = []
    for stem, by_input in stems.items():
        some = next(iter(by_input.values()))[0]
        missing = [name for name in names if name not in by_input]
        twice = [name for name in names if len(by_input.get(name, ())) > 1]
        if missing:
            failed.append((str(some), f"no {' or '.join(missing)} file with the stem {stem!r}"))
        elif twice:
            failed.append(
                (str(some), f"several {' and '.join(twice)} files with the stem {stem!r}")
            )
        else:
            files = {name: by_input[name][0] for name in names}
            jobs.append((files[names[0]], files))
    return jobs, failed


def _load(files: dict[str, Path], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Each input read as the model declares it, all of one size."""
    images = {item.name: load_input(files[item.name], item) for item in spec.inputs}
    sizes = {name: tuple(image.shape[-2:]) for name, image in images.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {h}x{w}" for name, (h, w) in sizes.items())
        raise ValueError(f"the inputs differ in size ({listed}): give images of one size")
    return images
