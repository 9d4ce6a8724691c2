"""``fcnseg models``: every registered model, whatever its kind, from the registry alone;
``--pretrained``: the trained models that ship with fcnseg (``fcnseg.zoo``)."""

from __future__ import annotations

import argparse

from ..builder import model_info
from ..models import list_models
from ..zoo import Pretrained, pretrained
from .table import print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the registered models")
    parser.add_argument("--num-classes", type=int, default=21, help="class count (default 21)")
    parser.add_argument(
        "--pretrained", action="store_true", help="list the trained models that ship with fcnseg"
    )
    parser.set_defaults(run=run)


def _row(name: str, num_classes: int) -> tuple[str, ...]:
    info = model_info(name, num_classes)
    tasks = ", ".join(f"{t} {n or num_classes}" for t, n in info.tasks.items())
    inputs = " + ".join(f"{i} {c}" for i, c in info.inputs.items())
    fusion = f" ({info.spec.fusion})" if len(info.inputs) > 1 else ""
    return (
        name,
        f"{info.parameters / 1e6:.2f}M",
        inputs + fusion,
        tasks,
        info.geometry,
        str(info.score_stride),
        ", ".join(info.skip_taps) or "-",
        info.pretrained or "-",
    )


def _pretrained_row(item: Pretrained) -> tuple[str, ...]:
    agreement = item.int8_agreement
    return (
        item.name,
        f"{item.dataset} {len(item.classes)}",
        f"{100 * item.val_mean_iu:.1f}",
        f"{item.size_bytes / 1e6:.1f} MB",
        "-" if agreement is None else f"{100 * agreement:.2f}%",
    )


def _print_pretrained() -> int:
    entries = pretrained()
    print(
        f"{len(entries)} trained models ship with fcnseg (predict with --pretrained NAME; "
        "NAME.int8 runs the int8 file; cards: fcnseg.pretrained())"
    )
    header = ("name", "classes", "val mean IU", "size", "int8 agreement")
    print_table([header] + [_pretrained_row(item) for item in entries])
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pretrained:
        return _print_pretrained()
    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {args.num_classes}")
    names = list_models()
    print(f"{len(names)} models; parameters counted for {args.num_classes} classes where open")
    header = ("model", "params", "inputs", "tasks", "geometry", "stride", "skips", "ImageNet")
    print_table([header] + [_row(name, args.num_classes) for name in names])
    return 0
