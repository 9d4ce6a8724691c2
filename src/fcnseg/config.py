"""Training configuration: one flat dataclass, flat TOML/JSON files, ``key=value`` overrides.

A config file names only what differs from the defaults; ``recipe`` fills the rest:

- ``paper``: the reference's "heavy" online learning: batch 1 whole images, no
  augmentation, SGD momentum 0.99, weight decay 5e-4, biases at 2x lr without decay, fixed
  lr 1e-10 / 1e-12 / 1e-14 for FCN-32s / 16s / 8s (1e-10 for 8s at-once) on the summed loss,
  100k iterations, fixed deconvolutions.
- ``modern``: batches of 8 through the mixed-size collate, scale/crop/flip/jitter
  augmentation, SGD (lr 0.01, momentum 0.9) or AdamW (lr 1e-3), poly schedule with warm-up,
  mean loss, AMP where it pays (``amp="auto"``: bf16 or fp16 on CUDA, off on CPU).

``TrainConfig.resolved()`` returns the config with every recipe default written in; that is
what a run saves as ``config.json`` beside its checkpoints, so ``fcnseg train --config
runs/<run>/config.json`` repeats it. No inheritance between files: each file is complete.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .builder import resolve_spec
from .data.base import reader_options
from .fileio import atomic_write
from .models.spec import SPEC_FIELDS, ModelSpec, SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "TrainConfig",
    "RECIPES",
    "PAPER_LR",
    "RANDOM_SPLIT",
    "load_config",
    "parse_overrides",
    "parse_literal",
    "model_variant",
    "stage_models",
    "check_model_options",
    "MODEL_OPTIONS",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file or key and the fix."""


