"""A shadow that fails per request: the failure is counted and logged, never raised.

The shadow's model function is replaced by one that raises: this tests the containment logic
only (the real broken-model case is in tests/integration/test_variants.py)."""

import asyncio
import time

import torch

from service import metrics
from service.serving.pipeline import ClassificationPipeline
from service.serving.preprocessing import DecodedInfo
from service.settings import Settings


def failures(variant: str) -> float:
    return metrics.SHADOW_FAILURES.labels(variant=variant, reason="error")._value.get()


def test_a_failing_shadow_is_counted_and_contained(tmp_path):
    settings = Settings(
        state_dir=tmp_path,
        variants=[{"name": "main", "weight": 1}, {"name": "cand", "shadow": True}],
    )
    pipeline = ClassificationPipeline(settings)
    shadow = pipeline.variants["cand"]

    def explode(batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    shadow.batcher._infer = explode
    before = failures("cand")
    info = DecodedInfo(8, 8, "PNG", 100)

    async def run():
        await pipeline._shadow(shadow, [torch.zeros(3, 8, 8)], [info], "r1", time.perf_counter())
        await shadow.batcher.close()

    asyncio.run(run())  # returns normally: nothing reaches the request that triggered it
    assert failures("cand") == before + 1
    assert pipeline.prediction_log._queue.qsize() == 0  # and nothing is logged as its answer
