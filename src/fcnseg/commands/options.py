"""Command-line options that several commands share, declared once."""

from __future__ import annotations

import argparse

import torch

__all__ = ["add_threads", "apply_threads"]


def _threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of threads")
    return value


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: CPU compute threads (default: PyTorch's, one per core)."""
    parser.add_argument(
        "--threads",
        type=_threads,
        metavar="N",
        help="CPU compute threads (default: one per core; 1 is faster on a busy machine)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Set the compute threads ``--threads`` asks for (nothing when it was not given)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
