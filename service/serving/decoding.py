"""The decode threads: a request's images decoded off the event loop, in parallel.

Each image is decoded once and turned into one tensor per model that will see it (the serving
variant first, then each shadow mirroring the request), since their preprocessing may differ.
Pillow releases the GIL while it decodes, so two threads keep the event loop free.

The pixel statistics that drift detection compares are computed for a random share of the
images (drift.statistics_share): a drift test needs a sample, not every image, and they cost
more CPU than decoding a small photo.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .. import metrics
from ..errors import ServiceError
from . import thread_names
from .preprocessing import DecodedInfo, Preprocessor
from .thread_names import name_this_thread

Decoded = tuple[DecodedInfo, list[torch.Tensor]]  # one tensor per preprocessor, in order


class DecodePool:
    def __init__(self, threads: int = 2, statistics_share: float = 1.0):
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="decode",
            initializer=name_this_thread,
            initargs=(thread_names.DECODE,),
        )
        self.statistics_share = statistics_share

    async def decode(self, images: list[bytes], preprocessors: list[Preprocessor]) -> list[Decoded]:
        """Every image, in input order; the first bad one raises its client error, naming its
        position when the request had several."""
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(
                loop.run_in_executor(self._pool, self._decode_one, data, preprocessors)
                for data in images
            ),
            return_exceptions=True,
        )
        for index, item in enumerate(decoded):
            if isinstance(item, ServiceError):
                if len(images) > 1:
                    item.message = f"images[{index}]: {item.message}"
                raise item
            if isinstance(item, BaseException):
                raise item
        return decoded

    def _decode_one(self, data: bytes, preprocessors: list[Preprocessor]) -> Decoded:
        started = time.perf_counter()
        statistics = self.statistics_share >= 1 or random.random() < self.statistics_share
        image, info = preprocessors[0].decode(data, statistics)
        tensors = [preprocessor.to_tensor(image) for preprocessor in preprocessors]
        metrics.PREPROCESS_SECONDS.observe(time.perf_counter() - started)
        return info, tensors

    def close(self) -> None:
        self._pool.shutdown(wait=True)
