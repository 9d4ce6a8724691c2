"""``fcnseg eval``: the paper's four metrics and a per-class table for a checkpoint.

fcnseg eval --checkpoint runs/x/best.pt --data camvid --root data/CamVid --split test
fcnseg eval --checkpoint best.pt --data synthetic --option size=96 --out metrics.json
fcnseg eval --checkpoint runs/mine/best.pt --data folder --root my-data --per-image scores.csv
fcnseg eval --checkpoint best.pt --data camvid --root data/CamVid --engine openvino --tta
fcnseg eval --checkpoint best.pt --onnx best.int8.onnx --data camvid --root data/CamVid

Left out, ``--split`` scores the images the checkpoint's run held out for validation where it
held out a random share of this dataset (a folder without splits: ``val_images.txt``), else
val; a warning says when scored images trained the checkpoint.
``--engine`` runs the model on another engine (``fcnseg.engines``), ``--tta`` /
``--tta-scales`` average flipped / rescaled copies (``fcnseg.tta``), ``--onnx FILE``
evaluates an exported or int8 file made from the checkpoint (refused if made from another).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch import nn
from torch.utils.data import Subset

from ..config import RANDOM_SPLIT
from ..devices import resolve_device
from ..engines import check_source
from ..fileio import atomic_write
from ..inference import Segmenter
from ..metrics import json_safe
from ..scoring import task_metrics
from ..training.checkpoint import CheckpointError, load_checkpoint, writing
from ..training.distributed import Context
from ..training.evaluate import class_table, eval_loader, evaluate, format_metrics
from ..training.perimage import evaluate_per_image, worst, write_per_image_csv
from ..training.runfolder import SCORE_UNITS
from .options import (
    add_dataset,
    add_engine,
    add_model_file,
    add_speed,
    add_threads,
    add_tta,
    apply_threads,
    check_engine,
    speed_of,
    tta_of,
    use_pretrained,
    warn_cpu_engine,
)
from .outputs import check_outputs
from .scored import (
    AUTO_SPLIT,
    dataset_to_score,
    split_to_score,
    training_config,
    warn_training_images,
)
from .table import print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset",
        description="Whole-image evaluation: pixel accuracy, mean accuracy, mean IU, "
        "frequency-weighted IU and per-class IU, printed and written as JSON.",
    )
    add_model_file(parser, help="a .pt from fcnseg train")
    add_dataset(
        parser,
        data_help="dataset name (synthetic, camvid, voc, ...)",
        split=AUTO_SPLIT,
        split_help="split to evaluate; none: every image of a dataset without splits; random: "
        "the images the checkpoint's run held out for validation (val_split = random); auto "
        "(default): those where its run held some out of this dataset, else val",
    )
    parser.add_argument(
        "--max-images", type=int, metavar="N", help="evaluate only the first N images (N >= 1)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes (default 2)")
    add_threads(parser)
    add_engine(parser)
    add_tta(parser)
    add_speed(parser)
    parser.add_argument(
        "--onnx",
        type=Path,
        metavar="FILE",
        help="evaluate this .onnx file (fcnseg export onnx / fcnseg quantize) of the checkpoint",
    )
    parser.add_argument("--out", type=Path, help="JSON file (default: beside the checkpoint)")
    parser.add_argument(
        "--per-image",
        type=Path,
        metavar="FILE.csv",
        help="also write one row per image (pixel acc, mean IU, IU per class) and list the "
        "5 worst images by mean IU: where bad labels hide (single-task models)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(
            f"--max-images {args.max_images} would evaluate nothing: give 1 or more, or leave "
            "it out to evaluate every image"
        )
    check_engine(args)
    use_pretrained(args, int8="onnx")
    device = resolve_device(args.device)
    record = load_checkpoint(args.checkpoint)
    trained = training_config(record)
    args.split = split_to_score(args, trained)
    outputs = {"--out": _report_path(args), "--per-image": args.per_image}
    check_outputs(
        {option: path for option, path in outputs.items() if path is not None},
        {"--checkpoint": args.checkpoint, "--onnx": args.onnx},
    )
    apply_threads(args)
    model = record.build()
    runner = _runner(args, model)
    if isinstance(runner, _Scoring):  # an ONNX engine runs on the CPU whatever --device says
        warn_cpu_engine(args, runner.segmenter.engine, device)
        device = runner.segmenter.device
    dataset, reader = dataset_to_score(args, trained, model.normalization)
    classes = _classes(record, reader, args)
    if args.max_images is not None:
        dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
    warn_training_images(args, trained, dataset)
    progress = sys.stdout.isatty()  # quiet when piped or logged
    scores = None
    if args.per_image is not None:
        confusion, scores = evaluate_per_image(
            runner,
            dataset,
            ignore_index=record.ignore_index,
            device=device,
            num_workers=args.workers,
            progress=progress,
        )
    else:
        loader = eval_loader(dataset, Context(device=device), num_workers=args.workers)
        confusion = evaluate(
            runner, loader, ignore_index=record.ignore_index, device=device, progress=progress
        )
    metrics = task_metrics(confusion)
    split = {None: "all images", RANDOM_SPLIT: "held-out images"}.get(args.split, args.split)
    how = f", {runner.how}" if isinstance(runner, _Scoring) else ""
    print(f"{record.spec.label} on {args.data} {split} ({len(dataset)} images{how})")
    for task, values in metrics.items():
        print(f"\n{task}: {format_metrics(values)}\n" if len(metrics) > 1 else format_metrics(values))
        print_table(class_table(values, classes[task]))
    _write_report(args, record, dataset, classes, metrics, confusion)
    if scores is not None:
        _report_images(args.per_image, scores, next(iter(classes.values())))
    return 0


def _report_images(path: Path, scores, classes) -> None:
    """The CSV, then the worst images by mean IU, the first to look at for bad labels."""
    write_per_image_csv(path, scores, classes)
    print(f"wrote {path} ({len(scores)} images)")
    lowest = worst(scores)
    if lowest:
        print(f"the {len(lowest)} worst images by mean IU (check their labels first):")
        rows = [("image", "mean IU", "pixel acc")]
        rows += [
            (score.path or score.image, f"{100 * score.mean_iu:.1f}", f"{100 * score.pixel_acc:.1f}")
            for score in lowest
        ]
        print_table(rows)


class _Scoring(nn.Module):
    """A Segmenter's scores (its engine, TTA) as a ``fcnseg.scoring.Scorer``, what
    ``evaluate`` calls."""

    def __init__(self, segmenter: Segmenter, how: str) -> None:
        super().__init__()
        self.segmenter, self.spec, self.how = segmenter, segmenter.spec, how

    def forward(self, inputs, *, by_task: bool = True):
        return self.segmenter.scores(inputs)


def _runner(args: argparse.Namespace, model) -> nn.Module:
    """The model itself, or a Segmenter when an engine, an ONNX file, TTA, bf16 or compile is
    asked for."""
    tta, speed = tta_of(args), speed_of(args)
    if args.engine in (None, "torch") and args.onnx is None and tta is None and speed is None:
        return model
    options = {"tta": tta, "engine": args.engine, "threads": args.threads}
    if args.onnx is not None:
        check_source(args.onnx, args.checkpoint)
        segmenter = Segmenter.from_onnx(args.onnx, **{**options, "engine": args.engine or "auto"})
    else:
        device = resolve_device(args.device)
        segmenter = Segmenter.from_checkpoint(args.checkpoint, device=device, speed=speed, **options)
    how = f"engine {segmenter.engine}" + (f", {args.onnx}" if args.onnx else "")
    if tta is not None:
        how += f", TTA scales {list(tta.scales)}{' + flip' if tta.flip else ''}"
    return _Scoring(segmenter, how)


def _classes(record, dataset, args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """Class names by task: the dataset's for a single task (checked against the model),
    else the checkpoint's."""
    classes = dict(record.classes)
    if len(classes) == 1 and getattr(dataset, "classes", None):
        (task, count), = record.spec.task_classes.items()
        if len(dataset.classes) != count:
            raise CheckpointError(
                f"checkpoint {args.checkpoint} predicts {count} classes but {args.data} has "
                f"{len(dataset.classes)}: evaluate on the dataset it was trained for"
            )
        classes[task] = tuple(dataset.classes)
    return classes


