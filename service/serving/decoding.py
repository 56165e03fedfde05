"""The decode threads: a request's images decoded off the event loop, in parallel, with what
each will cost known and admitted before it is paid.

Each image is decoded once and turned into one tensor per model that will see it (the serving
variant first, then each shadow mirroring the request), since their preprocessing may differ.
Pillow releases the GIL while it decodes, so the threads keep the event loop free.

What a decode costs is read from the header first (`open`): pixels, bit depth and format. A
89 KB PNG can hold 40 megapixels and take half a second and half a gigabyte to decode, where a
phone photo's JPEG takes a few milliseconds; counting images alone, a burst of the first kind
would sit on every decode thread while ordinary requests wait behind it. So:

- Each image gets an estimate in seconds: a per-format cost per megapixel (measured, below) times
  its pixels, doubled above 8 bits per sample, times a correction each format learns from this
  worker's own decodes (measured / estimated), so a faster host's estimates follow its speed.
- Images are decoded in two lanes. `heavy` (one thread) takes those estimated above
  `limits.heavy_decode_ms` or larger than a quarter of `limits.max_pixels`; `light` (two
  threads) takes the rest. A burst of heavy images queues behind itself and never occupies the
  threads that ordinary photos need; its thread runs at the lowest priority, so it never takes a
  core the model's threads need either (HEAVY_LANE_NICE).
- Each lane keeps its backlog: the estimated seconds of the images admitted to it and not yet
  decoded. A request is refused with 503 and Retry-After (`admit`) when a lane it needs is busy
  and its images would wait there longer than `batching.max_latency_ms`; an idle lane takes any
  request, so every request that fits the limits can be served.
- Memory is bounded by the lanes, not by the traffic: one heavy image (at most max_pixels) and
  two light ones (at most a quarter of it each) are decoded at once per worker.

JPEGs the model's device decodes with their batch (settings `jpeg_decode`, device_decoding.py)
take neither lane: `admit` sends them to the batcher as they are, their header read and nothing
more paid on the CPU.

Heavy images do not hold places in the batcher's queue while they decode (the pipeline reserves
places for the light ones only): they reach the model one lane-slow decode at a time, and
holding their places for seconds would refuse every other client meanwhile.

The pixel statistics that drift detection compares are computed for a sample of the images,
drawn at admission (statistics_draw.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .. import metrics
from ..errors import ServiceError
from . import thread_names
from .device_decoding import EncodedJpeg, decodable_on_device
from .preprocessing import DecodedInfo, OpenedImage, Preprocessor
from .statistics_draw import StatisticsDraw
from .thread_names import name_this_thread

log = logging.getLogger(__name__)

# One input per preprocessor, in order: its pixels, or the JPEG each model decodes itself.
Decoded = tuple[DecodedInfo, list[torch.Tensor | EncodedJpeg]]

# Seconds per megapixel to decode an 8-bit image to RGB, one core of a 2-core x86 machine
# (2026-12-03): JPEG at the reduced scale the preprocessing asks libjpeg for, PNG of photos and
# of flat colour alike, TIFF as compressed (the header does not say how costly its codec is).
SECONDS_PER_MEGAPIXEL = {
    "JPEG": 0.0025,
    "PNG": 0.015,
    "WEBP": 0.018,
    "TIFF": 0.015,
    "GIF": 0.006,
    "BMP": 0.004,
}
HIGH_DEPTH_FACTOR = 2.0  # 16 or 32 bits per sample: twice the bytes to inflate and convert
LEARNING_RATE = 0.1  # weight of one decode in a format's learned correction
CORRECTION_BOUNDS = (0.1, 10.0)  # one freak measurement cannot make a format free or banned


# The heavy lane's thread runs at this nice value (the light lane's and the model's at the
# worker's own). Torch's forward pass is hundreds of short parallel regions whose threads wait
# for each other at every barrier (model_thread.py); a heavy decode taking one of a small host's
# cores at equal priority made each barrier wait for the scheduler, and the photos beside a
# burst of 40-megapixel PNGs got a fifth of the answers. At nice 19 the burst decodes in the
# cores' spare time: its price, not the other clients'.
HEAVY_LANE_NICE = 19


def _start_decode_thread(nice: int) -> None:
    name_this_thread(thread_names.DECODE)
    if nice:
        try:  # Linux: the thread's own nice value, its id in place of a process's
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:  # a sandbox that forbids it: decode at the worker's priority
            log.warning("decode thread: could not set nice %d: %s", nice, exc)


class _Lane:
    """Threads that decode, and the estimated seconds of the images admitted to them."""

    def __init__(self, name: str, threads: int, nice: int = 0):
        self.name, self.threads = name, threads
        self.executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix=f"decode-{name}",
            initializer=_start_decode_thread,
            initargs=(nice,),
        )
        self.backlog_s = 0.0
        self._lock = threading.Lock()  # released from the decode threads' done callbacks

    def wait_s(self, extra_s: float = 0.0) -> float:
        """How long the last of `extra_s` more seconds of images would wait to be decoded."""
        return (self.backlog_s + extra_s) / self.threads

    def hold(self, seconds: float) -> None:
        with self._lock:
            self.backlog_s += seconds
            metrics.DECODE_BACKLOG_SECONDS.labels(self.name).set(self.backlog_s)

    def release(self, seconds: float) -> None:
        with self._lock:
            # max(): floating-point residue must not leave an idle lane looking busy.
            self.backlog_s = max(0.0, self.backlog_s - seconds)
            if self.backlog_s < 1e-9:
                self.backlog_s = 0.0
            metrics.DECODE_BACKLOG_SECONDS.labels(self.name).set(self.backlog_s)


@dataclass(frozen=True)
class Admitted:
    """An image admitted to a lane, with the estimate it holds there until decoded, or passed
    on to the model's device to decode (`on_device`, lane None)."""

    image: OpenedImage
    lane: _Lane | None
    estimate_s: float
    statistics: bool  # drawn for the pixel statistics (drift.statistics_share)
    on_device: EncodedJpeg | None = None

    @property
    def heavy(self) -> bool:
        return self.lane is not None and self.lane.name == "heavy"


