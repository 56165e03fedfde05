"""Which images get the pixel statistics that drift detection compares.

A drift test needs a sample, not every image, and the statistics cost more CPU than decoding a
small photo (1.3-1.5 ms an image on the 2-core CPU): at a GPU worker's thousands of images a
second even a small share would cost cores. So an image is drawn by a random share first
(drift.statistics_share), then within a rate (drift.statistics_per_second, a token bucket).

The decode pool draws for every image it admits; the benchmark's in-process ceiling draws with
the same settings, so that it pays what the server pays and no more.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable


class StatisticsDraw:
    """Not thread-safe: the decode pool draws on the event loop only, so the bucket needs no
    lock."""

    def __init__(
        self,
        share: float = 1.0,
        per_second: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.share = share
        self.per_second = per_second
        self._clock = clock
        # The bucket holds a second's worth (one image at least): an idle spell buys no burst
        # beyond it.
        self._capacity = max(1.0, min(per_second, 1e9))
        self._tokens = self._capacity
        self._refilled = clock()

    def draw(self) -> bool:
        """Whether this image gets its pixel statistics: drawn by the share, then within the
        rate."""
        if self.share < 1 and random.random() >= self.share:
            return False
        if math.isinf(self.per_second):
            return True
        now = self._clock()
        earned = (now - self._refilled) * self.per_second
        self._tokens = min(self._capacity, self._tokens + earned)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