@dataclass
class TrainConfig:
    """Everything a training run reads. ``None`` means "the recipe's default"."""

    # -- the model: a registered name, and any ModelSpec option (geometry, upsample,
    # output_stride, in_channels, inputs, fusion, tasks, pretrained_backbone, ...;
    # num_classes defaults to the training set's). A config file or override may name an
    # option at the top level (pretrained_backbone = true): it lands here. The name sets
    # the backbone and the variant.
    model: str = "fcn8s_efficientnet_lite0"
    model_options: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # a checkpoint whose weights start this run (transplant)
    # late fusion: one trained single-input checkpoint per stream, fused 0.5 / 0.5 at start
    # (NYUDv2 RGB-HHA: {color = "runs/rgb/best.pt", hha = "runs/hha/best.pt"})
    init_streams: dict[str, str] = field(default_factory=dict)
    staged: bool = False  # paper: train FCN-32s, then 16s from it, then 8s from 16s
    stage_lr_factor: float = 0.01  # lr of each later stage, when lr is set explicitly

    # -- the data
    dataset: str = "synthetic"
    root: str | None = None
    train_split: str | None = "train"  # None ("none"): a reader without splits, all images
    # "random": hold out val_fraction of the training images (drawn with split_seed; the run
    # folder lists them in val_images.txt). A folder dataset without train/val splits gets
    # train_split = none and val_split = "random" (written so into the run's config.json).
    val_split: str | None = "val"
    val_fraction: float = 0.2
    split_seed: int = 0
    val_dataset: str | None = None  # None: the training dataset
    val_root: str | None = None  # None: root
    train_options: dict[str, Any] = field(default_factory=dict)  # reader keyword options
    val_options: dict[str, Any] = field(default_factory=dict)

    # -- the recipe
    recipe: str = "modern"
    epochs: int = 10
    max_iters: int | None = None  # optimizer steps; None: epochs x steps per epoch
    batch_size: int | None = None
    accumulate: int = 1  # micro-batches per optimizer step
    optimizer: str | None = None  # sgd or adamw
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    bias_lr_mult: float | None = None
    bias_decay: bool | None = None
    schedule: str | None = None  # fixed, poly or cosine
    poly_power: float = 0.9
    warmup_iters: int | None = None
    loss: str = "cross_entropy"  # or focal, dice, ce+dice (fcnseg.losses)
    focal_gamma: float = 2.0  # the focal loss's focusing exponent; 0 is cross-entropy
    loss_reduction: str | None = None  # sum (the reference) or mean
    loss_sampling: float = 0.0  # Section 4.4: drop each final score cell with probability p
    sampling_cell: int = 32  # pixels per score cell for loss sampling
    class_weights: str | list[float] = "none"  # none, median, or one weight per class
    class_weight_images: int = 500  # images read to estimate median frequencies
    task_weights: dict[str, float] = field(default_factory=dict)  # multi-task; {}: 1 each
    crop_size: int | None = None
    scale_range: list[float] | None = None  # [min, max] random scaling
    flip: bool | None = None
    jitter: bool | None = None
    amp: str | None = None  # off, bf16, fp16, auto
    activation_checkpointing: bool = False  # backbone recomputes activations: less memory
    # weights and activations stored channels-last (NHWC): the CPU's convolution kernels run
    # faster on it (benchmarks/train_step.py); results equal the plain layout's to rounding.
    # Not under DDP: two gloo ranks with channels-last weights validated a few pixels apart
    # from one process evaluating the saved weights (tests/test_engine_distributed.py)
    channels_last: bool = True
    # weight averaging (fcnseg.engine.average): validate, keep and deploy an exponential
    # moving average of the weights with this decay (0.999 spans about 1000 steps); 0: off
    ema_decay: float = 0.0

    # -- the run
    output: str = "runs"
    name: str | None = None  # run folder name; None: <config name>-<date>-<time>
    seed: int = 1337  # the reference's shuffle seed
    device: str = "auto"
    threads: int = 0  # CPU threads; 0: torch's default
    num_workers: int = 2
    val_batch_size: int = 1  # 1: whole images, unpadded, as the reference evaluates
    max_val_images: int | None = None
    eval_every: int = 1  # epochs
    checkpoint_every: int = 0  # optimizer steps; 0: at the end of each epoch only
    log_every: int = 10  # optimizer steps
    overlays: int = 4  # validation images drawn with their predictions
    time_limit_minutes: float = 0.0  # stop (evaluate, save) after this long; 0: no limit
    # plan the run's length to end inside this many minutes (fcnseg.engine.budget): after a
    # few timed steps the schedule is sized to fit; epochs / max_iters become a cap; 0: off
    time_budget_minutes: float = 0.0
    deterministic: bool = False
    # DDP: seconds a rank waits in a collective (or for the others to join) before giving up
    # with an error; torch's default is 30 minutes, long to wait on a frozen rank
    ddp_timeout_seconds: float = 300.0

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's defaults written in for every ``None`` it owns."""
        recipe = RECIPES[self.recipe]
        values = dataclasses.asdict(self)
        for key, default in recipe.items():
            if values[key] is None:
                values[key] = default
        if values["optimizer"] == "adamw" and self.weight_decay is None:
            values["weight_decay"] = 0.01
        if values["lr"] is None:
            values["lr"] = _default_lr(self.recipe, self.model, values["optimizer"])
        if values["val_dataset"] is None:
            values["val_dataset"] = self.dataset
        if values["val_root"] is None:
            values["val_root"] = self.root
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self, source: str = "config") -> None:
        """Check choices and ranges; raise ``ConfigError`` naming the key and the fix."""
        self._check_finite(source)
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if value is not None and value not in allowed:
                raise ConfigError(
                    f"{source}: {key} = {value!r} is not allowed: choose one of "
                    f"{', '.join(map(str, allowed))}"
                )
        for key, low in _MINIMUM.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"{source}: {key} must be at least {low}, got {value}")
        if self.ddp_timeout_seconds <= 0:
            raise ConfigError(
                f"{source}: ddp_timeout_seconds must be positive, got {self.ddp_timeout_seconds}"
            )
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"{source}: lr must be positive, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"{source}: val_fraction is the share of training images held out for "
                f"validation: use 0 < val_fraction < 1 (0.2 is usual), got {self.val_fraction}"
            )
        if self.val_split == RANDOM_SPLIT and self.val_dataset not in (None, self.dataset):
            raise ConfigError(
                f"{source}: val_split = {RANDOM_SPLIT!r} holds out training images, but "
                f"val_dataset is {self.val_dataset!r}: name a val_split of that dataset"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"{source}: ema_decay is the average's decay per step: use 0 <= ema_decay < 1 "
                f"(0: off; 0.999 spans about 1000 steps), got {self.ema_decay}"
            )
        if not 0.0 <= self.loss_sampling < 1.0:
            raise ConfigError(
                f"{source}: loss_sampling is the drop probability p: use 0 <= p < 1, "
                f"got {self.loss_sampling}"
            )
        if self.loss in ("dice", "ce+dice") and self.loss_reduction == "sum":
            raise ConfigError(
                f"{source}: loss = {self.loss!r} needs loss_reduction = 'mean': Dice is a mean "
                "over classes, and a cross-entropy summed over every pixel (the paper recipe) "
                "would drown it; set loss_reduction = 'mean' and an lr for a mean loss"
            )
        if isinstance(self.class_weights, str) and self.class_weights not in ("none", "median"):
            raise ConfigError(
                f"{source}: class_weights must be 'none', 'median' or a list of numbers, "
                f"got {self.class_weights!r}"
            )
        if self.scale_range is not None and (
            len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]
        ):
            raise ConfigError(
                f"{source}: scale_range must be [min, max] with 0 < min <= max, "
                f"got {self.scale_range}"
            )
        for task, weight in self.task_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise ConfigError(
                    f"{source}: task_weights.{task} = {weight!r}: give each task a number >= 0 "
                    "(SIFT Flow: task_weights = {semantic = 1.0, geometric = 1.0})"
                )
        for stream, path in self.init_streams.items():
            if not isinstance(path, str):
                raise ConfigError(
                    f"{source}: init_streams.{stream} = {path!r}: give each stream the path "
                    'of a checkpoint ({color = "runs/rgb/best.pt", hha = "runs/hha/best.pt"})'
                )
        if self.init_streams and self.init_from:
            raise ConfigError(
                f"{source}: init_streams and init_from both start the weights: keep one"
            )
        check_model_options(self.model, self.model_options, source)
        _check_reader_options("train_options", self.dataset, self.train_options, source)
        val_dataset = self.val_dataset or self.dataset
        _check_reader_options("val_options", val_dataset, self.val_options, source)
        if self.staged and model_variant(self.model) != "8s":
            raise ConfigError(
                f"{source}: staged training ends at an FCN-8s: set model to an fcn8s_* "
                f"model, not {self.model!r}"
            )

    def _check_finite(self, source: str) -> None:
        """nan and inf pass every range check (nan compares false), so each number of a float
        key is checked first: a nan lr used to surface as torch's message, naming no key."""
        for key in _FLOAT_KEYS:
            value = getattr(self, key)
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, item in items:
                numbers = item if isinstance(item, list) else [item]
                if any(_not_finite(number) for number in numbers):
                    name = key if sub is None else f"{key}.{sub}"
                    raise ConfigError(
                        f"{source}: {name} = {_show(item)} is not a finite number: give a "
                        "number (nan and inf are not allowed)"
                    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path | str) -> None:
        """Write as JSON (``None`` kept as null, so the file reloads to the same config)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(path, lambda temporary: temporary.write_text(text))


# val_split = "random": validate on val_fraction of the training images, drawn with split_seed
RANDOM_SPLIT = "random"
# keys whose value "none" (any case; also as a TOML string) means no split: every image
SPLIT_KEYS = ("train_split", "val_split")

# The paper's learning rates for the summed loss (fcn.berkeleyvision.org solver.prototxt).
PAPER_LR = {"32s": 1e-10, "16s": 1e-12, "8s": 1e-14, "8s-atonce": 1e-10}

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "batch_size": 1,  # whole images, one at a time
        "optimizer": "sgd",
        "momentum": 0.99,  # "heavy" momentum: with batch 1 it averages ~100 images
        "weight_decay": 5e-4,
        "bias_lr_mult": 2.0,  # Caffe's lr_mult 2 on biases
        "bias_decay": False,  # and decay_mult 0
        "schedule": "fixed",
        "warmup_iters": 0,
        "loss_reduction": "sum",  # SoftmaxWithLoss normalize: false
        "max_iters": 100_000,
        "crop_size": None,
        "scale_range": None,
        "flip": False,
        "jitter": False,
        "amp": "off",
    },
    "modern": {
        "batch_size": 8,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "bias_lr_mult": 1.0,
        "bias_decay": False,
        "schedule": "poly",
        "warmup_iters": 100,
        "loss_reduction": "mean",
        "scale_range": [0.5, 2.0],
        "flip": True,
        "jitter": True,
        "amp": "auto",
    },
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "recipe": tuple(RECIPES),
    "optimizer": ("sgd", "adamw"),
    "schedule": ("fixed", "poly", "cosine"),
    "loss_reduction": ("sum", "mean"),
    "loss": ("cross_entropy", "focal", "dice", "ce+dice"),  # fcnseg.losses.LOSSES
    "amp": ("off", "bf16", "fp16", "auto"),
}
_MINIMUM: dict[str, float] = {
    "epochs": 1,
    "max_iters": 1,
    "batch_size": 1,
    "accumulate": 1,
    "val_batch_size": 1,
    "eval_every": 1,
    "checkpoint_every": 0,
    "log_every": 1,
    "num_workers": 0,
    "threads": 0,
    "overlays": 0,
    "warmup_iters": 0,
    "crop_size": 1,
    "sampling_cell": 1,
    "class_weight_images": 1,
    "split_seed": 0,
    "max_val_images": 1,
    "time_limit_minutes": 0.0,
    "time_budget_minutes": 0.0,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "bias_lr_mult": 0.0,
    "stage_lr_factor": 0.0,
    "focal_gamma": 0.0,
}


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _show(value: Any) -> str:
    """A value as written in a config: nan and inf bare, lists of them too."""
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return repr(value) if not isinstance(value, float) else str(value)


_VARIANT = re.compile(r"^fcn(32s|16s|8s)_(atonce_)?(.+)$")


def model_variant(model: str) -> str:
    """ "32s", "16s", "8s" or "8s-atonce" from a registered model name."""
    match = _VARIANT.match(model)
    if not match:
        raise ConfigError(f"model {model!r} is not named fcn<32s|16s|8s>_<backbone>")
    return match.group(1) + ("-atonce" if match.group(2) else "")


def stage_models(model: str) -> list[str]:
    """The staged-training sequence ending at ``model``: fcn32s_X, fcn16s_X, fcn8s_X."""
    match = _VARIANT.match(model)
    if not match or match.group(1) != "8s" or match.group(2):
        raise ConfigError(f"staged training needs an fcn8s_<backbone> model, not {model!r}")
    return [f"fcn{variant}_{match.group(3)}" for variant in ("32s", "16s", "8s")]


def _default_lr(recipe: str, model: str, optimizer: str) -> float:
    if recipe == "paper":
        return PAPER_LR[model_variant(model)]
    return 1e-3 if optimizer == "adamw" else 0.01


# ---------------------------------------------------------------------------------------------
# Reading files and overrides

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)
# ModelSpec fields the registered model's name sets (fcn<variant>_<backbone>), and the
# model's own name: not options of a run.
_NAMED_BY_MODEL = frozenset({"backbone", "variant", "name"})
# The ModelSpec options a run may set, at the top level of a config or in model_options,
# with their types (ModelSpec's own, plus build_model's in_channels and num_classes).
MODEL_OPTIONS = frozenset(SPEC_FIELDS) - _NAMED_BY_MODEL | {"in_channels", "num_classes"}
_OPTION_TYPES = {**typing.get_type_hints(ModelSpec), "in_channels": int, "num_classes": int}


def _holds_float(expected: Any) -> bool:
    """Whether a field's type has floats in it: float, float | None, list[float], ..."""
    return expected is float or any(_holds_float(arg) for arg in typing.get_args(expected))


