"""On a CPU host the forward pass and the light decodes take turns on the cores, and a free model
waits for the images still decoding (service/serving/cpu_turns.py says why)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from support import photo

from service.serving import variant_set
from service.serving.batching import AdaptiveBatcher
from service.serving.cpu_turns import DECODE_WAIT_S, CpuTurns
from service.serving.decoding import Admitted, DecodePool
from service.serving.model import LITE_MEAN, LITE_STD
from service.serving.preprocessing import Preprocessor
from service.serving.variant_set import VariantSet
from service.settings import Settings

PREPROCESSOR = Preprocessor(224, 256, LITE_MEAN, LITE_STD, 40_000_000, 10_000_000)


def enabled() -> CpuTurns:
    turns = CpuTurns()
    turns.enable()
    return turns


def hold(context, entered: threading.Event, release: threading.Event) -> threading.Thread:
    """A thread inside `context` until `release` is set."""

    def body():
        with context:
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def test_a_forward_pass_waits_for_the_decode_running_and_a_decode_for_the_forward_pass():
    turns = enabled()
    in_decode, end_decode, in_forward, end_forward = (threading.Event() for _ in range(4))
    decoding = hold(turns.decode(), in_decode, end_decode)
    assert in_decode.wait(5)
    forward = hold(turns.forward(), in_forward, end_forward)
    assert not in_forward.wait(0.2)  # the decode is still running
    end_decode.set()
    assert in_forward.wait(5)
    in_second, end_second = threading.Event(), threading.Event()
    second = hold(turns.decode(), in_second, end_second)
    assert not in_second.wait(0.2)  # the forward pass holds the cores
    end_forward.set()
    assert in_second.wait(5)
    end_second.set()
    for thread in (decoding, forward, second):
        thread.join(5)


def test_a_waiting_forward_pass_goes_before_decodes_that_come_after_it():
    """Else a stream of decodes, each starting before the last ends, would hold it for good."""
    turns = enabled()
    in_first, end_first, in_forward, end_forward = (threading.Event() for _ in range(4))
    first = hold(turns.decode(), in_first, end_first)
    assert in_first.wait(5)
    forward = hold(turns.forward(), in_forward, end_forward)
    time.sleep(0.1)  # the forward pass is waiting now
    in_later, end_later = threading.Event(), threading.Event()
    later = hold(turns.decode(), in_later, end_later)
    assert not in_later.wait(0.2)  # held back behind the waiting forward pass
    end_first.set()
    assert in_forward.wait(5)
    assert not in_later.is_set()
    end_forward.set()
    assert in_later.wait(5)
    end_later.set()
    for thread in (first, forward, later):
        thread.join(5)


def test_off_they_overlap():
    turns = CpuTurns()
    in_decode, end_decode, in_forward, end_forward = (threading.Event() for _ in range(4))
    decoding = hold(turns.decode(), in_decode, end_decode)
    forward = hold(turns.forward(), in_forward, end_forward)
    assert in_decode.wait(5) and in_forward.wait(5)
    end_decode.set()
    end_forward.set()
    decoding.join(5)
    forward.join(5)


def test_only_the_light_lane_takes_turns():
    """A heavy decode (up to half a second) must not hold the forward pass: it runs beside it,
    at nice 19, while a light one waits for the forward pass to end."""
    turns = enabled()
    pool = DecodePool(heavy_decode_ms=100.0, max_pixels=40_000_000, cpu_turns=turns)
    light_photo = photo("chelsea.png")

    async def decode_during_a_forward_pass(heavy: bool) -> float:
        opened = pool.open([light_photo], PREPROCESSOR)
        admitted = pool.admit(opened, max_latency_s=10)
        if heavy:  # the same photo, sent to the heavy lane as a large upload would be
            pool.light.release(admitted[0].estimate_s)
            pool.heavy.hold(admitted[0].estimate_s)
            admitted = [Admitted(opened[0], pool.heavy, admitted[0].estimate_s, False)]
        in_forward, end_forward = threading.Event(), threading.Event()
        forward = hold(turns.forward(), in_forward, end_forward)
        assert in_forward.wait(5)
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, end_forward.set)
        started = time.perf_counter()
        await pool.decode(admitted, [PREPROCESSOR])
        decoded_after = time.perf_counter() - started
        forward.join(5)
        return decoded_after

    try:
        assert asyncio.run(decode_during_a_forward_pass(heavy=False)) >= 0.25
        assert asyncio.run(decode_during_a_forward_pass(heavy=True)) < 0.25
    finally:
        pool.close()


class RecordingModel:
    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, images):
        self.batches.append(len(images))
        return [image[:1].clone() for image in images]


def batcher_for(model, turns: CpuTurns, max_batch_size: int = 8) -> AdaptiveBatcher:
    return AdaptiveBatcher(
        model,
        max_batch_size=max_batch_size,
        max_queue_size=100,
        max_latency_ms=10_000,
        cpu_turns=turns,
    )


async def request(batcher: AdaptiveBatcher, decode_s: float):
    """A request as the pipeline makes one: its place held while it decodes, then queued."""
    with batcher.reserve(1):
        await asyncio.sleep(decode_s)
    return await batcher.submit([torch.zeros(2)], reserved=True)


@pytest.mark.parametrize("on", [True, False], ids=["turns", "overlapped"])
def test_a_free_model_waits_for_the_images_still_decoding(on):
    """In turns, four requests whose decodes end a few milliseconds apart make one batch; the
    control, overlapped, runs the first at once as it always did."""
    model = RecordingModel()
    turns = enabled() if on else CpuTurns()

    async def scenario():
        batcher = batcher_for(model, turns)
        await asyncio.gather(*(request(batcher, 0.002 * (i + 1)) for i in range(4)))

    asyncio.run(scenario())
    assert model.batches == ([4] if on else [1, 1, 1, 1])


def test_the_wait_ends_with_a_full_batch():
    model = RecordingModel()

    async def scenario():
        batcher = batcher_for(model, enabled(), max_batch_size=2)
        slow = asyncio.ensure_future(request(batcher, 0.03))
        await asyncio.gather(request(batcher, 0), request(batcher, 0.001))
        late = time.perf_counter()
        await slow
        return late

    started = time.perf_counter()
    two_answered = asyncio.run(scenario())
    assert model.batches == [2, 1]
    assert two_answered - started < 0.025  # did not wait for the third


def test_the_wait_is_bounded():
    """A decode that takes longer than DECODE_WAIT_S does not hold the images already queued."""
    model = RecordingModel()

    async def scenario():
        batcher = batcher_for(model, enabled())
        slow = asyncio.ensure_future(request(batcher, DECODE_WAIT_S * 4))
        started = time.perf_counter()
        await request(batcher, 0)
        waited = time.perf_counter() - started
        await slow
        return waited

    waited = asyncio.run(scenario())
    assert model.batches == [1, 1]
    assert DECODE_WAIT_S * 0.8 <= waited < DECODE_WAIT_S * 3


@pytest.mark.parametrize("setting", [True, False])
def test_a_model_loaded_on_the_cpu_turns_them_on_unless_the_setting_says_no(setting, monkeypatch):
    turns = CpuTurns()
    monkeypatch.setattr(variant_set, "turns", turns)
    variants = VariantSet(
        Settings(batching={"calibrate": False, "cpu_turns": setting}), lambda *_: None
    )
    assert variants.load() is None
    assert turns.enabled is setting
