"""The worker's heap and Python's garbage collector: what the start built is frozen.

torch, BentoML, the model and its warm-up leave some 500,000 objects that the collector tracks
(EfficientNet-Lite0 on the CPU), and each full collection walks all of them: 200 ms on a 2-core
machine (2026-12-05), holding the GIL, so the event loop, the decode threads and the model
thread's Python all stand still meanwhile. Full collections come with allocations, so with
traffic: one every 15 s or so at 56 images a second there, some 0.2 ms of CPU an image and a
200 ms stall in the latency of every request in flight; a GPU worker answering thousands of
requests a second would pay it every few seconds.

Those objects live as long as the worker: its models are loaded once and never swapped, so
there is nothing for the collector to find among them. `gc.freeze()` moves them out of its
sight once each model is warm, before it serves (variant_set.py), so the collection that comes
first pauses the start, not a request; what requests allocate is collected as before. Garbage
the start left in reference cycles is collected first, so that none of it is kept for good.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_what_start_built() -> int:
    """Collect the start's garbage, then freeze every object left; how many were frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "garbage collector: %d objects built by the start frozen (%.0f ms)",
        frozen,
        (time.perf_counter() - started) * 1000,
    )
    return frozen
