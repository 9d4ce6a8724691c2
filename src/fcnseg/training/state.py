"""What a run works with (``Run``, built once by ``setup``) and where it stands (``Progress``).

``Run`` holds the config, data, model, criterion, optimizer, schedule and the hooks; it is
never replaced (the model, optimizer, schedule and scaler change their own state as they
train). ``Progress`` is what the loop moves on: the ``Position`` saved in every checkpoint,
and what the latest validation found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from ..config import TrainConfig
from ..losses import MultiTaskLoss
from ..models import FCN, ModelSpec
from . import checkpoint as ckpt
from . import clock
from .distributed import Context
from .hooks import Hook, StepInfo

if TYPE_CHECKING:
    from .feedback import Feedback
    from .runfolder import RunLog

__all__ = ["Data", "Run", "Position", "Progress", "Window", "total_steps"]


@dataclass(frozen=True)
class Data:
    train: Dataset
    val: Dataset
    classes: dict[str, tuple[str, ...]]  # by label set (task): one, or SIFT Flow's two
    palettes: dict[str, list]
    ignore_index: int


@dataclass(frozen=True)
class Run:
    """What one run works with: built once by ``setup``, then only read (the model,
    optimizer, schedule and scaler change their own state as they train)."""

    config: TrainConfig
    context: Context
    run_dir: Path
    data: Data
    model: nn.Module  # DDP-wrapped when distributed
    criterion: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    sampler: DistributedSampler
    steps_per_epoch: int
    total_iters: int  # as configured; a time budget's plan may shorten it (total_steps)
    log: RunLog
    feedback: Feedback
    hooks: Sequence[Hook]  # the features around the loop, called in this order
    notes: tuple[str, ...] = ()  # what the run chose for the user (splits, warm-up), announced
    started: float = field(default_factory=lambda: clock.now())

    @property
    def net(self) -> FCN:
        return ckpt.unwrap(self.model)

    @property
    def spec(self) -> ModelSpec:
        return self.net.spec


@dataclass
class Position:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in ``epoch``
    iteration: int = 0  # optimizer steps done in all
    best_mean_iu: float = -1.0
    best_iteration: int = -1
    finished: bool = False
    planned_iters: int = 0  # with a time budget: the steps planned to fit it (0: not yet)
    seconds: float = 0.0  # with a time budget: wall time spent training so far


class Laps:
    """Where one step's time goes: seconds by part, each ``lap`` the time since the last.
    Read on the host's own clock (``time.perf_counter``, not the run's ``clock``, which
    tests simulate); on a GPU a part shows where the host waited for the device."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.parts[part] = self.parts.get(part, 0.0) + seconds
        return seconds


class Window:
    """Losses, images, seconds and their parts since the last log line."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.images = 0
        self.seconds = 0.0
        self.parts: dict[str, float] = {}

    def add(self, info: StepInfo) -> None:
        self.losses.append(info.loss)
        self.images += info.images
        self.seconds += info.seconds
        for part, seconds in info.parts.items():
            self.add_part(part, seconds)

    def add_part(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds

    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def step_parts(self) -> dict[str, float]:
        """Mean seconds per step of each part, rounded to 0.1 ms."""
        steps = max(len(self.losses), 1)
        return {part: round(seconds / steps, 4) for part, seconds in self.parts.items()}

    def reset(self) -> None:
        self.__init__()


@dataclass
class Progress:
    """What changes as the run goes: the position and the latest validation."""

    position: Position = field(default_factory=Position)
    metrics: dict[str, Any] = field(default_factory=dict)  # the latest validation's
    confusion: dict[str, torch.Tensor] | None = None  # by task
    new_best: bool = False  # the latest validation beat every earlier one: best.pt is due
    summary: dict[str, Any] = field(default_factory=dict)  # what hooks add to metrics.json
    window: Window = field(default_factory=Window)  # the steps since the last log line

    def step_done(self) -> None:
        self.position.step_in_epoch += 1
        self.position.iteration += 1

    def epoch_done(self) -> None:
        self.position.epoch += 1
        self.position.step_in_epoch = 0

    def validated(self, metrics: dict, confusion: dict, mean_iu: float) -> None:
        self.metrics, self.confusion = metrics, confusion
        position = self.position
        if mean_iu == mean_iu and mean_iu > position.best_mean_iu:  # NaN never is the best
            position.best_mean_iu, position.best_iteration = mean_iu, position.iteration
            self.new_best = True


def total_steps(run: Run, position: Position) -> int:
    """The optimizer steps this run takes: as configured, or as a time budget planned."""
    return position.planned_iters or run.total_iters
