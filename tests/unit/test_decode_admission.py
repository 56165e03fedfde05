"""The decode pool counts what a decode will cost before paying it: estimates from the header,
two lanes, admission against each lane's backlog, and what it learns from its own decodes."""

from __future__ import annotations

import asyncio
import io
import os
import threading

import pytest
from PIL import Image
from support import photo, png16

from service.errors import ServiceError
from service.serving import decoding
from service.serving.decoding import DecodePool
from service.serving.model import LITE_MEAN, LITE_STD
from service.serving.preprocessing import Preprocessor
from service.serving.statistics_draw import StatisticsDraw

PREPROCESSOR = Preprocessor(224, 256, LITE_MEAN, LITE_STD, 40_000_000, 10_000_000)


def png(width: int, height: int) -> bytes:
    """8-bit RGB of one colour: about 130 KB on the wire at 40 MP."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def pool():
    pool = DecodePool(light_threads=2, heavy_decode_ms=100.0, max_pixels=40_000_000)
    yield pool
    pool.close()


def test_the_estimate_comes_from_the_header_before_any_pixel_is_decoded(pool):
    bomb, phone = pool.open([png(8000, 5000), photo("chelsea.png")], PREPROCESSOR)
    assert bomb.image._im is None  # header read, nothing decoded
    assert (bomb.info.width, bomb.info.height, bomb.info.format) == (8000, 5000, "PNG")
    assert pool.estimate(bomb) > 50 * pool.estimate(phone)


def test_more_bits_per_sample_cost_more_than_the_same_pixels_at_eight():
    pool = DecodePool()
    deep, shallow = pool.open([png16(2000, 2000), png(2000, 2000)], PREPROCESSOR)
    assert deep.high_depth and not shallow.high_depth
    assert pool.estimate(deep) == pytest.approx(2 * pool.estimate(shallow))
    pool.close()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_counted_so():
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 80, 70)).save(buffer, "JPEG")
    (opened,) = DecodePool().open([buffer.getvalue()], PREPROCESSOR)
    assert (opened.info.width, opened.info.height) == (4000, 3000)  # what the client sent
    assert opened.decoded_pixels == 500 * 375  # libjpeg's 1/8 scale still covers 256


def test_heavy_images_go_to_their_own_lane_and_photos_stay_light(pool):
    admitted = pool.admit(pool.open([png(8000, 5000), photo("astronaut.png")], PREPROCESSOR), 2.0)
    assert [image.heavy for image in admitted] == [True, False]
    assert pool.heavy.backlog_s > 0 and pool.light.backlog_s > 0


def test_images_over_a_quarter_of_max_pixels_are_heavy_however_fast_their_format(pool):
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 80, 70)).save(buffer, "BMP")  # 12 MP, cheap per pixel
    small = DecodePool(max_pixels=40_000_000 // 2)
    try:
        (opened,) = small.open([buffer.getvalue()], PREPROCESSOR)
        assert small.estimate(opened) < small.heavy_s  # not heavy by time...
        assert small.lane_for(opened, small.estimate(opened)) is small.heavy  # ...by memory
    finally:
        small.close()


def test_a_busy_lane_refuses_what_would_wait_beyond_the_latency_bound(pool):
    heavy = pool.open([png(8000, 5000)], PREPROCESSOR)
    pool.admit(heavy, max_latency_s=2.0)  # an idle lane takes any request
    waiting = pool.heavy.backlog_s
    burst = pool.open([png(8000, 5000)] * 8, PREPROCESSOR)
    with pytest.raises(ServiceError) as refused:
        pool.admit(burst, max_latency_s=2.0)
    assert refused.value.code == "overloaded" and refused.value.status == 503
    assert refused.value.retry_after >= 1
    assert "heavy images waiting to decode" in refused.value.message
    assert pool.heavy.backlog_s == waiting  # a refusal holds nothing
    # Photos do not queue behind the heavy lane: admitted while it is full.
    photos = pool.admit(pool.open([photo("chelsea.png")] * 4, PREPROCESSOR), max_latency_s=2.0)
    assert not any(image.heavy for image in photos)


def test_an_idle_lane_takes_a_request_larger_than_the_bound(pool):
    burst = pool.open([png(8000, 5000)] * 8, PREPROCESSOR)
    assert sum(pool.estimate(image) for image in burst) > 2.0
    assert len(pool.admit(burst, max_latency_s=2.0)) == 8


def test_decoding_releases_the_backlog_and_teaches_the_format_its_cost(pool, monkeypatch):
    # Seed PNG as 10 times cheaper than it is: what the decodes measure pulls it back up.
    monkeypatch.setitem(decoding.SECONDS_PER_MEGAPIXEL, "PNG", 0.0015)
    images = pool.open([png(3000, 2000)] * 4, PREPROCESSOR)
    admitted = pool.admit(images, max_latency_s=2.0)
    decoded = asyncio.run(pool.decode(admitted, [PREPROCESSOR]))
    assert [tuple(tensors[0].shape) for _, tensors in decoded] == [(3, 224, 224)] * 4
    assert pool.light.backlog_s == pool.heavy.backlog_s == 0.0
    assert pool.correction["PNG"] > 1.3
    assert pool.correction["JPEG"] == 1.0  # only the format that was measured
    # The request keeps its opened images until it is answered: their pixels must not stay.
    for held in admitted:
        with pytest.raises(ValueError, match="closed image"):
            held.image.image.getpixel((0, 0))


def test_a_failed_decode_releases_its_place_and_names_the_image(pool):
    cut = photo("chelsea.png")[:20_000]
    admitted = pool.admit(pool.open([photo("chelsea.png"), cut], PREPROCESSOR), 2.0)
    with pytest.raises(ServiceError) as refused:
        asyncio.run(pool.decode(admitted, [PREPROCESSOR]))
    assert refused.value.code == "truncated_image"
    assert refused.value.message.startswith("images[1]: ")
    assert pool.light.backlog_s == 0.0


def test_a_decode_cancelled_before_it_starts_releases_its_place(pool):
    blocker, release = threading.Event(), threading.Event()

    def hold_the_thread():
        blocker.set()
        release.wait(10)

    pool.heavy.executor.submit(hold_the_thread)
    blocker.wait(10)
    admitted = pool.admit(pool.open([png(8000, 5000)], PREPROCESSOR), max_latency_s=2.0)

    async def client_goes_away():
        task = asyncio.ensure_future(pool.decode(admitted, [PREPROCESSOR]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(client_goes_away())
    release.set()
    assert pool.heavy.backlog_s == 0.0


def test_a_bad_header_is_refused_before_anything_is_admitted(pool):
    with pytest.raises(ServiceError) as refused:
        pool.open([photo("chelsea.png"), b"not an image"], PREPROCESSOR)
    assert refused.value.code == "not_an_image"
    assert refused.value.message.startswith("images[1]: ")
    assert pool.light.backlog_s == pool.heavy.backlog_s == 0.0


def test_the_heavy_lane_decodes_at_the_lowest_priority_and_the_light_lane_at_the_workers():
    """A heavy decode must not take a core from the model's threads (decoding.HEAVY_LANE_NICE)."""

    def nice_of_this_thread():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    pool = DecodePool()
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert pool.heavy.executor.submit(nice_of_this_thread).result() == 19
        assert pool.light.executor.submit(nice_of_this_thread).result() == own
    finally:
        pool.close()


