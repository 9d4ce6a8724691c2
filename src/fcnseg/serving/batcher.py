"""One model thread for many callers: concurrent requests of one size run as one batch.

An engine is used by one thread only (the batcher's), so every engine is safe however many
requests arrive at once (onnxruntime sessions, OpenVINO requests and torch modules alike).
A caller ``submit``s a prepared image with a key (its size) and waits on the returned
future; the thread takes the oldest waiting item, gathers up to ``max_batch`` items with
the same key for at most ``max_wait`` seconds after it, and runs them together. Items of
other sizes wait their turn in arrival order, so no size starves another.

A batch that fails is retried item by item, so one bad request fails only itself.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["Batcher", "Closed"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class Closed(RuntimeError):
    """The batcher was closed before the item ran (the server is shutting down)."""


class _Waiting(Generic[Item]):
    __slots__ = ("key", "item", "future")

    def __init__(self, key: Hashable, item: Item) -> None:
        self.key, self.item, self.future = key, item, Future()


class Batcher(Generic[Item, Result]):
    """Runs ``run(items) -> results`` (one result per item, in order) on its own thread,
    batching items of one key. ``on_batch(size)`` is told each batch's size."""

    def __init__(
        self,
        run: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_batch: int = 8,
        max_wait: float = 0.005,
        on_batch: Callable[[int], Any] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more seconds, got {max_wait}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="fcnseg-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, item: Item) -> Future:
        """A future of ``item``'s result; items of one ``key`` may run together."""
        waiting = _Waiting(key, item)
        with self._ready:
            if self._closed:
                raise Closed("the server is shutting down")
            self._waiting.append(waiting)
            self._ready.notify()
        return waiting.future

    def close(self, timeout: float | None = None) -> None:
        """Run what is waiting, then stop the thread (idempotent)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    # -- the model thread

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Waiting] | None:
        """The oldest item and up to ``max_batch - 1`` more of its key, waiting at most
        ``max_wait`` after the first arrived; None once closed and drained."""
        with self._ready:
            while not self._waiting:
                if self._closed:
                    return None
                self._ready.wait()
            first = self._waiting.popleft()
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                batch += self._take(first.key, self.max_batch - len(batch))
                left = deadline - time.monotonic()
                if len(batch) == self.max_batch or left <= 0 or self._closed:
                    break
                self._ready.wait(left)
            return batch

    def _take(self, key: Hashable, count: int) -> list[_Waiting]:
        """Up to ``count`` waiting items of ``key``, removed in arrival order."""
        taken = [waiting for waiting in self._waiting if waiting.key == key][:count]
        for waiting in taken:
            self._waiting.remove(waiting)
        return taken

    def _run(self, batch: list[_Waiting]) -> None:
        live = [w for w in batch if w.future.set_running_or_notify_cancel()]
        if not live:
            return
        if self.on_batch is not None:
            self.on_batch(len(live))
        try:
            results = self.run([w.item for w in live])
        except BaseException as error:  # noqa: BLE001 - handed to the callers
            if len(live) == 1:
                live[0].future.set_exception(error)
                return
            for waiting in live:  # one bad item fails only itself
                self._run_alone(waiting)
            return
        for waiting, result in zip(live, results, strict=True):
            waiting.future.set_result(result)

    def _run_alone(self, waiting: _Waiting) -> None:
        try:
            waiting.future.set_result(self.run([waiting.item])[0])
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            waiting.future.set_exception(error)
