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

from ..models import FCN, Normalization, build_model
from ..surgery import TransplantReport
from ..weights import caffe
from ..weights.files import read_weights, save_weights
from ..weights.foreign import detect_layout, load_backbone_weights
from ..weights.safetensors_io import describe, parse_record
from .table import print_table

CAFFE_SUFFIXES = (".caffemodel", ".prototxt")
CONVERT_SOURCES = ("caffe", "torchvision", "timm")
_LISTED = 12  # keys listed per report line before "... and N more"
_SAFETENSORS_DTYPES = {  # the header's dtype names as torch prints them
    "F64": "torch.float64",
    "F32": "torch.float32",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "I64": "torch.int64",
    "I32": "torch.int32",
    "I16": "torch.int16",
    "I8": "torch.int8",
    "U8": "torch.uint8",
    "BOOL": "torch.bool",
}


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


def _state_rows(path: Path) -> tuple[list[tuple[str, tuple[int, ...], str]], dict[str, object]]:
    """(key, shape, dtype) per tensor, and the fcnseg record of the file if it has one."""
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such weight file")
        rows, metadata = describe(path)
        rows = [(key, shape, _SAFETENSORS_DTYPES.get(dtype, dtype)) for key, shape, dtype in rows]
        return rows, parse_record(metadata, path)
    found = read_weights(path)
    rows = [(k, tuple(v.shape), str(v.dtype)) for k, v in found.state_dict.items()]
    record = {"model": found.model, "num_classes": found.num_classes} if found.model else {}
    return rows, record


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
    rows, record = _state_rows(path)
    count = sum(int(torch.Size(shape).numel()) for _, shape, _ in rows)
    if record:
        what = f"fcnseg weights of {record['model']} ({record['num_classes']} classes)"
    else:
        what = _layout_name([key for key, _, _ in rows])
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


def describe_normalization(norm: Normalization) -> str:
    """One line: channel order, value range, mean and std."""
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
    report = load_backbone_weights(model.backbone, path, source=source)
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
    model = build_model(args.model, num_classes=args.num_classes)
    report = _convert(args.source, args.file, model)
    print(f"{args.file} -> {model.name} ({args.num_classes} classes)")
    print_report(report)
    save_weights(args.out, model)
    print(f"wrote {args.out}; input: {describe_normalization(model.normalization)}")
    return 0
