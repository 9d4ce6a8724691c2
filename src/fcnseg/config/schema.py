"""The training configuration: one flat dataclass, every field with its default.

A config file names only what differs from the defaults; ``recipe`` (``fcnseg.config.recipes``)
fills the rest. ``TrainConfig.resolved()`` returns the config with every recipe default written
in; that is what a run saves as ``config.json`` beside its checkpoints, so ``fcnseg train
--config runs/<run>/config.json`` repeats it. No inheritance between files: each file is
complete.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..losses import DEFAULT_LOSS, FOCAL_GAMMA, SAMPLING_CELL
from . import checks
from .recipes import ADAMW_WEIGHT_DECAY, RECIPES, default_lr

__all__ = ["TrainConfig"]


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
    init_from: str | None = None  # a checkpoint or zoo entry whose weights start this run
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
    loss: str = DEFAULT_LOSS  # or focal, dice, ce+dice (fcnseg.losses.LOSSES)
    focal_gamma: float = FOCAL_GAMMA  # the focal loss's focusing exponent; 0: cross-entropy
    loss_reduction: str | None = None  # sum (the reference) or mean
    loss_sampling: float = 0.0  # Section 4.4: drop each final score cell with probability p
    sampling_cell: int = SAMPLING_CELL  # pixels per score cell for loss sampling
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
    # Not under DDP on CPUs: two gloo ranks with channels-last weights validated a few pixels
    # apart from one process evaluating the saved weights (tests/test_engine_distributed.py)
    channels_last: bool = True
    # weight averaging (fcnseg.training.average): validate, keep and deploy an exponential
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
    # plan the run's length to end inside this many minutes (fcnseg.training.budget): after a
    # few timed steps the schedule is sized to fit; epochs / max_iters become a cap; 0: off
    time_budget_minutes: float = 0.0
    deterministic: bool = False
    # DDP: seconds a rank waits in a collective (or for the others to join) before giving up
    # with an error; torch's default is 30 minutes, long to wait on a frozen rank
    ddp_timeout_seconds: float = 300.0

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's defaults written in for every ``None`` it owns, checked."""
        recipe = RECIPES[self.recipe]
        values = dataclasses.asdict(self)
        for key, default in recipe.items():
            if values[key] is None:
                values[key] = default
        if values["optimizer"] == "adamw" and self.weight_decay is None:
            values["weight_decay"] = ADAMW_WEIGHT_DECAY
        if values["lr"] is None:
            values["lr"] = default_lr(self.recipe, self.model, values["optimizer"])
        if values["val_dataset"] is None:
            values["val_dataset"] = self.dataset
        if values["val_root"] is None:
            values["val_root"] = self.root
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self, source: str = "config") -> None:
        """Check choices and ranges; raise ``ConfigError`` naming the key and the fix."""
        checks.validate(self, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path | str) -> None:
        """Write as JSON (``None`` kept as null, so the file reloads to the same config)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(path, lambda temporary: temporary.write_text(text))
