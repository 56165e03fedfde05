"""bento-fleet's image classifier as a BentoML service.

    bentoml serve                 # from the repository root (reads bentofile.yaml)

BentoML provides the server, workers, /healthz /livez /readyz /metrics and the OpenAPI page;
the routes below are a FastAPI app mounted on it, so that uploads are parsed, limited and
answered exactly as documented. The work is in the packages beside this file: api/ (request
guards, error mapping, feedback), serving/ (the request path: decoding, variants, batching,
the model), modelops/ (drift, A/B, reports, the periodic jobs) and store/ (the database);
settings, errors and metrics are shared by all; web/ is the page at /.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import bentoml
from fastapi import FastAPI, File, Form, Request, Response, UploadFile

from .api.auth import caller
from .api.feedback import FeedbackIn, record_feedback
from .api.guards import MULTIPART_OVERHEAD, RequestGuard, install_error_handlers, request_id_of
from .errors import ServiceError
from .modelops.jobs import ModelOps
from .serving.live_stats import LIVE
from .serving.pipeline import ClassificationPipeline
from .settings import get_settings
from .web import router as web_page

settings = get_settings()
limits = settings.limits

app = FastAPI(title="bento-fleet image classifier", version="1")
install_error_handlers(app)
app.include_router(web_page)
app.add_middleware(
    RequestGuard,
    pipeline_getter=lambda: app.state.pipeline,
    client_key_header=settings.experiment.client_key_header,
    max_body_bytes={
        "/classify": limits.max_upload_bytes + MULTIPART_OVERHEAD,
        "/classify_batch": limits.max_batch_images * limits.max_upload_bytes + MULTIPART_OVERHEAD,
    },
)

ImageFile = Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF, BMP or TIFF")]
TopK = Annotated[int, Form(description=f"How many classes to return, 1-{limits.max_top_k}")]


async def read_upload(upload: UploadFile, field: str) -> bytes:
    if upload.size is not None and upload.size > limits.max_upload_bytes:
        raise ServiceError(
            "payload_too_large",
            f"{field} is {upload.size} bytes; the limit is {limits.max_upload_bytes}",
        )
    return await upload.read()


def check_top_k(top_k: int) -> int:
    if not 1 <= top_k <= limits.max_top_k:
        raise ServiceError("invalid_top_k", f"top_k must be 1-{limits.max_top_k}, got {top_k}")
    return top_k


@bentoml.service(
    name="bento-fleet-classifier",
    workers=settings.workers,
    traffic={"timeout": 60},
    # The ASGI tracing middleware opens a span per body chunk of every upload: a fifth of the
    # event loop's time under load. Trace the inference routes only when you export traces.
    tracing={"excluded_urls": ["/classify", "/classify_batch"]},
    resources={"gpu": 1} if settings.device.startswith("cuda") else None,
)
@bentoml.asgi_app(app, path="/")
class ImageClassifier:
    """The worker's lifecycle: load the models, answer readiness, flush the log on shutdown.

    The routes are plain functions of the app below, not methods: BentoML hands a method its
    `self` through a synchronous FastAPI dependency, which costs every request a round trip
    through a worker thread. They reach the pipeline through `app.state`."""

    def __init__(self) -> None:
        self.pipeline = ClassificationPipeline(settings)
        app.state.pipeline = self.pipeline
        self.pipeline.start_loading()
        self.ops = ModelOps(
            settings, self.pipeline.database, ready=lambda: self.pipeline.prediction_log.migrated
        )
        app.state.ops = self.ops
        self.ops.start()

    def __is_ready__(self) -> bool:
        return self.pipeline.ready

    @bentoml.on_shutdown
    async def flush_prediction_log(self) -> None:
        self.ops.stop()
        await self.pipeline.close()


@app.post("/classify", summary="Classify one image")
async def classify(request: Request, response: Response, image: ImageFile, top_k: TopK = 5) -> dict:
    started, request_id = time.perf_counter(), request_id_of(request)
    data = await read_upload(image, "image")
    variant, (result,) = await app.state.pipeline.classify(
        [data], check_top_k(top_k), request_id, started, **routing(request)
    )
    response.headers["X-Request-ID"] = request_id
    return {**result, **model_fields(variant), "request_id": request_id}


@app.post("/classify_batch", summary="Classify several images; results in input order")
async def classify_batch(
    request: Request, response: Response, images: list[ImageFile], top_k: TopK = 5
) -> dict:
    started, request_id = time.perf_counter(), request_id_of(request)
    if len(images) > limits.max_batch_images:
        raise ServiceError(
            "too_many_images",
            f"{len(images)} images sent; the limit is {limits.max_batch_images} per request",
        )
    data = [await read_upload(image, f"images[{i}]") for i, image in enumerate(images)]
    variant, results = await app.state.pipeline.classify(
        data, check_top_k(top_k), request_id, started, **routing(request)
    )
    response.headers["X-Request-ID"] = request_id
    return {"results": results, **model_fields(variant), "request_id": request_id}


@app.get("/model", summary="Model card: architecture, weights, device, batching")
async def model() -> dict:
    return app.state.pipeline.model_card()


@app.post(
    "/feedback",
    summary="The true label of an image answered earlier (needs an API key: Authorization: Bearer)",
)
async def feedback(given: FeedbackIn, request: Request) -> dict:
    sender = caller(request, settings.auth.api_keys, "POST /feedback")
    answer = await record_feedback(app.state.pipeline, given, sender)
    app.state.ops.labels_changed()
    return answer


@app.get("/stats", summary="This worker's live numbers, accuracy and drift verdicts")
async def stats() -> dict:
    summary = await asyncio.to_thread(app.state.ops.summary)
    return {**LIVE.snapshot(), **summary, "ready": app.state.pipeline.ready}


def routing(request: Request) -> dict:
    """The variant the request guard admitted, and the client key it was chosen by."""
    return {
        "client_key": getattr(request.state, "client_key", None),
        "variant_name": getattr(request.state, "variant", None),
    }


def model_fields(variant) -> dict:
    return {"model": variant.classifier.card_summary(), "variant": variant.name}
