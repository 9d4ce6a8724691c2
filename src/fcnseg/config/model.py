"""The model part of a config: the ``ModelSpec`` options a run may set, checked against
``ModelSpec``'s own types, and what a registered model's spec says of it (its variant, the
models that stage up to it)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from ..builder import resolve_spec
from ..models.registry import list_models, registered_spec
from ..models.spec import SPEC_FIELDS, ModelSpec, SpecError
from .errors import ConfigError
from .values import as_type, not_finite, show, type_name

__all__ = [
    "MODEL_OPTIONS",
    "NAMED_BY_MODEL",
    "check_model_options",
    "named_by_model",
    "model_variant",
    "stage_models",
]

# ModelSpec fields the registered model's name sets (fcn<variant>_<backbone>), and the
# model's own name: not options of a run.
NAMED_BY_MODEL = frozenset({"backbone", "variant", "name"})
# The ModelSpec options a run may set, at the top level of a config or in model_options,
# with their types (ModelSpec's own, plus build_model's in_channels and num_classes).
MODEL_OPTIONS = frozenset(SPEC_FIELDS) - NAMED_BY_MODEL | {"in_channels", "num_classes"}
_OPTION_TYPES = {**typing.get_type_hints(ModelSpec), "in_channels": int, "num_classes": int}
# The variants staged training passes through (Section 4.2), coarse to fine.
STAGES = ("32s", "16s", "8s")


def model_variant(model: str) -> str:
    """ "32s", "16s", "8s" or "8s-atonce" (an FCN-8s with fixed skip scales, trained all at
    once): the registered spec's variant, which picks the paper's learning rate."""
    return _variant(_registered(model))


def stage_models(model: str) -> list[str]:
    """The staged-training sequence ending at ``model``: the registered FCN-32s and FCN-16s
    whose spec is ``model``'s but for the variant, then ``model`` itself."""
    spec = _registered(model)
    if _variant(spec) != STAGES[-1]:
        raise ConfigError(f"staged training needs an fcn8s_<backbone> model, not {model!r}")
    return [_registered_as(spec, stage, model) for stage in STAGES[:-1]] + [model]


def _variant(spec: ModelSpec) -> str:
    return spec.variant + ("-atonce" if spec.skip_scales is not None else "")


def _registered(model: str) -> ModelSpec:
    try:
        return registered_spec(model)
    except SpecError as error:
        raise ConfigError(str(error)) from None


def _registered_as(spec: ModelSpec, stage: str, model: str) -> str:
    """The registered model whose spec is ``spec`` but for its variant, ``stage`` (the first
    by name, should several share that spec)."""
    wanted = dataclasses.replace(spec, variant=stage, name=None)
    for name in list_models():
        if dataclasses.replace(registered_spec(name), name=None) == wanted:
            return name
    raise ConfigError(
        f"staged training needs an fcn8s_<backbone> model, not {model!r}: no FCN-{stage} "
        "of it is registered"
    )


def check_model_options(model: str, options: Mapping[str, Any], source: str = "config") -> None:
    """Check every option's name and type, then that ``model`` takes them (``resolve_spec``);
    a ``ConfigError`` naming the key otherwise."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{source}: model_options = {options!r} should be a table of options")
    for key, value in options.items():
        _check_model_option(key, value, source)
    try:
        resolve_spec(model, require_tasks=False, **options)
    except (SpecError, TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None


def named_by_model(key: str) -> str:
    """Why ``key`` (a ModelSpec field the model's name sets) is no option, and what to do."""
    if key == "name":
        return 'model_options cannot name the model: choose it with model = "<registered name>"'
    return (
        f"{key} is set by the model's name (fcn<variant>_<backbone>): choose another model "
        "(fcnseg models lists them)"
    )


def _check_model_option(key: str, value: Any, source: str) -> None:
    if key in NAMED_BY_MODEL:
        raise ConfigError(f"{source}: {named_by_model(key)}")
    if key not in MODEL_OPTIONS:
        close = difflib.get_close_matches(key, sorted(MODEL_OPTIONS), n=1, cutoff=0.6)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else "the options are " + ", ".join(sorted(MODEL_OPTIONS))
        )
        raise ConfigError(f"{source}: unknown model option {key!r}: {hint}")
    if value is None:
        return  # the default
    if key == "tasks":
        _check_table(key, value, source, _TASKS_EXAMPLE, allow_count=True)
    elif key == "inputs":
        _check_table(key, value, source, _INPUTS_EXAMPLE, allow_count=False)
    else:
        _check_typed_option(key, value, source)


def _check_typed_option(key: str, value: Any, source: str) -> None:
    expected = _OPTION_TYPES[key]
    try:
        as_type(value, expected)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} = {value!r} should be {type_name(expected)}") from None
    if key in ("in_channels", "num_classes") and value < 1:
        raise ConfigError(f"{source}: {key} must be at least 1, got {value}")
    numbers = value if isinstance(value, list | tuple) else [value]
    if any(not_finite(number) for number in numbers):
        raise ConfigError(f"{source}: {key} = {show(value)} is not a finite number")


_TASKS_EXAMPLE = "{ semantic = 33, geometric = 3 }"
_INPUTS_EXAMPLE = "{ color = 3, depth = 1 }, or { depth = { channels = 1, normalization = {...} } }"


def _check_table(key: str, value: Any, source: str, example: str, *, allow_count: bool) -> None:
    """``tasks`` / ``inputs``: a table of name = count (an input's count may be a table with
    its ``channels`` and ``normalization``); ``tasks`` may also be one count."""
    if allow_count and _is_count(value):
        return
    nested = not allow_count
    if isinstance(value, Mapping) and value and all(_is_entry(v, nested) for v in value.values()):
        return
    raise ConfigError(f"{source}: {key} = {value!r} should be a table of name = count ({example})")


def _is_entry(item: Any, nested: bool) -> bool:
    if nested and isinstance(item, Mapping):
        return set(item) <= {"channels", "normalization"} and _is_count(item.get("channels", 3))
    return _is_count(item)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
