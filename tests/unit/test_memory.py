"""Freed memory stays in the process (service/serving/memory.py): a forward pass's pattern of
allocations, megabytes each, freed every batch, stops faulting on fresh pages.

Each case runs in a process of its own: glibc's thresholds are per process and move with what
it has freed, so the control (glibc's defaults) needs a process that never had them set."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.serving.model import Classifier
from service.settings import Settings

# The scripts' malloc and free: glibc's own, as the blocks of torch's CPU allocator are.
LIBC = textwrap.dedent(
    """
    import ctypes
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    """
)

# A batch's activations as glibc sees them: blocks of a size written and then freed, twenty-five
# times, on a thread of its own as the model's is; the page faults of the last twenty (a block's
# first write to a fresh page). Twenty-four of 4 MiB: 96 MiB, more than one heap of a thread's
# own arena (64 MiB), which glibc unmaps once free whatever the thresholds. Three of 48 MiB:
# over the largest mmap threshold mallopt takes (32 MiB), as a batch of 8 images' activations.
# How the setting is made: `setting` calls it, then starts the thread; `late` starts a thread
# first (it takes an arena of its own and leaves it free when it ends), as a worker's first
# thread may do before its service's constructor; `service` imports the service module with the
# setting in the environment, then starts that first thread too.
BATCHES = LIBC + textwrap.dedent(
    """
    import json, os, resource, sys, threading
    from service.serving.memory import retain_freed_memory
    megabytes, how = int(sys.argv[1]), sys.argv[4]
    size, count = int(sys.argv[2]) << 20, int(sys.argv[3])
    def first_thread():
        thread = threading.Thread(target=lambda: libc.free(libc.malloc(1 << 10)))
        thread.start()
        thread.join()
    if how == "service":
        os.environ["BENTO_FLEET_RETAIN_FREED_MEMORY_MB"] = str(megabytes)
        import service.service
        first_thread()
        applied = retain_freed_memory(megabytes)  # done at the import: a no-op now
    else:
        if how == "late":
            first_thread()
        applied = retain_freed_memory(megabytes)
    faults = []
    def batch():
        blocks = [libc.malloc(size) for _ in range(count)]
        for block in blocks:
            ctypes.memset(block, 1, size)
        for block in reversed(blocks):
            libc.free(block)
    def batches():
        for _ in range(5):
            batch()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            batch()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=batches)
    thread.start()
    thread.join()
    print(json.dumps({"applied": applied, "faults_per_batch": faults[0] / 20}))
    """
)


# A spike: one block written and freed, then the process's resident memory.
SPIKE = LIBC + textwrap.dedent(
    """
    import json, os, sys
    from service.serving.memory import retain_freed_memory
    retain_freed_memory(int(sys.argv[1]))
    def resident_mib():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    before = resident_mib()
    block = libc.malloc(int(sys.argv[2]) << 20)
    ctypes.memset(block, 1, int(sys.argv[2]) << 20)
    libc.free(block)
    print(json.dumps({"kept_mib": resident_mib() - before}))
    """
)


def run(script: str, *args: int | str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],  # the repository: `service` importable
    )
    return json.loads(done.stdout)


BLOCKS = pytest.mark.parametrize("block_mib, count", [(4, 24), (48, 3)], ids=["4MiB", "48MiB"])


@BLOCKS
def test_freed_memory_is_reused_without_page_faults(block_mib, count):
    result = run(BATCHES, 512, block_mib, count, "setting")
    assert result["applied"] is True
    assert result["faults_per_batch"] < 20  # a few of Python's own; none from the blocks


@BLOCKS
def test_without_it_glibc_gives_the_memory_back_and_every_batch_faults_again(block_mib, count):
    """The control: the pattern above does fault under glibc's moving thresholds (a batch is
    24,576 or 36,864 pages), so the test above measures the setting, not a pattern that never
    faults."""
    result = run(BATCHES, 0, block_mib, count, "setting")
    assert result["applied"] is False
    assert result["faults_per_batch"] > 1000


def test_importing_the_service_is_enough_for_every_thread_the_worker_starts_after():
    """BentoML's worker has one thread when it imports the service, and two by the service's
    constructor: served, the model's thread faulted in five start-ups of eight when the setting
    waited for the constructor, and in none of five since."""
    result = run(BATCHES, 512, 4, 24, "service")
    assert result["applied"] is True
    assert result["faults_per_batch"] < 20


def test_a_thread_started_before_the_setting_hands_its_arena_on():
    """Why the service makes the setting at import: set after a thread took an arena of its own,
    the next thread may be handed that arena, whose free heaps glibc unmaps."""
    result = run(BATCHES, 512, 4, 24, "late")
    assert result["applied"] is True
    assert result["faults_per_batch"] > 1000


def test_a_spike_over_the_setting_goes_back_to_the_kernel_at_once():
    """Every block comes from the heap, the pixels of a huge upload too: what the setting does
    not keep must still leave the process as soon as it is freed."""
    assert run(SPIKE, 64, 256)["kept_mib"] < 16


def test_a_spike_within_the_setting_is_kept_for_the_next():
    """The other side of the same threshold, so the test above cannot pass by accident."""
    assert run(SPIKE, 512, 256)["kept_mib"] > 200


def test_the_classifier_applies_the_setting_before_its_model_runs(monkeypatch):
    import service.serving.model as model

    calls = []
    monkeypatch.setattr(model, "retain_freed_memory", calls.append)
    Classifier(Settings(retain_freed_memory_mb=64))
    assert calls == [64]


@pytest.mark.parametrize("megabytes", [-1, 2048])
def test_the_setting_is_bounded_by_what_mallopt_takes(megabytes):
    with pytest.raises(ValueError, match="retain_freed_memory_mb"):
        Settings(retain_freed_memory_mb=megabytes)
