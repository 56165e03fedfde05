"""Freed heap memory stays in the worker for the next batch, so the forward pass stops faulting.

Why. A forward pass allocates its activations and frees them, megabytes each, every batch.
glibc's malloc serves a block above its mmap threshold with a fresh mmap, and gives the top of
a heap back to the kernel once more than its trim threshold lies free there. Both thresholds
move with what the process has freed (the mmap one up to 32 MiB, the trim one at twice it), so
where they settle depends on the order of the process's first allocations: the next pass then
touches pages the kernel must hand out and zero again, a fault every 4 KiB. Measured on a
2-core host (EfficientNet-Lite0, batch 4, the forward pass alone, three processes of each):
2,400-5,200 page faults and 3.5-7.6 ms of kernel time an image, 30.4 ms of CPU an image (26.1
to 32.1, each process keeping its own figure for life); with both thresholds fixed, no fault
and 20.8 ms (20.0-21.3), 95 images a second against 65. This was the benchmark's "one process
runs the forward pass up to a third slower than another, for its whole life".

What. mallopt M_MMAP_THRESHOLD at 32 MiB, glibc's own ceiling for the moving threshold,
M_TRIM_THRESHOLD at `retain_freed_memory_mb`, and M_ARENA_MAX at 1. Both thresholds, or
neither: setting either one stops both moving, so one alone pins the other at its 128 KiB
start, which is worse than no setting (the same measurement: 53 ms an image with only the mmap
threshold, 91 ms with only the trim threshold).

One arena: a thread's own arena grows in heaps of at most 64 MiB, and glibc unmaps a heap whose
memory is all free whatever the thresholds, so a batch's activations that spill into a second
heap fault again at the next batch (served, one worker of two faulted 1,200 times an image with
the thresholds alone). The main arena grows in one piece. The worker's threads share its lock:
the model's thread allocates a few hundred blocks a batch, and Python's small objects do not
reach malloc. Threads take their arena at their first allocation, so the service calls this
before it starts any (service.py); the model calls it again for processes without the service
(the benchmark's ceiling), where it is a no-op once done.

Memory: a worker keeps what its largest batch needed (it needs it again at the next), and up
to the setting more after a spike. Blocks over 32 MiB (a huge upload's pixels, the activations
of a large batch) are still mmapped and given back at once.

Elsewhere (musl, macOS) mallopt is missing or a no-op: the worker logs so and runs as before.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: mallopt's own limit

_applied: int | None = None


def retain_freed_memory(megabytes: int) -> bool:
    """Set glibc's malloc for this process (see the module's docstring); 0 leaves it as it is.
    True if set; once per process, later calls with the same value are free."""
    global _applied
    if megabytes == 0:
        return False
    if _applied == megabytes:
        return True
    mallopt = _mallopt()
    if mallopt is None or not (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, megabytes << 20)
        and mallopt(M_ARENA_MAX, 1)
    ):
        log.warning("malloc left as it is: this C library has no glibc mallopt")
        return False
    _applied = megabytes
    log.info("malloc keeps up to %d MiB freed for reuse (one arena, mmap above 32 MiB)", megabytes)
    return True


def _mallopt():
    libc = ctypes.CDLL(None)  # the process's own symbols, its C library's among them
    if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt does nothing
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
