"""What ``GET /metrics`` tells a Prometheus scraper: requests by route and status, errors by
reason, a latency histogram and a histogram of batch sizes, in Prometheus' text format
(version 0.0.4). Updated from many threads under one lock."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

__all__ = ["ServerStats", "Histogram", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus exposes them."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.buckets):
            self.counts[index] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        lines, total = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            total += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {total}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class ServerStats:
    """The server's counters; ``text()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batches = Histogram(BATCH_BUCKETS)

    def request(self, route: str, status: int, seconds: float | None = None) -> None:
        """One answered request (``seconds``: its latency, for the segment route)."""
        with self._lock:
            self.requests[(route, status)] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def error(self, reason: str) -> None:
        """A request refused or failed, by a short reason (``not_an_image``, ``too_large``)."""
        with self._lock:
            self.errors[reason] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def text(self) -> str:
        with self._lock:
            lines = [
                "# HELP fcnseg_requests_total Requests answered, by route and HTTP status.",
                "# TYPE fcnseg_requests_total counter",
            ]
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'fcnseg_requests_total{{route="{route}",code="{status}"}} {count}')
            lines += [
                "# HELP fcnseg_errors_total Requests refused or failed, by reason.",
                "# TYPE fcnseg_errors_total counter",
            ]
            for reason, count in sorted(self.errors.items()):
                lines.append(f'fcnseg_errors_total{{reason="{reason}"}} {count}')
            lines += [
                "# HELP fcnseg_request_seconds Time to answer POST /v1/segment.",
                "# TYPE fcnseg_request_seconds histogram",
                *self.latency.lines("fcnseg_request_seconds"),
                "# HELP fcnseg_batch_size Images the model ran together.",
                "# TYPE fcnseg_batch_size histogram",
                *self.batches.lines("fcnseg_batch_size"),
            ]
        return "\n".join(lines) + "\n"
