"""The training engine's clock: every duration and deadline of a run is read here.

One monotonic clock in seconds (``time.perf_counter``), read as ``clock.now()`` at call
time, so that a test can run a time-budgeted schedule on simulated time (steps that take
what it says) instead of waiting for real seconds. Thread-count probing keeps its own real
timer: it measures the machine, not the run.
"""

from __future__ import annotations

import time

__all__ = ["now"]

now = time.perf_counter