def _report_path(args: argparse.Namespace) -> Path:
    """``--out``, or a name that says what was evaluated on what: beside the checkpoint, in
    the current folder for a ``--pretrained`` model (its folder belongs to fcnseg)."""
    if args.out is not None:
        return args.out
    name = f"{args.pretrained or args.checkpoint.stem}-{args.data}-{args.split or 'all'}"
    folder = Path() if args.pretrained else args.checkpoint.parent
    return folder / f"eval-{name}.json"


def _write_report(args, record, dataset, classes, metrics, confusion) -> None:
    out = _report_path(args)
    single = len(metrics) == 1  # a single task's metrics stay at the top level
    task = next(iter(metrics))
    report = {
        "checkpoint": str(args.checkpoint),
        **({"pretrained": args.pretrained} if args.pretrained else {}),
        **({"onnx": str(args.onnx)} if args.onnx else {}),
        "model": record.spec.label,
        "dataset": args.data,
        "split": args.split,
        "images": len(dataset),
        "units": SCORE_UNITS,
        "classes": list(classes[task]) if single else {t: list(c) for t, c in classes.items()},
        **(metrics[task] if single else metrics),
        "confusion": confusion[task].matrix.tolist()
        if single
        else {t: m.matrix.tolist() for t, m in confusion.matrices.items()},
    }
    text = json.dumps(json_safe(report), indent=2) + "\n"
    with writing(out):
        atomic_write(out, lambda temporary: temporary.write_text(text))
    print(f"\nwrote {out}")