_FLOAT_KEYS = [key for key, expected in _TYPES.items() if _holds_float(expected)]


def load_config(
    path: Path | str | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a flat TOML or JSON file (or none: the defaults) and apply ``key=value``
    overrides; the result is validated but not resolved (see ``TrainConfig.resolved``)."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        values = _read_file(path)
    config = from_dict(values, source)
    for key, value in _expand_split(parse_overrides(overrides)).items():
        if key not in MODEL_OPTIONS:
            setattr(config, key, _coerce(key, value, "command line"))
        elif value is None:  # the default
            config.model_options.pop(key, None)
        else:
            config.model_options[key] = value
    config.validate(source if not overrides else f"{source} with overrides")
    return config


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from a flat mapping, every key checked and every value coerced; keys
    that name a model option go into ``model_options``."""
    options = values.get("model_options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{source}: model_options = {options!r} should be a table of options")
    checked: dict[str, Any] = {"model_options": dict(options)}
    for key, value in _expand_split(values).items():
        if key in MODEL_OPTIONS:
            if key in options and options[key] != value:
                raise ConfigError(
                    f"{source}: {key} is given twice, at the top level and in model_options: "
                    "keep one"
                )
            if value is not None:  # None: the default (configs of fcnseg 0.1 wrote them so)
                checked["model_options"][key] = value
        elif key != "model_options":
            checked[key] = _coerce(key, value, source)
    config = TrainConfig(**checked)
    config.validate(source)
    return config


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


def parse_literal(text: str) -> Any:
    """A TOML literal (1e-3, true, [0.5, 2.0], {size = 64}); "none" is None; else the text."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


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


def _check_key(key: str, source: str) -> None:
    if key in _FIELDS or key in MODEL_OPTIONS or key == "split":
        return
    if key in _NAMED_BY_MODEL:
        raise ConfigError(f"{source}: {_named_by_model(key)}")
    known = [*_FIELDS, *MODEL_OPTIONS, *_SYNONYMS]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    close = [_SYNONYMS.get(name, name) for name in close]
    hint = f"did you mean {close[0]!r}?" if close else "see docs/training.md for the keys"
    raise ConfigError(f"{source}: unknown key {key!r}: {hint}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` as the type of field ``key``, or a ConfigError naming both."""
    _check_key(key, source)
    expected = _TYPES[key]
    try:
        return _as_type(value, expected)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} = {value!r} should be {_type_name(expected)}") from None


def _as_type(value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        for option in options:  # the first that takes the value, in declaration order
            if option is type(None):
                continue
            try:
                return _as_type(value, option)
            except (TypeError, ValueError):
                continue
        raise TypeError(value)
    if origin is list or (origin is tuple and typing.get_args(expected)[1:] == (...,)):
        item = typing.get_args(expected)[0]
        if not isinstance(value, list | tuple):
            raise TypeError(value)
        return [_as_type(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(value)
        return dict(value)
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


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(t) for t in typing.get_args(expected) if t is not type(None)]
        optional = type(None) in typing.get_args(expected)
        return " or ".join(names) + (" (or none)" if optional else "")
    if origin is list or origin is tuple:
        item = typing.get_args(expected)[0]
        return "a list of " + _PLURAL.get(item, f"{_type_name(item)} values")
    if origin is dict:
        return "a table of options"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        expected, str(expected)
    )


# ---------------------------------------------------------------------------------------------
# Model options: ModelSpec fields, checked against ModelSpec's own types


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


def _check_model_option(key: str, value: Any, source: str) -> None:
    if key in _NAMED_BY_MODEL:
        raise ConfigError(f"{source}: {_named_by_model(key)}")
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
        expected = _OPTION_TYPES[key]
        try:
            _as_type(value, expected)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source}: {key} = {value!r} should be {_type_name(expected)}"
            ) from None
        if key in ("in_channels", "num_classes") and value < 1:
            raise ConfigError(f"{source}: {key} must be at least 1, got {value}")
        numbers = value if isinstance(value, list | tuple) else [value]
        if any(_not_finite(number) for number in numbers):
            raise ConfigError(f"{source}: {key} = {_show(value)} is not a finite number")


_TASKS_EXAMPLE = "{ semantic = 33, geometric = 3 }"
_INPUTS_EXAMPLE = "{ color = 3, depth = 1 }, or { depth = { channels = 1, normalization = {...} } }"


def _check_reader_options(key: str, dataset: str, options: Mapping[str, Any], source: str):
    """Refuse an option the dataset's reader does not take, naming those it does (the
    reader would fail with a TypeError, after the run had started)."""
    known = reader_options(dataset)
    if known is None:
        return
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = f"it takes {', '.join(known)}" if known else "it takes none: drop " + key
            raise ConfigError(
                f"{source}: {key}.{name} is not an option of dataset {dataset!r}: {hint}{takes}"
            )


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


def _named_by_model(key: str) -> str:
    if key == "name":
        return 'model_options cannot name the model: choose it with model = "<registered name>"'
    return (
        f"{key} is set by the model's name (fcn<variant>_<backbone>): choose another model "
        "(fcnseg models lists them)"
    )
