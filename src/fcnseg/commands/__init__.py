"""One module per ``fcnseg`` subcommand; each exposes ``register(subparsers)``.

A command's ``register`` adds its parser and sets ``run`` to a function taking the parsed
arguments and returning the exit status.
"""

from . import demo, evaluate, export, models, predict, quantize, serve, train, weights

COMMANDS = (models, train, evaluate, predict, serve, demo, weights, export, quantize)

__all__ = ["COMMANDS"]