def test_pixel_statistics_are_drawn_by_share_and_then_capped_per_second():
    now = [100.0]
    draw = StatisticsDraw(share=1.0, per_second=10, clock=lambda: now[0])
    assert sum(draw.draw() for _ in range(100)) == 10  # a second's worth at most
    now[0] += 0.5
    assert sum(draw.draw() for _ in range(100)) == 5
    now[0] += 60  # idle for a minute: still one second's worth, no more
    assert sum(draw.draw() for _ in range(100)) == 10
    slow = StatisticsDraw(share=1.0, per_second=0.5, clock=lambda: now[0])
    assert sum(slow.draw() for _ in range(10)) == 1  # below one a second: still one
    now[0] += 2
    assert sum(slow.draw() for _ in range(10)) == 1
    assert sum(StatisticsDraw(share=1.0).draw() for _ in range(100)) == 100


def test_admission_draws_the_statistics_within_the_pools_rate():
    pool = DecodePool(statistics_share=1.0, statistics_per_second=10, clock=lambda: 100.0)
    admitted = pool.admit(pool.open([png(32, 24)] * 30, PREPROCESSOR), 60.0)
    for held in admitted:  # not decoded: give back what admission held
        held.lane.release(held.estimate_s)
    pool.close()
    assert sum(held.statistics for held in admitted) == 10  # a second's worth, then none
