"""Reading a config: flat TOML or JSON files, ``key=value`` overrides, TOML literals, other
tools' names for a key, and each value coerced to its field's type.

``load_config`` builds the config from the file and the overrides, then checks it once.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model import MODEL_OPTIONS, NAMED_BY_MODEL, named_by_model
from .recipes import SPLIT_KEYS
from .schema import TrainConfig
from .values import as_type, type_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_config", "from_dict", "parse_overrides", "parse_literal"]

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Reader options a config may give at the top level: they serve the training and the
# validation set alike (train_options and val_options), as a folder's masks are one format.
READER_OPTIONS = (
    "value_map",
    "ignore_index",
    "img_dir",
    "ann_dir",
    "img_suffix",
    "seg_map_suffix",
)
_TYPES = typing.get_type_hints(TrainConfig)

# Names from other tools (Caffe's solver.prototxt among them) and the key they mean here.
_SYNONYMS = {
    "learning_rate": "lr",
    "base_lr": "lr",
    "lr_policy": "schedule",
    "scheduler": "schedule",
    "max_iter": "max_iters",
    "iterations": "max_iters",
    "iter_size": "accumulate",
    "gradient_accumulation": "accumulate",
    "batch": "batch_size",
    "wd": "weight_decay",
    "data_root": "root",
    "arch": "model",
    "workers": "num_workers",
}


def load_config(
    path: Path | str | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a flat TOML or JSON file (or none: the defaults) and apply ``key=value``
    overrides; the result is validated, once, but not resolved (see ``TrainConfig.resolved``)."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        values = _read_file(path)
    config = _build(values, source)
    for key, value in _expand_split(parse_overrides(overrides)).items():
        if key in READER_OPTIONS:  # an override replaces the file's, in both sets
            for options in (config.train_options, config.val_options):
                options.pop(key, None)
                if value is not None:
                    options[key] = value
        elif key not in MODEL_OPTIONS:
            setattr(config, key, _coerce(key, value, "command line"))
        elif value is None:  # the default
            config.model_options.pop(key, None)
        else:
            config.model_options[key] = value
    config.validate(source if not overrides else f"{source} with overrides")
    return config


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from a flat mapping, every key checked and every value coerced, then
    validated; keys that name a model option go into ``model_options``."""
    config = _build(values, source)
    config.validate(source)
    return config


def _build(values: Mapping[str, Any], source: str) -> TrainConfig:
    """The TrainConfig ``values`` name, each key known and each value of its field's type;
    not yet validated (overrides may follow)."""
    options = values.get("model_options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{source}: model_options = {options!r} should be a table of options")
    checked: dict[str, Any] = {"model_options": dict(options)}
    readers: dict[str, Any] = {}
    for key, value in _expand_split(values).items():
        if key in READER_OPTIONS:
            readers[key] = value
        elif key in MODEL_OPTIONS:
            if key in options and options[key] != value:
                raise ConfigError(
                    f"{source}: {key} is given twice, at the top level and in model_options: "
                    "keep one"
                )
            if value is not None:  # None: the default (configs of fcnseg 0.1 wrote them so)
                checked["model_options"][key] = value
        elif key != "model_options":
            checked[key] = _coerce(key, value, source)
    for part in ("train_options", "val_options"):
        checked[part] = _with_reader_options(checked.get(part) or {}, readers, part, source)
    return TrainConfig(**checked)


def _with_reader_options(
    options: Mapping[str, Any], readers: Mapping[str, Any], part: str, source: str
) -> dict[str, Any]:
    """``options`` with the reader options given at the top level (for both sets)."""
    merged = dict(options)
    for key, value in readers.items():
        if key in merged and merged[key] != value:
            raise ConfigError(
                f"{source}: {key} is given twice, at the top level and in {part}: keep one"
            )
        if value is not None:
            merged[key] = value
    return merged


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=1e-3", "flip=false", "model=fcn8s_vgg16"]`` -> typed values (TOML literals;
    anything that is not one is taken as a string)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (for example lr=1e-3)")
        _check_key(key, "command line")
        parsed[key] = parse_literal(text.strip())
    return parsed


def parse_literal(text: str) -> Any:
    """A TOML literal (1e-3, true, [0.5, 2.0], {size = 64}); "none" is None; else the text."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _expand_split(values: Mapping[str, Any]) -> dict[str, Any]:
    """``split = X`` sets train_split and val_split at once (``split=none``: a folder without
    splits, training and validating on every image); a split key's "none" string is None."""
    expanded: dict[str, Any] = {}
    for key, value in values.items():
        keys = SPLIT_KEYS if key == "split" else (key,)
        for name in keys:
            none = name in SPLIT_KEYS and isinstance(value, str) and value.lower() == "none"
            expanded[name] = None if none else value
    return expanded


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing .toml or .json file")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be parsed: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of key = value pairs")
    return values


def _check_key(key: str, source: str) -> None:
    if key in _FIELDS or key in MODEL_OPTIONS or key in READER_OPTIONS or key == "split":
        return
    if key in NAMED_BY_MODEL:
        raise ConfigError(f"{source}: {named_by_model(key)}")
    known = [*_FIELDS, *MODEL_OPTIONS, *READER_OPTIONS, *_SYNONYMS]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    close = [_SYNONYMS.get(name, name) for name in close]
    hint = f"did you mean {close[0]!r}?" if close else "see docs/training.md for the keys"
    raise ConfigError(f"{source}: unknown key {key!r}: {hint}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` as the type of field ``key``, or a ConfigError naming both."""
    _check_key(key, source)
    expected = _TYPES[key]
    try:
        return as_type(value, expected)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} = {value!r} should be {type_name(expected)}") from None
