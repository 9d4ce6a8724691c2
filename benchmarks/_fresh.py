"""Run a benchmark row in a fresh process, so its peak resident memory (RSS) is its own."""

from __future__ import annotations

import multiprocessing as mp
import resource
from queue import Empty


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(target, *args):
    """``target(*args, queue)`` in a spawned process; what it puts on the queue.

    A child that dies (out of memory, a crash) raises here instead of hanging the run.
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                message = f"{target.__name__}{args[:1]} died: see its traceback above"
                raise RuntimeError(message) from None
    process.join()
    return result
