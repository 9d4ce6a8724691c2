"""What a run shows while it trains: on a terminal, one progress bar for the whole run (steps
done, ETA, epoch, loss, lr); when stdout is a file or a pipe (a log, a batch job), a line
every ``every`` steps with the same numbers, since a bar's carriage returns read as noise."""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta

__all__ = ["Feedback"]


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
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.bar = None
        self.started, self.first = time.monotonic(), 0

    def open(self, done: int) -> None:
        """Start counting at ``done`` steps (a resumed run's position)."""
        self.started, self.first = time.monotonic(), done
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
        seconds = (time.monotonic() - self.started) / done * (self.total - iteration)
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