class DecodePool:
    def __init__(
        self,
        light_threads: int = 2,
        statistics_share: float = 1.0,
        heavy_decode_ms: float = 100.0,
        max_pixels: int = 40_000_000,
        statistics_per_second: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.light = _Lane("light", light_threads)
        self.heavy = _Lane("heavy", 1, nice=HEAVY_LANE_NICE)
        self.statistics = StatisticsDraw(statistics_share, statistics_per_second, clock)
        self.heavy_s = heavy_decode_ms / 1000.0
        self.heavy_pixels = max_pixels // 4
        self.correction = dict.fromkeys(SECONDS_PER_MEGAPIXEL, 1.0)

    # -- before decoding: what it will cost -----------------------------------------------
    def open(self, images: list[bytes], preprocessor: Preprocessor) -> list[OpenedImage]:
        """Every image's header, read and checked; the first bad one raises its client error,
        naming its position when the request had several."""
        opened = []
        for index, data in enumerate(images):
            try:
                opened.append(preprocessor.open(data))
            except ServiceError as error:
                if len(images) > 1:
                    error.about_image(index)
                raise
        return opened

    def base_estimate(self, image: OpenedImage) -> float:
        """Seconds to decode, from the header and the measured per-format cost alone."""
        seconds = SECONDS_PER_MEGAPIXEL[image.info.format] * image.info.width * image.info.height
        return seconds / 1e6 * (HIGH_DEPTH_FACTOR if image.high_depth else 1.0)

    def estimate(self, image: OpenedImage) -> float:
        """Seconds to decode on this worker: the base estimate, corrected as learned."""
        return self.base_estimate(image) * self.correction[image.info.format]

    def lane_for(self, image: OpenedImage, estimate: float) -> _Lane:
        heavy = estimate > self.heavy_s or image.decoded_pixels > self.heavy_pixels
        return self.heavy if heavy else self.light

    def admit(
        self, images: list[OpenedImage], max_latency_s: float, jpegs_on_device: bool = False
    ) -> list[Admitted]:
        """Hold the request's place in the lanes, or raise 503 when a busy lane it needs would
        make it wait longer than max_latency_s. The caller must `decode` what this returns:
        decoding releases what is held here. With `jpegs_on_device`, the light JPEGs the
        device can decode (and not drawn for statistics) are passed on instead."""
        estimates = [self.estimate(image) for image in images]
        lanes: list[_Lane | None] = [
            self.lane_for(image, cost) for image, cost in zip(images, estimates, strict=True)
        ]
        statistics = [self.statistics.draw() for _ in images]
        on_device: list[EncodedJpeg | None] = [None] * len(images)
        for index, image in enumerate(images):
            # Light on the CPU is not enough: Pillow decodes a large JPEG at a reduced scale,
            # the device in full, so its pixels bound what one image holds of device memory.
            small = image.info.width * image.info.height <= self.heavy_pixels
            if jpegs_on_device and lanes[index] is self.light and small and not statistics[index]:
                position = index if len(images) > 1 else None
                on_device[index] = decodable_on_device(image, position)
                if on_device[index] is not None:
                    lanes[index], estimates[index] = None, 0.0
        for lane in {*lanes} - {None}:
            extra = sum(cost for cost, used in zip(estimates, lanes, strict=True) if used is lane)
            if lane.backlog_s > 0 and lane.wait_s(extra) > max_latency_s:
                retry_after = max(1, math.ceil(lane.wait_s()))
                raise ServiceError(
                    "overloaded",
                    f"decoding is at capacity ({lane.wait_s():.1f} s of {lane.name} images "
                    f"waiting to decode); retry in {retry_after} s",
                    retry_after=retry_after,
                )
        for lane, cost in zip(lanes, estimates, strict=True):
            if lane is not None:
                lane.hold(cost)
        return [
            Admitted(*held)
            for held in zip(images, lanes, estimates, statistics, on_device, strict=True)
        ]

    # -- decoding ---------------------------------------------------------------------------
    async def decode(
        self, images: list[Admitted], preprocessors: list[Preprocessor]
    ) -> list[Decoded]:
        """Every admitted image, in input order; the first that fails to decode raises its
        client error, naming its position when the request had several."""
        futures = []
        for held in images:
            if held.on_device is not None:
                held.image.image.close()  # the header was all it was opened for
                futures.append(_done((held.image.info, [held.on_device] * len(preprocessors))))
                continue
            future: Future = held.lane.executor.submit(
                self._decode_one, held.image, preprocessors, held.statistics
            )
            # Released when decoded, failed, or cancelled before it started (a client gone).
            future.add_done_callback(lambda _, lane=held.lane, s=held.estimate_s: lane.release(s))
            futures.append(asyncio.wrap_future(future))
        decoded = await asyncio.gather(*futures, return_exceptions=True)
        for index, item in enumerate(decoded):
            if isinstance(item, ServiceError):
                raise item.about_image(index) if len(images) > 1 else item
            if isinstance(item, BaseException):
                raise item
        return decoded

    def _decode_one(
        self, opened: OpenedImage, preprocessors: list[Preprocessor], statistics: bool
    ) -> Decoded:
        started = time.perf_counter()
        try:
            image, info = preprocessors[0].decode(opened, statistics)
            tensors = [preprocessor.to_tensor(image) for preprocessor in preprocessors]
        finally:
            # The request keeps its opened images until it is answered: without this, each
            # would keep its decoded pixels (120 MB at 40 MP) as long.
            opened.image.close()
        elapsed = time.perf_counter() - started
        metrics.PREPROCESS_SECONDS.observe(elapsed)
        self._learn(opened, elapsed)
        return info, tensors

    def _learn(self, image: OpenedImage, seconds: float) -> None:
        """Move the format's correction toward what this decode measured. Tiny images are
        left out: their time is overhead, not a cost per pixel."""
        base = self.base_estimate(image)
        if base < 0.002:
            return
        low, high = CORRECTION_BOUNDS
        fmt = image.info.format
        learned = (1 - LEARNING_RATE) * self.correction[fmt] + LEARNING_RATE * seconds / base
        self.correction[fmt] = min(high, max(low, learned))

    def close(self) -> None:
        self.light.executor.shutdown(wait=True)
        self.heavy.executor.shutdown(wait=True)


def _done(result: Decoded) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future
