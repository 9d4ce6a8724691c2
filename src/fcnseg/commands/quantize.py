"""``fcnseg quantize``: an int8 ONNX file of a checkpoint, and what int8 changes on val.

    fcnseg quantize --checkpoint best.pt --data camvid --root data/CamVid --out model.int8.onnx

Calibrates on up to ``--images`` (200) training images run whole, writes the int8 (QDQ)
file, then runs fp32 and int8 over ``--val-split`` (val; ``none`` skips it) and prints
the share of labels int8 keeps and both mean IUs; the numbers also go to
``<out>.json``. ``--fp32-activations N`` then takes the N activations the file rounds
worst (``fcnseg.quantize.sensitive_activations``) off the int8 grid (``keep_fp32``);
``--agreement P`` takes the fewest of them that make int8's labels equal fp32's on P% of
the pixels of training images after the calibration ones (``fewest_fp32``), so val
stays out of the choice.
``fcnseg predict`` and ``fcnseg eval`` run the file (``fcnseg.quantize``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from ..data import DatasetError
from ..engines import cached_onnx, onnx_module
from ..fileio import atomic_write
from ..metrics import json_safe
from ..modelfile import read_record
from ..quantize import (
    MAX_CALIBRATION,
    METHODS,
    Agreement,
    CalibrationImages,
    compare,
    fewest_fp32,
    keep_fp32,
    labelled_samples,
    quantize_onnx,
    sensitive_activations,
)
from ..training.checkpoint import writing
from .options import (
    add_dataset,
    add_model_file,
    add_threads,
    apply_threads,
    open_dataset,
    split_name,
    use_pretrained,
)
from .outputs import check_outputs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="int8 ONNX file of a checkpoint, calibrated on training images",
        description="Post-training static int8 quantization (onnxruntime, QDQ, per-channel "
        "weights), with a report of label agreement and mean IU against fp32.",
    )
    add_model_file(parser, help="a .pt from fcnseg train")
    add_dataset(parser, data_help="dataset to calibrate on (camvid, ...)", split="train",
                split_help="calibration split")  # fmt: skip
    parser.add_argument("--val-split", default="val", type=split_name,
                        help="split the report compares fp32 and int8 on (none: no report)")  # fmt: skip
    parser.add_argument("--images", type=int, default=MAX_CALIBRATION, metavar="N",
                        help=f"calibration images (default {MAX_CALIBRATION})")  # fmt: skip
    parser.add_argument("--calibration", default="minmax", choices=METHODS,
                        help="how activation ranges are set (default minmax)")  # fmt: skip
    parser.add_argument("--int8-head", action="store_true",
                        help="quantize the head too (score layers, upsampling, fusions)")  # fmt: skip
    parser.add_argument("--fp32-activations", type=int, default=0, metavar="N",
                        help="keep the N activations int8 rounds worst in fp32, measured on a "
                        "first int8 file (default 0: every activation int8)")  # fmt: skip
    parser.add_argument("--agreement", type=float, metavar="P",
                        help="keep fp32 the fewest of those activations that make int8's labels "
                        "equal fp32's on P%% of the pixels of held-out training images (e.g. 99)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the int8 .onnx file to write")
    add_threads(parser)
    parser.set_defaults(run=run)


def _images_of(args, split: str | None) -> str:
    """How the output names a split's images: "camvid train images", or "folder images"
    for a dataset read whole (``--split none``)."""
    return f"{args.data} {split} images" if split else f"{args.data} images"


def _dataset(args, split, normalization):
    dataset = open_dataset(args, split, normalization)
    if len(dataset) == 0:
        raise DatasetError(f"{args.data} {split or ''} at {args.root}: no images to calibrate on")
    return dataset


def run(args: argparse.Namespace) -> int:
    use_pretrained(args, int8="refuse")
    if args.images < 1:
        raise ValueError(f"--images {args.images}: calibrate on 1 image or more")
    if args.fp32_activations < 0:
        raise ValueError(f"--fp32-activations {args.fp32_activations}: give 0 or more")
    if args.agreement is not None and not 0 < args.agreement <= 100:
        raise ValueError(f"--agreement {args.agreement}: give a percentage above 0, up to 100")
    if args.agreement is not None and args.fp32_activations:
        raise ValueError("--agreement chooses how many activations stay fp32: "
                         "drop --fp32-activations")  # fmt: skip
    if args.out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {args.out}: name the int8 file .onnx")
    outputs = {"--out": args.out}
    if args.val_split is not None:
        outputs["the report of --out"] = args.out.with_suffix(".json")
    check_outputs(outputs, {"--checkpoint": args.checkpoint})
    apply_threads(args)
    record = read_record(args.checkpoint, what="checkpoint")
    model = record.build()
    calibration = _dataset(args, args.split, model.normalization)
    fp32 = cached_onnx(args.checkpoint, record)
    count = min(args.images, len(calibration))
    print(f"calibrating on {count} {_images_of(args, args.split)} ({args.calibration})")
    batches = CalibrationImages(calibration, record.spec, count)
    options = dict(keep_head=not args.int8_head, method=args.calibration)
    with writing(args.out):
        quantize_onnx(fp32, args.out, batches, **options)
    kept: list[str] = []
    if args.fp32_activations:
        ranked = sensitive_activations(fp32, args.out, batches)[: args.fp32_activations]
        kept = [name for name, _ in ranked]
        worst = ", ".join(f"{name} ({ratio:.1f} dB)" for name, ratio in ranked)
        print(f"keeping in fp32 the {len(kept)} activations int8 rounds worst: {worst}")
        with writing(args.out):
            keep_fp32(args.out, fp32, kept)
    elif args.agreement is not None:
        with writing(args.out):
            kept = _fewest_fp32(args, record, fp32, calibration, batches)
    print(f"wrote {args.out}")
    if args.val_split is None:
        return 0
    report = _report(args, record, model.normalization, fp32)
    for line in report.lines():
        print(line)
    summary = {"checkpoint": str(args.checkpoint), "int8": str(args.out),
               "calibration": args.calibration, "calibration_images": count,
               "fp32_activations": kept, "agreement_target": args.agreement,
               **dataclasses.asdict(report)}  # fmt: skip
    report_path = args.out.with_suffix(".json")
    text = json.dumps(json_safe(summary), indent=2) + "\n"
    with writing(report_path):
        atomic_write(report_path, lambda tmp: tmp.write_text(text))
    print(f"wrote {report_path}")
    return 0


CHECK_IMAGES = 50  # training images after the calibration ones that --agreement checks on


def _fewest_fp32(args, record, fp32: Path, calibration, batches) -> list[str]:
    """``--agreement``: the fewest activations kept fp32 for the share of labels asked."""
    check = CalibrationImages(calibration, record.spec, CHECK_IMAGES, start=len(batches))
    what = f"{len(check)} {_images_of(args, args.split)} after the calibration ones"
    if not len(check):  # every image calibrated: check on (some of) them
        check = CalibrationImages(calibration, record.spec, CHECK_IMAGES)
        what = f"{len(check)} of the calibration images (no other {_images_of(args, args.split)})"
    ranked = [name for name, _ in sensitive_activations(fp32, args.out, batches)]
    threads = args.threads or torch.get_num_threads()
    agreement = Agreement(fp32, list(check), record.spec, threads)
    target = args.agreement / 100
    kept, tried = fewest_fp32(args.out, fp32, ranked, agreement, target)
    for count, share in sorted(tried.items()):
        print(f"{count} activations fp32: {100 * share:.2f}% of labels equal to fp32's on {what}")
    if tried[len(kept)] < target:
        print(f"no count reached {args.agreement:g}%: keeping the best, "
              f"{100 * tried[len(kept)]:.2f}% with {len(kept)} fp32 "
              "(--fp32-activations N picks a count by hand)")  # fmt: skip
    else:
        print(f"keeping in fp32 {len(kept)} activations for {args.agreement:g}%: "
              + (", ".join(kept) or "none, every activation int8"))  # fmt: skip
    return kept


def _report(args, record, normalization, fp32: Path):
    val = _dataset(args, args.val_split, normalization)
    threads = args.threads or torch.get_num_threads()
    fp32_model, int8_model = (
        onnx_module("onnxruntime", path, record.spec, threads) for path in (fp32, args.out)
    )
    print(f"comparing fp32 and int8 on {len(val)} {args.data} {args.val_split} images")
    return compare(
        fp32_model,
        int8_model,
        labelled_samples(val, record.spec),
        record.spec,
        record.ignore_index,
    )
