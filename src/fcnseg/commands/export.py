"""``fcnseg export onnx``: an fcnseg weights file as an ONNX graph of any image size.

The checkpoint is a file ``fcnseg weights convert`` wrote or a training checkpoint (both
record their model), or a bare state dict with ``--model`` and ``--num-classes``. After writing, the graph is run
in onnxruntime on two image sizes unlike the traced one and compared with PyTorch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import check_onnx, export_onnx, input_channels
from ..weights.files import load_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model (ONNX)")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser("onnx", help="ONNX with dynamic batch, height and width")
    onnx.add_argument("--checkpoint", type=Path, required=True, help="fcnseg weights file")
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


def run_onnx(args: argparse.Namespace) -> int:
    model = load_weights(args.checkpoint, model=args.model, num_classes=args.num_classes)
    channels = input_channels(model)
    height, width = args.example_size
    export_onnx(model, args.out, opset=args.opset, example_size=(1, channels, height, width))
    print(
        f"wrote {args.out}: {model.name}, {model.num_classes} classes, opset {args.opset}, "
        "dynamic batch, height and width"
    )
    if not args.no_check:
        for check in check_onnx(model, args.out):
            print(f"onnxruntime vs PyTorch at {check}")
    return 0
