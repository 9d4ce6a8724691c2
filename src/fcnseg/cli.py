"""The ``fcnseg`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from .models import build_model, list_models

__all__ = ["main"]


def _models_table(num_classes: int) -> list[tuple[str, ...]]:
    rows = [("model", "params", "geometry", "score stride", "skip taps (stride)")]
    for name in list_models():
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = build_model(name, num_classes=num_classes)
        params = sum(p.numel() for p in model.parameters())
        skips = ", ".join(
            f"{skip.tap} ({model.backbone.coord_map(skip.tap).scale})" for skip in model.head.skips
        )
        stride = model.backbone.output_stride // 2 ** len(model.head.skips)
        rows.append(
            (name, f"{params / 1e6:.2f}M", model.backbone.geometry, str(stride), skips or "-")
        )
    return rows


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _cmd_models(args: argparse.Namespace) -> int:
    """List every registered model with its size, output stride and skip taps."""
    print(f"{len(list_models())} models; parameters counted for {args.num_classes} classes")
    _print_table(_models_table(args.num_classes))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = commands.add_parser("models", help=_cmd_models.__doc__)
    models.add_argument("--num-classes", type=int, default=21, help="class count (default 21)")
    models.set_defaults(run=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"fcnseg: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
