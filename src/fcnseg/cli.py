"""The ``fcnseg`` command line: a thin dispatcher over ``fcnseg.commands``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

import torch

from . import __version__
from .commands import COMMANDS
from .commands.memory import out_of_memory_advice
from .data import DatasetError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """A mistake on the command line is one line, like every other error (argparse would
    print the whole usage first); ``--help`` still shows it. Subcommands inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ('{self.prog} --help' lists the options)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    except BrokenPipeError:  # output piped into head and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except torch.OutOfMemoryError as error:  # a GPU's; the CPU's is a RuntimeError
        print(f"fcnseg: error: {out_of_memory_advice(error, args.command)}", file=sys.stderr)
        return 1
    except MemoryError as error:  # a Segmenter's names the tiles that fit
        print(f"fcnseg: error: {str(error) or 'out of memory: use smaller images'}", file=sys.stderr)
        return 1
    except (DatasetError, ValueError, FileNotFoundError, KeyError, PermissionError) as error:
        print(f"fcnseg: error: {_message(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a disk full, a file size limit: the message names the file
        print(f"fcnseg: error: {_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130


def _message(error: Exception) -> str:
    """The one line an error says. An error raised in a DataLoader worker process comes back
    re-raised by torch as the same type, its message "Caught <type> in DataLoader worker
    process N." and the worker's whole traceback: the original message is its last line."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        last = message.rstrip().splitlines()[-1]  # "fcnseg.data.base.DatasetError: image ..."
        kind, separator, original = last.partition(": ")
        if separator and kind.split(".")[-1] == type(error).__name__:
            return original
    return message


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, like the errors: the user needs what it says, not the file
    and source line that issued it."""
    text = " ".join(str(message).split())
    print(f"fcnseg: warning: {text}", file=file or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
