"""``fcnseg export onnx``: an fcnseg weights file as an ONNX graph of any image size.

The checkpoint is a file ``fcnseg weights convert`` wrote or a training checkpoint (both
record their model), or a bare state dict with ``--model`` and ``--num-classes``. After writing, the graph is run
in onnxruntime on two image sizes unlike the traced one and compared with PyTorch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import check_onnx, export_onnx
from ..modelfile import BareStateDict, load_weights, read_record, record_of
from ..models import ModelSpec
from ..training.checkpoint import writing
from .options import add_model_file, use_pretrained
from .outputs import check_outputs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model (ONNX)")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser("onnx", help="ONNX with dynamic batch, height and width")
    add_model_file(onnx, help="fcnseg weights file")
    onnx.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    onnx.add_argument("--model", help="model name, for a bare state dict")
    onnx.add_argument("--num-classes", type=int, help="class count, for a bare state dict")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    onnx.add_argument(
        "--example-size",
        type=int,
        nargs=2,
        default=(224, 224),
        metavar=("H", "W"),
        help="the traced input's height and width (default 224 224); any size runs",
    )
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    onnx.set_defaults(run=run_onnx)


def check_recorded(args: argparse.Namespace, spec: ModelSpec) -> None:
    """``--model`` and ``--num-classes`` may name what a checkpoint records, never
    something else: the class count must be every task's (SIFT Flow's two tasks have 33
    and 3 classes, so no one count describes it)."""
    if args.model is not None and args.model != spec.name:
        raise ValueError(f"{args.checkpoint} holds {spec.name}, not --model {args.model}")
    if args.num_classes is None:
        return
    if any(task.classes != args.num_classes for task in spec.tasks):
        several = len(spec.tasks) > 1
        counts = ", ".join(
            f"{task.name} {task.classes}" if several else str(task.classes) for task in spec.tasks
        )
        raise ValueError(f"{args.checkpoint} holds {counts}, not --num-classes {args.num_classes}")


def run_onnx(args: argparse.Namespace) -> int:
    use_pretrained(args, int8="refuse")
    check_outputs({"--out": args.out}, {"--checkpoint": args.checkpoint})
    try:
        record = read_record(args.checkpoint, what="checkpoint")
    except BareStateDict:  # its model named on the command line, or a one-line error
        model = load_weights(args.checkpoint, model=args.model, num_classes=args.num_classes)
        record = record_of(model)
    else:
        check_recorded(args, record.spec)
        model = record.build()
    with writing(args.out):
        export_onnx(
            model,
            args.out,
            opset=args.opset,
            example_size=tuple(args.example_size),
            classes=record.classes,
            palette=record.palette,
            ignore_index=record.ignore_index,
        )
    inputs = " + ".join(f"{i.name} {i.channels}" for i in model.spec.inputs)
    tasks = ", ".join(f"{t.name} {t.classes}" for t in model.spec.tasks)
    print(
        f"wrote {args.out}: {model.name} (inputs {inputs}; classes {tasks}), opset "
        f"{args.opset}, dynamic batch, height and width"
    )
    if not args.no_check:
        for check in check_onnx(model, args.out):
            print(f"onnxruntime vs PyTorch at {check}")
    return 0
