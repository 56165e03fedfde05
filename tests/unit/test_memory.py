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

# A batch's activations as glibc sees them: twenty-four 4 MiB blocks written and then freed,
# twenty-five times, on a thread of its own as the model's is; the page faults of the last
# twenty (a block's first write to a fresh page). 96 MiB: more than one heap of a thread's own
# arena (64 MiB), which glibc unmaps once free whatever the thresholds.
BATCHES = textwrap.dedent(
    """
    import ctypes, ctypes.util, json, resource, sys, threading
    from service.serving.memory import retain_freed_memory
    applied = retain_freed_memory(int(sys.argv[1]))
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    def batch():
        blocks = [libc.malloc(4 << 20) for _ in range(24)]
        for block in blocks:
            ctypes.memset(block, 1, 4 << 20)
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


def batches(megabytes: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", BATCHES, str(megabytes)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],  # the repository: `service` importable
    )
    return json.loads(done.stdout)


def test_freed_memory_is_reused_without_page_faults():
    result = batches(256)
    assert result["applied"] is True
    assert result["faults_per_batch"] < 20  # a few of Python's own; none from the blocks


def test_without_it_glibc_gives_the_memory_back_and_every_batch_faults_again():
    """The control: the pattern above does fault under glibc's moving thresholds (96 MiB a batch
    is 24,576 pages), so the test above measures the setting, not a pattern that never faults."""
    result = batches(0)
    assert result["applied"] is False
    assert result["faults_per_batch"] > 1000


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
