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

What. mallopt M_MMAP_MAX at 0, so every block comes from the heap whatever its size,
M_TRIM_THRESHOLD at `retain_freed_memory_mb` (512), and M_ARENA_MAX at 1. Both, or neither:
with only the trim threshold fixed, the mmap threshold stays at its 128 KiB start, which is
worse than no setting (the same measurement: 91 ms an image). The mmap threshold cannot do the
first part: mallopt refuses it above 32 MiB, and a batch's largest activation passes that from
8 images of 224x224 (38 MB). At batch 8, the mmap threshold at 32 MiB took 4,700-7,100 faults
and 28-33 ms an image; no mmap, no fault and 21 ms. Batches of 16 and 32 free more than 256 MiB
at the heap's top at once: a trim threshold of 256 gave that back every batch (3,700-4,650 faults
an image), 512 kept it (none; 21 and 23 ms).

One arena: a thread's own arena grows in heaps of at most 64 MiB, and glibc unmaps a heap whose
memory is all free whatever the thresholds, so a batch's activations that spill into a second
heap fault again at the next batch (served, one worker of two faulted 1,200 times an image with
the thresholds alone). The main arena grows in one piece. The worker's threads share its lock:
the model's thread allocates a few hundred blocks a batch, and Python's small objects do not
reach malloc. A thread takes its arena at its first allocation, and an arena once made stays:
the limit only stops new ones, and a later thread may be handed one that a thread made before
it (free when its thread ended, or in turn). So the service calls this when it is imported,
while BentoML's worker has one thread (service.py); called from the service's constructor, by
when the worker has a second thread, the model's thread faulted as before in five start-ups of
eight. The model calls it again for processes without the service (the benchmark's ceiling),
where it is a no-op once done.

Memory: a worker keeps what its largest batch needed (it needs it again at the next), and up
to the setting more after a spike; more than the setting freed at the heap's top at once (the
pixels of a huge upload) goes back to the kernel at once. Freed blocks inside the heap stay
resident until reused, so a worker's memory is the most it ever held at once: the unit's
MemoryMax already has to allow that.

Elsewhere (musl, macOS) mallopt is missing or a no-op: the worker logs so and runs as before.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

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
        mallopt(M_MMAP_MAX, 0)
        and mallopt(M_TRIM_THRESHOLD, megabytes << 20)
        and mallopt(M_ARENA_MAX, 1)
    ):
        log.warning("malloc left as it is: this C library has no glibc mallopt")
        return False
    _applied = megabytes
    log.info("malloc keeps up to %d MiB freed for reuse (one arena, all from the heap)", megabytes)
    return True


def _mallopt():
    libc = ctypes.CDLL(None)  # the process's own symbols, its C library's among them
    if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt does nothing
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
