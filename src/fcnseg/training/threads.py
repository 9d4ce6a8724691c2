"""CPU thread count chosen by measurement, for machines shared with other work.

On a small CPU shared with other processes, more compute threads can be far slower than
one: OpenMP workers spin at every barrier waiting for a partner the kernel has given to
someone else. Measured on a 2-core machine while another process trained: a step that takes
0.2 s with 2 threads on the idle machine took 3-25 s with 2 threads, and 0.8-1.5 s with 1.
The loss is lopsided (10x slower against 1.7x faster), so ``AdaptiveThreads`` runs on one
thread, probes now and then whether more would pay, and falls back at the first slow step.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque

import torch
from torch import nn

from .hooks import Hook, StepInfo
from .state import Progress, Run

__all__ = ["AdaptiveThreads", "probe_threads"]


def _probe_net() -> nn.Module:
    """A few small convolutions with fixed weights (drawn from no global generator)."""
    net = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.Conv2d(32, 16, 1),
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.fill_(0.01)
    return net


def probe_threads(threads: int, net: nn.Module | None = None, repeats: int = 4) -> float:
    """Median seconds of a small forward and backward pass with ``threads`` threads."""
    net = net or _probe_net()
    x = torch.zeros(4, 16, 48, 48)
    torch.set_num_threads(threads)
    times = []
    for _ in range(repeats + 1):  # the first wakes the threads
        begin = time.perf_counter()
        net(x).sum().backward()
        times.append(time.perf_counter() - begin)
    return statistics.median(times[1:])


class AdaptiveThreads(Hook):
    """A training hook: one thread, or ``max_threads`` while that is clearly faster.

    Every ``period`` steps on one thread it probes both counts ``rounds`` times and moves up
    only if more threads won every round by a clear margin; a step on more threads slower
    than the recent one-thread steps moves it back at once. Never asks training to stop.
    """

    def __init__(self, max_threads: int | None = None, *, period: int = 25, rounds: int = 3):
        self.max_threads = max_threads or os.cpu_count() or 1
        self.period, self.rounds = period, rounds
        self.threads = 1
        self._single: deque[float] = deque(maxlen=10)  # recent one-thread step times
        self._since = period - 3  # first probe after a few steps: the first ones are slow
        self._net = _probe_net()
        torch.set_num_threads(1)

    def on_step_end(self, run: Run, progress: Progress, info: StepInfo) -> str | None:
        self(info)
        return None

    def __call__(self, info: StepInfo) -> bool:
        if self.threads == 1:
            self._single.append(info.seconds)
        elif self._single and info.seconds > 1.2 * statistics.median(self._single):
            self._set(1)  # the machine got busy: more threads now cost more than they give
            return False
        self._since += 1
        if self._since >= self.period and self.max_threads > 1:
            self._since = 0
            self._set(self.max_threads if self._more_pays() else 1)
        return False

    def _more_pays(self) -> bool:
        for _ in range(self.rounds):
            one = probe_threads(1, self._net)
            more = probe_threads(self.max_threads, self._net)
            if more > 0.75 * one:
                return False
        return True

    def _set(self, threads: int) -> None:
        self.threads = threads
        torch.set_num_threads(threads)
