"""The seam of the training loop: a ``Hook`` is one feature at named points of a run.

The loop (``loop.py``) trains, validates and saves; everything around it (the moving
average, the time budget, the run log, the console, Ctrl-C, user callbacks) is a hook, called
in the order the run lists them, at these points:

    on_train_start(run, progress)             before the first step of this session
    on_optimizer_step(run, progress)          right after each optimizer step, inside its timing
    on_step_end(run, progress, info)          after each step; may return a stop reason
    should_stop(run, progress)                at an epoch's end and after a validation: a
                                              reason to stop before the next step, or None
    on_validation_start(run, progress)        before the validation set is scored
    on_validation_end(run, progress, metrics) after it ("val" metrics, the best updated)
    on_save_start(run, progress)              before a checkpoint is written
    on_save(run, progress, record, resumable) -> record: what best.pt / last.pt hold
    on_save_end(run, progress)                after it is written
    on_restore(run, progress, record)         after last.pt has been restored (resuming)
    on_train_end(run, progress)               after the last step, also when training raised
    on_end(run, progress, stopped)            the run is over: close it, report

Stop reasons, weakest first, are ``STOP_REASONS``: every rank stops at the same step for the
strongest any rank gave (Lightning's ``Callback`` is the model of this seam).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..modelfile import ModelRecord
    from .state import Progress, Run

__all__ = ["Hook", "StepInfo", "Callback", "Callbacks", "STOP_REASONS"]

STOP_REASONS = ("time limit", "callback", "interrupted")


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after every optimizer step."""

    iteration: int
    epoch: int
    loss: float
    lr: float
    images: int  # images in this step, over every rank
    seconds: float  # wall time of this step
    parts: dict[str, float] = field(default_factory=dict)  # its seconds by part (Laps)


Callback = Callable[[StepInfo], "bool | None"]


class Hook:
    """A feature of a run at the loop's named points; each point does nothing unless a
    subclass says otherwise, so a feature names only the points it needs."""

    def on_train_start(self, run: Run, progress: Progress) -> None:
        """Before the first step of this session (a resumed run: its first step here)."""

    def on_optimizer_step(self, run: Run, progress: Progress) -> None:
        """Right after an optimizer step, inside the step's timing: the weights just moved."""

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        """After each step: a reason of ``STOP_REASONS`` to stop training, or None."""
        return None

    def should_stop(self, run: Run, progress: Progress) -> str | None:
        """Between steps (an epoch's end, after a validation): a reason to stop, or None."""
        return None

    def on_validation_start(self, run: Run, progress: Progress) -> None:
        """Before the validation set is scored."""

    def on_validation_end(self, run: Run, progress: Progress, metrics: dict) -> None:
        """After it: ``metrics`` as logged (a multi-task model's: the first task's four
        numbers and every task's), ``progress`` already knows whether they are the best."""

    def on_save_start(self, run: Run, progress: Progress) -> None:
        """Before a checkpoint (last.pt, perhaps best.pt) is written."""

    def on_save(
        self, run: Run, progress: Progress, record: ModelRecord, *, resumable: bool
    ) -> ModelRecord:
        """The record to write: ``resumable`` for last.pt, whose ``training`` holds what
        resuming needs. Return it, changed or not."""
        return record

    def on_save_end(self, run: Run, progress: Progress) -> None:
        """After the checkpoint is written."""

    def on_restore(self, run: Run, progress: Progress, record: ModelRecord) -> None:
        """After resuming restored the weights, optimizer, schedule and position of
        ``record`` (last.pt): take back what ``on_save`` added to it."""

    def on_train_end(self, run: Run, progress: Progress) -> None:
        """After the last step of this session, also when training raised: release what
        ``on_train_start`` took."""

    def on_end(self, run: Run, progress: Progress, stopped: str) -> None:
        """The run stopped (``stopped``: "finished", "time limit", "callback" or
        "interrupted") and will not train again in this session."""


class Callbacks(Hook):
    """The user's step callbacks: any returning True stops training (reason "callback")."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = tuple(callbacks)

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        return "callback" if any(callback(info) for callback in self.callbacks) else None
