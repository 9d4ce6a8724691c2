"""What a run shows while it trains: on a terminal, one progress bar for the whole run (steps
done, ETA, epoch, loss, lr); when stdout is a file or a pipe (a log, a batch job), a line
every ``every`` steps with the same numbers, since a bar's carriage returns read as noise.
A terminal that reports no width (a pseudo-terminal without a window size: tqdm would draw
a bar of width 0, nothing) gets the lines too.

``Console`` is that output as one hook of the training loop (the bar or the step lines, and
each validation's metrics); ``announce`` says what a run will do before it does it."""

from __future__ import annotations

import math
import shutil
import sys
from datetime import timedelta

from ..config import RANDOM_SPLIT, TrainConfig
from . import clock
from .budget import PROBE_STEPS, minutes
from .evaluate import format_metrics
from .hooks import Hook, StepInfo
from .state import Progress, Run, total_steps

__all__ = ["Feedback", "Console", "announce"]


class Feedback:
    """The progress of one run of ``total`` steps, ``steps_per_epoch`` to an epoch, on
    stdout; silent where ``enabled`` is false (DDP's other ranks). ``tty`` defaults to
    whether stdout is a terminal."""

    def __init__(
        self,
        total: int,
        steps_per_epoch: int,
        *,
        every: int,
        enabled: bool,
        tty: bool | None = None,
    ) -> None:
        self.total, self.steps_per_epoch = total, steps_per_epoch
        self.every, self.enabled = every, enabled
        self.tty = _bar_fits() if tty is None else tty
        self.bar = None
        self.started, self.first = clock.now(), 0

    def open(self, done: int) -> None:
        """Start counting at ``done`` steps (a resumed run's position)."""
        self.started, self.first = clock.now(), done
        if self.enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=done,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stdout,
            )

    @property
    def epochs(self) -> int:
        return math.ceil(self.total / self.steps_per_epoch)

    def retotal(self, total: int) -> None:
        """The run's length changed (a time budget planned it): count to ``total``."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def step(self, iteration: int, epoch: int, loss: float, lr: float, rate: float) -> None:
        """One optimizer step done (``iteration`` steps in all, in 0-based ``epoch``)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                epoch=f"{epoch + 1}/{self.epochs}",
                loss=f"{loss:.4g}",
                lr=f"{lr:.3g}",
                img_s=f"{rate:.1f}",
            )
        elif iteration % self.every == 0 or iteration == self.total:
            print(
                f"step {iteration}/{self.total} (epoch {epoch + 1}/{self.epochs}): loss "
                f"{loss:.4g}, lr {lr:.3g}, {rate:.1f} images/s, ETA {self.eta(iteration)}",
                flush=True,
            )

    def eta(self, iteration: int) -> str:
        """The time left at the pace of the steps done since ``open``, as h:mm:ss."""
        done = iteration - self.first
        if done <= 0:
            return "?"
        seconds = (clock.now() - self.started) / done * (self.total - iteration)
        return str(timedelta(seconds=round(seconds)))

    def write(self, text: str) -> None:
        """A line of its own, above the bar when there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _bar_fits() -> bool:
    """Whether stdout is a terminal with a width to draw a bar in."""
    return sys.stdout.isatty() and shutil.get_terminal_size(fallback=(0, 0)).columns > 0


class Console(Hook):
    """The run's ``Feedback`` driven by the loop: the bar (or step lines) while it trains,
    a line with each validation's metrics."""

    def on_train_start(self, run: Run, progress: Progress) -> None:
        run.feedback.open(progress.position.iteration)

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        position = progress.position
        run.feedback.step(
            position.iteration, position.epoch, info.loss, info.lr, progress.window.rate()
        )
        return None

    def on_validation_end(self, run: Run, progress: Progress, metrics: dict) -> None:
        tasks = run.spec.task_names
        if len(tasks) == 1:
            text = format_metrics(metrics)
        else:
            text = "; ".join(f"{task}: {format_metrics(metrics[task])}" for task in tasks)
        run.feedback.write(f"step {progress.position.iteration}: {text}")

    def on_train_end(self, run: Run, progress: Progress) -> None:
        run.feedback.close()


def announce(run: Run, progress: Progress, *, resumed: bool, extended: bool = False) -> None:
    """What the run will do, before it does it: the notes of what it chose (splits, warm-up),
    then data, steps and epochs, schedule, where the weights start, and the run folder."""
    config, position = run.config, progress.position
    for note in run.notes:
        print(note)
    verb = f"resuming at step {position.iteration}" if resumed else "training"
    if extended:
        verb = f"training on from step {position.iteration} (the run had finished)"
    total = total_steps(run, position)
    epochs = math.ceil(total / run.steps_per_epoch)
    steps = f"{total} steps = {epochs} epoch(s)"
    if config.time_budget_minutes and not position.planned_iters:
        steps = (
            f"steps planned after {PROBE_STEPS} to fit the time budget of "
            f"{minutes(config.time_budget_minutes * 60)} (at most {total} = {epochs} epoch(s))"
        )
    print(
        f"{verb} {config.model} ({config.recipe} recipe) on {config.dataset}: "
        f"{len(run.data.train)} train / {len(run.data.val)} val images{_val_source(config)}\n"
        f"  {steps} of {run.steps_per_epoch} steps, "
        f"{config.batch_size * config.accumulate} x {run.context.world_size} images a step; "
        f"{config.optimizer} lr {config.lr:g}, {config.schedule} schedule, warm-up "
        f"{config.warmup_iters or 0} steps\n"
        f"  weights: {_weights_source(config)}{_average_note(config)}\n"
        f"  run folder {run.run_dir}",
        flush=True,
    )


def _average_note(config: TrainConfig) -> str:
    if not config.ema_decay:
        return ""
    span = round(1 / (1 - config.ema_decay))
    return (
        f"; validated and saved as their moving average (ema_decay {config.ema_decay:g}, "
        f"about {span} steps)"
    )


def _val_source(config: TrainConfig) -> str:
    if config.val_split == RANDOM_SPLIT:
        return f" (a random {config.val_fraction:.0%} held out, split_seed {config.split_seed})"
    same = config.val_dataset in (None, config.dataset) and config.val_root == config.root
    if same and config.val_split == config.train_split:
        return " (the training images: val measures fit, not generalisation)"
    return ""


def _weights_source(config: TrainConfig) -> str:
    """Where the weights start, in words."""
    if config.init_from:
        return f"from {config.init_from}"
    if config.init_streams:
        return "fused from " + ", ".join(config.init_streams.values())
    if config.model_options.get("pretrained_backbone"):
        return "ImageNet-pretrained backbone (pretrained_backbone = true)"
    return "random, trained from scratch (pretrained_backbone = true starts from ImageNet)"
