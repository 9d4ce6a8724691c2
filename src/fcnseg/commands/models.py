"""``fcnseg models``: every registered model with its size, output stride and skip taps."""

from __future__ import annotations

import argparse

import torch

from ..models import build_model, list_models
from .table import print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the registered models")
    parser.add_argument("--num-classes", type=int, default=21, help="class count (default 21)")
    parser.set_defaults(run=run)


def _row(name: str, num_classes: int) -> tuple[str, ...]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, num_classes=num_classes)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    skips = ", ".join(f"{tap.name} ({tap.stride})" for tap in model.head.skip_taps)
    return (
        name,
        f"{params / 1e6:.2f}M",
        f"{trainable / 1e6:.2f}M",
        model.backbone.geometry,
        str(model.head.score_stride),
        skips or "-",
    )


def run(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {args.num_classes}")
    names = list_models()
    print(f"{len(names)} models; parameters counted for {args.num_classes} classes")
    header = ("model", "params", "trainable", "geometry", "score stride", "skip taps (stride)")
    print_table([header] + [_row(name, args.num_classes) for name in names])
    return 0
