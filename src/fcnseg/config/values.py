"""A value against a declared type: coerced to it, or named in an error as a user writes it.

Config fields and model options are checked against their dataclasses' own annotations
(``TrainConfig``, ``ModelSpec``), so a type is written once, on the field.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

__all__ = ["as_type", "type_name", "holds_float", "not_finite", "show"]


def as_type(value: Any, expected: Any) -> Any:
    """``value`` as type ``expected`` (an int widened to a float, a tuple to a list); a
    ``TypeError`` when it is not one: TOML's true is no integer, 1 no true/false."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return _as_union(value, typing.get_args(expected))
    if origin is list or (origin is tuple and typing.get_args(expected)[1:] == (...,)):
        item = typing.get_args(expected)[0]
        if not isinstance(value, list | tuple):
            raise TypeError(value)
        return [as_type(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(value)
        return dict(value)
    return _as_plain(value, expected)


def _as_union(value: Any, options: tuple[Any, ...]) -> Any:
    if value is None and type(None) in options:
        return None
    for option in options:  # the first that takes the value, in declaration order
        if option is type(None):
            continue
        try:
            return as_type(value, option)
        except (TypeError, ValueError):
            continue
    raise TypeError(value)


def _as_plain(value: Any, expected: Any) -> Any:
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(value)
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(value)
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    if expected is Any:
        return value
    raise TypeError(value)


_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def type_name(expected: Any) -> str:
    """A type as an error names it: "an integer", "a list of numbers", "a string (or none)"."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(t) for t in typing.get_args(expected) if t is not type(None)]
        optional = type(None) in typing.get_args(expected)
        return " or ".join(names) + (" (or none)" if optional else "")
    if origin is list or origin is tuple:
        item = typing.get_args(expected)[0]
        return "a list of " + _PLURAL.get(item, f"{type_name(item)} values")
    if origin is dict:
        return "a table of options"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        expected, str(expected)
    )


def holds_float(expected: Any) -> bool:
    """Whether a field's type has floats in it: float, float | None, list[float], ..."""
    return expected is float or any(holds_float(arg) for arg in typing.get_args(expected))


def not_finite(value: Any) -> bool:
    """nan or inf: they pass every range check (nan compares false)."""
    return isinstance(value, float) and not math.isfinite(value)


def show(value: Any) -> str:
    """A value as written in a config: nan and inf bare, lists of them too."""
    if isinstance(value, list):
        return "[" + ", ".join(show(item) for item in value) + "]"
    return repr(value) if not isinstance(value, float) else str(value)
