"""This worker's live numbers for GET /stats and the web page: counts, latency percentiles,
batch sizes, uptime. Prometheus (/metrics) is where the whole fleet's history lives; this is
the at-a-glance view, over a bounded window of recent requests, without a Prometheus server."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque

import numpy as np

WINDOW = 10_000  # latencies kept for the percentiles


class LiveStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter[str] = Counter()  # by variant
        self.images: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # by error code
        self.batch_sizes: Counter[int] = Counter()
        self._latencies_ms: deque[float] = deque(maxlen=WINDOW)

    def request(self, variant: str, images: int, latency_ms: float) -> None:
        with self._lock:
            self.requests[variant] += 1
            self.images[variant] += images
            self._latencies_ms.append(latency_ms)

    def error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes[size] += 1

    def snapshot(self) -> dict:
        with self._lock:
            latencies = np.array(self._latencies_ms)
            batches = sum(self.batch_sizes.values())
            return {
                "worker_pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 1),
                "requests": sum(self.requests.values()),
                "images": sum(self.images.values()),
                "requests_by_variant": dict(self.requests),
                "errors": sum(self.errors.values()),
                "errors_by_code": dict(self.errors),
                "latency_ms": {
                    f"p{q}": round(float(np.percentile(latencies, q)), 2)
                    if latencies.size
                    else None
                    for q in (50, 90, 95, 99)
                }
                | {"window": int(latencies.size)},
                "batch_sizes": {
                    "batches": batches,
                    "mean": round(
                        sum(size * n for size, n in self.batch_sizes.items()) / batches, 2
                    )
                    if batches
                    else None,
                    "histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                },
            }


LIVE = LiveStats()
