"""Ctrl-C while training, as one hook: stop at the next step boundary and keep last.pt."""

from __future__ import annotations

import signal
import threading
from typing import Any

from .hooks import Hook, StepInfo
from .state import Progress, Run

__all__ = ["Interrupt"]


class Interrupt(Hook):
    """Ctrl-C (SIGINT) while training: the first asks the loop to stop at the next step
    boundary and save last.pt; a second one stops at once (KeyboardInterrupt). Only the main
    thread can take signals: elsewhere Ctrl-C keeps Python's behaviour."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def on_train_start(self, run: Run, progress: Progress) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_train_end(self, run: Run, progress: Progress) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        return "interrupted" if self.requested else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after this step and saving last.pt (Ctrl-C again to abandon "
            "the step)",
            flush=True,
        )
