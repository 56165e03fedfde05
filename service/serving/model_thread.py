"""The one thread that runs torch's compute in a worker: every model is built, calibrated and
warmed on it, and every batch is stacked and run on it, whatever its variant.

Why one. Torch's CPU operators run on OpenMP, and OpenMP starts a team of threads for each
thread that calls into it. A forward pass is a few hundred short parallel regions, so the
team's threads must spin between them to be there for the next one; libgomp spins only while
its threads do not outnumber the cores (OMP_WAIT_POLICY unset). A second calling thread, and so
a second team, puts it over on a small host: its threads go to sleep between regions and the
forward pass runs on about one core. Measured on a 2-core host (EfficientNet-Lite0, one image):
19 ms on the thread that loaded the model, 41 ms (1.1 cores) on the batcher's own thread, which
is where the service ran it; a process whose torch work all happens on one thread gets the 19.
Batches of several variants share the cores anyway, so they lose nothing by taking turns here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import thread_names
from .thread_names import name_this_thread

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def model_executor() -> ThreadPoolExecutor:
    """The process's model thread (named for the OS, so the benchmark can tell its CPU apart)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="model",
                initializer=name_this_thread,
                initargs=(thread_names.INFERENCE,),
            )
        return _executor


def on_model_thread(function: Callable[..., T], *args) -> T:
    """Run `function(*args)` on the model thread and wait for it (from any other thread)."""
    return model_executor().submit(function, *args).result()
