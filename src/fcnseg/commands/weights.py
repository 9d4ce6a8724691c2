"""``fcnseg weights``: inspect weight files, and convert Caffe/torchvision/timm weights.

``inspect FILE`` lists a .caffemodel's layers (or a .prototxt's) with their blob shapes,
or a state dict's tensors (.pt/.pth/.bin/.safetensors) with shape and dtype.
``convert SOURCE FILE --model NAME --num-classes N --out OUT`` builds the model, copies
the weights in by name and writes an fcnseg weights file (``.safetensors`` or torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..builder import build_model, load_backbone
from ..modelfile import BareStateDict, read_record, save_weights
from ..models import FCN, LogDepth, Normalization
from ..surgery import TransplantReport
from ..training.checkpoint import writing
from ..weights import caffe
from ..weights.foreign import detect_layout
from .outputs import check_outputs
from .table import print_table

CAFFE_SUFFIXES = (".caffemodel", ".prototxt")
CONVERT_SOURCES = ("caffe", "torchvision", "timm")
_LISTED = 12  # keys listed per report line before "... and N more"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="inspect and convert weight files")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    inspect = actions.add_parser("inspect", help="list the layers or tensors of a weight file")
    inspect.add_argument("file", type=Path, help=".caffemodel, .prototxt, .pt/.pth, .safetensors")
    inspect.add_argument(
        "--limit", type=int, default=0, help="list at most this many tensors (default: all)"
    )
    inspect.set_defaults(run=run_inspect)

    convert = actions.add_parser("convert", help="convert weights into an fcnseg weights file")
    convert.add_argument("source", choices=CONVERT_SOURCES, help="who wrote the file")
    convert.add_argument("file", type=Path, help="the weights to convert")
    convert.add_argument("--model", required=True, help="registered model name (fcnseg models)")
    convert.add_argument("--num-classes", type=int, required=True, help="class count")
    convert.add_argument(
        "--out", type=Path, required=True, help="output file (.safetensors, else torch .pt)"
    )
    convert.set_defaults(run=run_convert)


def _state_rows(path: Path) -> tuple[list[tuple[str, tuple[int, ...], str]], str | None]:
    """(key, shape, dtype) per tensor, and what the file's fcnseg record says it holds."""
    try:
        record = read_record(path)
    except BareStateDict as bare:
        state = bare.state_dict
        return [(k, tuple(v.shape), str(v.dtype)) for k, v in state.items()], None
    rows = [(k, tuple(v.shape), str(v.dtype)) for k, v in record.state_dict.items()]
    tasks = ", ".join(f"{t.name} {t.classes}" for t in record.spec.tasks)
    return rows, f"fcnseg model file of {record.spec.label} (classes: {tasks})"


def _layout_name(keys: list[str]) -> str:
    try:
        return detect_layout(dict.fromkeys(keys)).name
    except ValueError:
        return "unrecognised layout"


def run_inspect(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.suffix in CAFFE_SUFFIXES:
        print(caffe.inspect(path))
        return 0
    rows, what = _state_rows(path)
    count = sum(int(torch.Size(shape).numel()) for _, shape, _ in rows)
    what = what or _layout_name([key for key, _, _ in rows])
    print(f"{path}: {len(rows)} tensors, {count:,} values; {what}")
    shown = rows[: args.limit] if args.limit > 0 else rows
    table = [("key", "shape", "dtype")]
    table += [(key, "x".join(map(str, shape)) or "scalar", dtype) for key, shape, dtype in shown]
    print_table(table)
    if len(shown) < len(rows):
        print(f"... and {len(rows) - len(shown)} more")
    return 0


def _listing(keys: list[str]) -> str:
    more = f", ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def print_report(report: TransplantReport) -> None:
    """What was copied, reshaped, dropped and left as initialised, one line each."""
    print(f"copied   {len(report.copied)}")
    for label, keys in (
        ("coerced", report.coerced),
        ("dropped", report.dropped),
        ("left as initialised", report.missing),
    ):
        if keys:
            print(f"{label} {len(keys)}: {_listing(keys)}")


def describe_normalization(norm: Normalization | LogDepth) -> str:
    """One line: channel order, value range, mean and std."""
    if isinstance(norm, LogDepth):
        return f"log depth minus {norm.mean:g}"
    order = "BGR" if norm.bgr else "RGB"
    return f"{order} 0..{norm.input_range:g}, mean {norm.mean}, std {norm.std}"


def _convert(source: str, path: Path, model: FCN) -> TransplantReport:
    if source == "caffe":
        report = caffe.convert_caffe(caffe.read_caffemodel(path), model)
        if not report.copied and not report.coerced:
            raise ValueError(
                f"{path}: no layer name matches a layer of {model.name}; is this the "
                "Caffe model of that architecture?"
            )
        return report
    report = load_backbone(model, path, source=source)
    # the report names backbone keys (and, as dropped, the file's keys): name the
    # model's, and add the head, which no backbone file holds
    for keys in (report.copied, report.coerced, report.missing):
        keys[:] = [f"backbone.{key}" for key in keys]
    report.missing += [key for key in model.state_dict() if not key.startswith("backbone.")]
    return report


def run_convert(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {args.num_classes}")
    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file}: no such weight file")
    check_outputs({"--out": args.out}, {"the input": args.file})
    model = build_model(args.model, num_classes=args.num_classes)
    report = _convert(args.source, args.file, model)
    print(f"{args.file} -> {model.name} ({args.num_classes} classes)")
    print_report(report)
    with writing(args.out):
        save_weights(args.out, model)
    inputs = "; ".join(
        f"{item.name}: {describe_normalization(item.normalization)}" for item in model.spec.inputs
    )
    print(f"wrote {args.out}; input {inputs}")
    return 0
