"""The request guard admits an inference request on the batcher of the variant that will answer
it, chosen once (by the client key when there is one), and hands that choice to the route; a
full queue is refused with 503 before the body is read. The pipeline is a stand-in: this tests
the guard's logic only (the real service: tests/integration)."""

import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from service.api.guards import RequestGuard, install_error_handlers
from service.errors import ServiceError


@dataclass
class Chosen:
    name: str


@dataclass
class StandInPipeline:
    full: set[str] = field(default_factory=set)
    asked: list = field(default_factory=list)

    def admit(self, images: int, client_key: str | None = None) -> Chosen:
        self.asked.append((images, client_key))
        variant = "candidate" if client_key == "bob" else "main"
        if variant in self.full:
            raise ServiceError("overloaded", f"{variant} is full", retry_after=1)
        return Chosen(variant)


def guarded_app(
    pipeline: StandInPipeline, client_key_header: str = "X-Client-Key", refusal_delay_s: float = 0
) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        pipeline_getter=lambda: pipeline,
        max_body_bytes={"/classify": 1000, "/classify_batch": 1000},
        client_key_header=client_key_header,
        refusal_delay_s=refusal_delay_s,
    )

    @app.post("/classify")
    async def classify(request: Request) -> dict:
        await request.body()
        return {"variant": getattr(request.state, "variant", None)}

    return app


def test_the_route_gets_the_variant_the_guard_admitted():
    pipeline = StandInPipeline()
    client = TestClient(guarded_app(pipeline))
    answer = client.post("/classify", content=b"x" * 10, headers={"X-Client-Key": "bob"})
    assert answer.json() == {"variant": "candidate"}
    assert pipeline.asked == [(1, "bob")]
    assert client.post("/classify", content=b"x" * 10).json() == {"variant": "main"}


def test_no_client_key_is_read_unless_a_header_is_trusted():
    """The default: a caller cannot pick its variant by trying keys."""
    pipeline = StandInPipeline()
    client = TestClient(guarded_app(pipeline, client_key_header=""))
    answer = client.post("/classify", content=b"x" * 10, headers={"X-Client-Key": "bob"})
    assert answer.json() == {"variant": "main"}
    assert pipeline.asked == [(1, None)]


def test_a_full_variant_is_refused_at_once_and_the_other_still_serves():
    pipeline = StandInPipeline(full={"candidate"})
    client = TestClient(guarded_app(pipeline))
    refused = client.post("/classify", content=b"x" * 10, headers={"X-Client-Key": "bob"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert client.post("/classify", content=b"x" * 10).json() == {"variant": "main"}


def test_an_overload_refusal_is_held_so_a_retry_storm_cannot_spin_the_server():
    """Issue 16: clients that retry at once on a 503 made refusals as fast as the event loop
    could answer them, and it had no time left for the model. Held, they wait; other refusals
    (a body over the limit) are not."""
    pipeline = StandInPipeline(full={"main"})
    held = TestClient(guarded_app(pipeline, refusal_delay_s=0.3))
    started = time.perf_counter()
    refused = held.post("/classify", content=b"x" * 10)
    assert time.perf_counter() - started >= 0.3
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    started = time.perf_counter()
    assert TestClient(guarded_app(pipeline)).post("/classify", content=b"x").status_code == 503
    assert time.perf_counter() - started < 0.3
    pipeline.full.clear()
    started = time.perf_counter()
    too_big = held.post("/classify", content=b"x" * 2000)
    assert too_big.status_code == 413 and time.perf_counter() - started < 0.3
