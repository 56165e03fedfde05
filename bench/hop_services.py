"""The two services bench/hop.py measures: a front and the model service it reaches through
`bentoml.depends`, the composition issue 14 (item 2) weighs against worker processes.

    bentoml serve bench.hop_services:Front      # starts Model too, in a process of its own

The front answers three routes, each for `{"images": N}`:
- /direct: the answer made in the front itself (what a worker process does: no hop);
- /jpeg: N JPEG bytes sent to the model service (the split with nvJPEG in the model process);
- /pixels: N decoded 3x224x224 uint8 images sent to it (the split with decoding in the front).
The model service does no work: a hop's cost is all that is left to measure. The images are
made once, at start, so that neither an upload's parsing nor a decode is counted; both cost the
same with or without the hop.

A dependency on the same host is called over a Unix socket, its arguments pickled (protocol 5,
buffers out of band): BentoML's own RemoteProxy, as a real split would use.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from pydantic import BaseModel

PIXELS = (3, 224, 224)
TOP_K = 5
FRONT_WORKERS = int(os.environ.get("HOP_FRONT_WORKERS", "1"))


class Answers(BaseModel):
    """A top-5 per image, the size of what the model would return. A model, not a bare list:
    BentoML 1.4 builds a bare type's JSON schema again for every response it sends (to pick its
    media type; `IOMixin.mime_type`), which took 30% of the model process under a profile."""

    top_k: list[list[int]]


def answers(count: int) -> Answers:
    return Answers(top_k=[list(range(TOP_K)) for _ in range(count)])


# As the service does (service/service.py): no tracing spans on the request path.
UNTRACED = {"excluded_urls": ["/direct", "/jpeg", "/pixels"]}


@bentoml.service(workers=1, tracing=UNTRACED)
class Model:
    @bentoml.api
    async def jpeg(self, images: list[bytes]) -> Answers:
        return answers(len(images))

    @bentoml.api
    async def pixels(self, batch: np.ndarray) -> Answers:
        return answers(len(batch))


@bentoml.service(workers=FRONT_WORKERS, tracing=UNTRACED)
class Front:
    model = bentoml.depends(Model)

    def __init__(self) -> None:
        from support import jpeg_of  # tests/support.py; bench/hop.py puts it on the path

        photo = jpeg_of("chelsea.png", (320, 240), quality=90)
        # Distinct objects: pickle would send one object listed 32 times only once.
        self.photos = [bytes(bytearray(photo)) for _ in range(32)]
        self.decoded = np.random.default_rng(0).integers(0, 256, (32, *PIXELS), dtype=np.uint8)

    @bentoml.api
    async def direct(self, images: int = 1) -> Answers:
        return answers(images)

    @bentoml.api(route="/jpeg")
    async def send_jpeg(self, images: int = 1) -> Answers:
        return await self.model.to_async.jpeg(self.photos[:images])

    @bentoml.api(route="/pixels")
    async def send_pixels(self, images: int = 1) -> Answers:
        return await self.model.to_async.pixels(self.decoded[:images])
