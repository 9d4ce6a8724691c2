"""The ``fcnseg`` command line: a thin dispatcher over ``fcnseg.commands``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from . import __version__
from .commands import COMMANDS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation."
    )
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():  # restores the usual display when main returns
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as error:
        message = str(error) if not isinstance(error, KeyError) else str(error.args[0])
        print(f"fcnseg: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, like the errors: the user needs what it says, not the file
    and source line that issued it."""
    text = " ".join(str(message).split())
    print(f"fcnseg: warning: {text}", file=file or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
