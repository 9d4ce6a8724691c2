"""What a config may hold: choices, ranges and the combinations that cannot train.

``validate`` runs once for each config a file or a call produces (``load_config``,
``from_dict``, ``TrainConfig.resolved``); every check names the key and the fix.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from ..data.base import reader_options
from ..losses import DICE_LOSSES, LOSSES, REDUCTIONS
from ..solver import AMP_MODES, OPTIMIZERS, SCHEDULES
from .errors import ConfigError
from .model import check_model_options, model_variant
from .recipes import RANDOM_SPLIT, RECIPES
from .values import holds_float, not_finite, show

if TYPE_CHECKING:
    from .schema import TrainConfig

__all__ = ["validate", "CHOICES", "MINIMUM"]

CHOICES: dict[str, tuple[Any, ...]] = {
    "recipe": tuple(RECIPES),
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "loss_reduction": REDUCTIONS,
    # the losses reduced pixel by pixel first, then those with a Dice term
    "loss": tuple(loss for loss in LOSSES if loss not in DICE_LOSSES) + DICE_LOSSES,
    "amp": AMP_MODES,
}
MINIMUM: dict[str, float] = {
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


def validate(config: TrainConfig, source: str = "config") -> None:
    """Check choices, ranges and combinations; raise ``ConfigError`` naming the key and
    the fix. ``source`` (a file, "config") starts the message."""
    _check_finite(config, source)
    _check_choices(config, source)
    _check_ranges(config, source)
    _check_random_split(config, source)
    _check_rates(config, source)
    _check_loss(config, source)
    _check_scale_range(config, source)
    _check_task_weights(config, source)
    _check_init(config, source)
    check_model_options(config.model, config.model_options, source)
    _check_reader_options("train_options", config.dataset, config.train_options, source)
    val_dataset = config.val_dataset or config.dataset
    _check_reader_options("val_options", val_dataset, config.val_options, source)
    if config.staged and model_variant(config.model) != "8s":
        raise ConfigError(
            f"{source}: staged training ends at an FCN-8s: set model to an fcn8s_* "
            f"model, not {config.model!r}"
        )


@cache
def _float_keys(schema: type) -> tuple[str, ...]:
    hints = typing.get_type_hints(schema)
    return tuple(key for key, expected in hints.items() if holds_float(expected))


def _check_finite(config: TrainConfig, source: str) -> None:
    """nan and inf pass every range check (nan compares false), so each number of a float
    key is checked first: a nan lr would surface as torch's message, naming no key."""
    for key in _float_keys(type(config)):
        value = getattr(config, key)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            numbers = item if isinstance(item, list) else [item]
            if any(not_finite(number) for number in numbers):
                name = key if sub is None else f"{key}.{sub}"
                raise ConfigError(
                    f"{source}: {name} = {show(item)} is not a finite number: give a "
                    "number (nan and inf are not allowed)"
                )


def _check_choices(config: TrainConfig, source: str) -> None:
    for key, allowed in CHOICES.items():
        value = getattr(config, key)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"{source}: {key} = {value!r} is not allowed: choose one of "
                f"{', '.join(map(str, allowed))}"
            )


def _check_ranges(config: TrainConfig, source: str) -> None:
    for key, low in MINIMUM.items():
        value = getattr(config, key)
        if value is not None and value < low:
            raise ConfigError(f"{source}: {key} must be at least {low}, got {value}")
    if config.ddp_timeout_seconds <= 0:
        raise ConfigError(
            f"{source}: ddp_timeout_seconds must be positive, got {config.ddp_timeout_seconds}"
        )
    if config.lr is not None and config.lr <= 0:
        raise ConfigError(f"{source}: lr must be positive, got {config.lr}")
    if not 0.0 < config.val_fraction < 1.0:
        raise ConfigError(
            f"{source}: val_fraction is the share of training images held out for "
            f"validation: use 0 < val_fraction < 1 (0.2 is usual), got {config.val_fraction}"
        )


def _check_random_split(config: TrainConfig, source: str) -> None:
    if config.val_split == RANDOM_SPLIT and config.val_dataset not in (None, config.dataset):
        raise ConfigError(
            f"{source}: val_split = {RANDOM_SPLIT!r} holds out training images, but "
            f"val_dataset is {config.val_dataset!r}: name a val_split of that dataset"
        )


def _check_rates(config: TrainConfig, source: str) -> None:
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(
            f"{source}: ema_decay is the average's decay per step: use 0 <= ema_decay < 1 "
            f"(0: off; 0.999 spans about 1000 steps), got {config.ema_decay}"
        )
    if not 0.0 <= config.loss_sampling < 1.0:
        raise ConfigError(
            f"{source}: loss_sampling is the drop probability p: use 0 <= p < 1, "
            f"got {config.loss_sampling}"
        )


def _check_loss(config: TrainConfig, source: str) -> None:
    if config.loss in DICE_LOSSES and config.loss_reduction == "sum":
        raise ConfigError(
            f"{source}: loss = {config.loss!r} needs loss_reduction = 'mean': Dice is a mean "
            "over classes, and a cross-entropy summed over every pixel (the paper recipe) "
            "would drown it; set loss_reduction = 'mean' and an lr for a mean loss"
        )
    weights = config.class_weights
    if isinstance(weights, str) and weights not in ("none", "median"):
        raise ConfigError(
            f"{source}: class_weights must be 'none', 'median' or a list of numbers, "
            f"got {weights!r}"
        )


def _check_scale_range(config: TrainConfig, source: str) -> None:
    scales = config.scale_range
    if scales is not None and (len(scales) != 2 or not 0 < scales[0] <= scales[1]):
        raise ConfigError(
            f"{source}: scale_range must be [min, max] with 0 < min <= max, got {scales}"
        )


def _check_task_weights(config: TrainConfig, source: str) -> None:
    for task, weight in config.task_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(
                f"{source}: task_weights.{task} = {weight!r}: give each task a number >= 0 "
                "(SIFT Flow: task_weights = {semantic = 1.0, geometric = 1.0})"
            )


def _check_init(config: TrainConfig, source: str) -> None:
    for stream, path in config.init_streams.items():
        if not isinstance(path, str):
            raise ConfigError(
                f"{source}: init_streams.{stream} = {path!r}: give each stream the path "
                'of a checkpoint ({color = "runs/rgb/best.pt", hha = "runs/hha/best.pt"})'
            )
    if config.init_streams and config.init_from:
        raise ConfigError(f"{source}: init_streams and init_from both start the weights: keep one")


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
