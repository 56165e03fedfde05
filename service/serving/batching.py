"""Adaptive batching: concurrent requests share one forward pass, with a bounded queue.

While the model is busy, arriving images queue up; as soon as it is free, it takes everything
waiting (up to max_batch_size) as the next batch. So a lone request runs at once as a batch of
1 (no waiting window to pay), and under load the batch grows with the queue: the batch size
adapts to the arrival rate by itself.

The queue is bounded twice: by count (max_queue_size images waiting or running) and by time
(the expected wait, from a running estimate of the per-image cost, must stay within
max_latency_ms). Beyond either bound a request is refused at once with 503 and Retry-After, so
overload never turns into hangs or timeouts, and every admitted request is answered.

The estimate is the recent batches' seconds over their images (both sums decayed by batch),
not an average of each batch's seconds an image: the queue drains at the first rate. Under a
closed loop the batches can alternate, 29 images then 3 (the 3 that arrived while the 29 ran,
then the 29 answered meanwhile), and the small batch costs four times as much an image while
the stack takes in the next burst. Averaged by batch, those small batches counted as much as
the large ones and lifted the estimate to 50-75 ms an image where the queue drained at 19:
32 queued images then looked like more than 2 s, and were refused.

A request's images count from the moment it is admitted, not from the moment their tensors
arrive: `reserve` holds their places while they decode (decoding a large batch takes longer
than the model does), and `submit(..., reserved=True)` turns the places into queue entries
without asking again, so a request admitted before its decode is never refused after it.
Images the decode pool sends to its heavy lane are the exception: they are submitted the same
way but hold no place while they decode (decoding.py says why).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import ServiceError
from .model import Pixels
from .model_thread import model_executor


def choose_batch_cap(seconds_per_image: dict[int, float], tolerance: float = 0.05) -> int:
    """The largest batch size whose cost per image is within `tolerance` of the cheapest.

    As fast as the best, and it drains a burst in fewer passes; the tolerance keeps timing
    noise from pinning the cap to 1 when sizes are in fact equally fast. 5%, not 10%: with the
    fastest of interleaved rounds (Classifier.profile_batch_sizes) the noise is smaller, and at
    10% two start-ups in three on the 2-core host capped at 8, 6-9% behind batch 4 there and
    20-50% behind it on real images in-process.
    """
    best = min(seconds_per_image.values())
    return max(size for size, cost in seconds_per_image.items() if cost <= best * (1 + tolerance))


@dataclass
class _Job:
    image: Pixels
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batch_size: int
    inference_seconds: float
    queue_seconds: list[float]


class AdaptiveBatcher:
    def __init__(
        self,
        run: Callable[[list[Pixels]], list[torch.Tensor | Exception]],
        *,
        max_batch_size: int,
        max_queue_size: int,
        max_latency_ms: float,
        enabled: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        self._run_batch = run  # on the model thread: a probability row or an error per image
        self.max_batch_size = max_batch_size if enabled else 1
        self.max_queue_size = max_queue_size
        self.max_latency_s = max_latency_ms / 1000.0
        self._on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._running = 0  # images in the batch on the model right now
        self._reserved = 0  # images admitted and still decoding
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread runs every model (model_thread.py says why): batches run one after
        # another, never interleaved.
        self._executor = model_executor()
        self._recent_seconds = self._recent_images = 0.0  # the batches', decayed by batch

    @property
    def seconds_per_image(self) -> float | None:
        """The running estimate of the cost an image, for admission; None before any."""
        if not self._recent_images:
            return None
        return self._recent_seconds / self._recent_images

    @property
    def pending(self) -> int:
        return len(self._queue) + self._running + self._reserved

    @contextmanager
    def reserve(self, count: int) -> Iterator[None]:
        """Admit `count` images (or raise 503) and count them while the caller decodes them."""
        self.check_admission(count)
        self._reserved += count
        try:
            yield
        finally:
            self._reserved -= count

    def calibrate(self, seconds_per_image: float) -> None:
        """Seed the cost estimate (from warm-up) so admission is right from the first request."""
        self._recent_seconds, self._recent_images = seconds_per_image, 1.0

    def expected_wait(self, extra: int = 1) -> float:
        seconds_per_image = self.seconds_per_image
        if seconds_per_image is None:
            return 0.0
        return (self.pending + extra) * seconds_per_image

    def check_admission(self, count: int = 1) -> None:
        """Raise 503 if `count` more images would overflow the queue; cheap, call it early."""
        if self.pending + count > self.max_queue_size or (
            self.pending and self.expected_wait(count) > self.max_latency_s
        ):
            retry_after = max(1, math.ceil(self.expected_wait(0)))
            raise ServiceError(
                "overloaded",
                f"server is at capacity ({self.pending} images queued); retry in {retry_after} s",
                retry_after=retry_after,
            )

    async def submit(self, images: list[Pixels], reserved: bool = False) -> list[torch.Tensor]:
        """Queue images for inference and wait for their probability rows, in order; admitted
        here unless `reserved` (their places were held by `reserve` until now). An image that
        failed in its batch (a JPEG broken when decoded there) raises its error."""
        if not reserved:
            self.check_admission(len(images))
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        jobs = [_Job(image, loop.create_future()) for image in images]
        self._queue.extend(jobs)
        self._wakeup.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch: list[_Job] = []
            while self._queue and len(batch) < self.max_batch_size:
                job = self._queue.popleft()
                if not job.future.done():  # the client went away: skip its image
                    batch.append(job)
            if not batch:
                continue
            self._running = len(batch)
            started = time.perf_counter()
            try:
                images = [job.image for job in batch]
                rows = await loop.run_in_executor(self._executor, self._run_batch, images)
            except Exception as exc:  # noqa: BLE001 - delivered to each waiting request
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._running = 0
            elapsed = time.perf_counter() - started
            self._update_estimate(elapsed, len(batch))
            for job, row in zip(batch, rows, strict=True):
                if job.future.done():
                    continue
                if isinstance(row, Exception):
                    job.future.set_exception(row)
                else:
                    job.future.set_result(row)
            if self._on_batch:
                self._on_batch(
                    BatchStats(len(batch), elapsed, [started - job.enqueued for job in batch])
                )

    def _update_estimate(self, seconds: float, images: int) -> None:
        """Fold one batch into the estimate: each older batch counts 0.8 as much as the one
        after it, and every image counts alike (the module's docstring says why)."""
        self._recent_seconds = 0.8 * self._recent_seconds + seconds
        self._recent_images = 0.8 * self._recent_images + images

    async def close(self) -> None:
        # The model thread is the process's, shared by every batcher: it is left running.
        if self._worker is not None:
            self._worker.cancel()
