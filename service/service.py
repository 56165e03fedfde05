"""bento-fleet's image classifier as a BentoML service.

    bentoml serve                 # from the repository root (reads bentofile.yaml)

BentoML provides the server, workers, /healthz /livez /readyz /metrics, the OpenAPI page and
the schema its clients read; the endpoints are declared as BentoML API methods (for that schema
and for in-process callers) and answered over HTTP by a FastAPI app mounted on it, so that
uploads are parsed, limited and answered exactly as documented (api/routes.py). The work is in
the packages beside this file: api/ (request guards, error mapping, answers, feedback),
serving/ (the request path: decoding, variants, batching, the model), modelops/ (drift, A/B,
reports, the periodic jobs) and store/ (the database); settings, errors and metrics are shared
by all; web/ is the page at /.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import bentoml
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from .api.access_log import WrittenOnAThread
from .api.answers import BatchClassification, Classification, FeedbackAnswer
from .api.auth import caller
from .api.feedback import FeedbackIn, record_feedback
from .api.guards import MULTIPART_OVERHEAD, RequestGuard, install_error_handlers, request_id_of
from .api.inputs import DEFAULT_TOP_K, check_batch_size, check_top_k, read_file, read_form
from .api.routes import ToTheRoutes
from .ids import new_id
from .serving.live_stats import LIVE
from .serving.memory import retain_freed_memory
from .serving.starting import Starting
from .settings import get_settings
from .web import router as web_page

log = logging.getLogger(__name__)
settings = get_settings()
# At import, while the worker has one thread: a thread that takes an arena of its own before
# this keeps it, and later threads (the model's among them) may be handed it (memory.py).
retain_freed_memory(settings.retain_freed_memory_mb)
limits = settings.limits

app = FastAPI(title="bento-fleet image classifier", version="1")
install_error_handlers(app)
app.include_router(web_page)
app.add_middleware(
    RequestGuard,
    pipeline_getter=lambda: app.state.pipeline,
    client_key_header=settings.experiment.client_key_header,
    refusal_delay_s=settings.batching.refusal_delay_ms / 1000,
    max_body_bytes={
        "/classify": limits.max_upload_bytes + MULTIPART_OVERHEAD,
        "/classify_batch": limits.max_batch_images * limits.max_upload_bytes + MULTIPART_OVERHEAD,
    },
)

IN_PROCESS = "in-process"  # labelled_by of feedback given by a caller in the same process


@bentoml.service(
    name="bento-fleet-classifier",
    workers=settings.workers,
    traffic={"timeout": 60},
    # The ASGI tracing middleware opens a span per body chunk of every upload: a fifth of the
    # event loop's time under load. Trace the inference routes only when you export traces.
    tracing={"excluded_urls": ["/classify", "/classify_batch"]},
    resources={"gpu": settings.gpus} if settings.device.startswith("cuda") else None,
)
@bentoml.asgi_app(app, path="/")
class ImageClassifier:
    """bento-fleet's image classifier: top-k ImageNet-style labels for JPEG, PNG, WebP, GIF,
    BMP and TIFF uploads, with feedback, drift and A/B model operations.

    The worker's lifecycle: load the models, answer readiness, flush the log on shutdown. The
    HTTP routes are plain functions of the FastAPI app, not methods: BentoML hands a method its
    `self` through a synchronous FastAPI dependency, which costs every request a round trip
    through a worker thread. They reach the pipeline through `app.state`."""

    def __init__(self) -> None:
        # The pipeline and the model operations are built on a thread: they import torch,
        # torchvision and scipy (seconds on a small host), and uvicorn accepts no connection
        # until this returns, while BentoML's arbiter already listens on the port. A host that
        # systemd restarted held the gateway's requests in its backlog for those seconds; now
        # it answers them at once, `model_loading` (serving/starting.py) until it is ready.
        self.pipeline = self.ops = app.state.pipeline = app.state.ops = Starting()
        self.access_log = WrittenOnAThread()  # BentoML's line a request, off the event loop
        self.access_log.install()
        self._building = threading.Thread(target=self._build, name="service-build", daemon=True)
        self._building.start()

    def _build(self) -> None:
        try:
            # Imported here, in the worker, not at the top: `bentoml serve`'s own process
            # imports this module too, only to read the service's definition.
            from .modelops.jobs import ModelOps
            from .serving.pipeline import ClassificationPipeline

            pipeline = ClassificationPipeline(settings)
            pipeline.start_loading()
            ops = ModelOps(
                settings, pipeline.database, ready=lambda: pipeline.prediction_log.migrated
            )
            ops.start()
        except Exception as error:
            log.exception("the service failed to start")
            failed = Starting(f"{type(error).__name__}: {error}")
            self.pipeline = self.ops = app.state.pipeline = app.state.ops = failed
            return
        # The operations first: a route that finds the real pipeline uses them after it.
        self.ops = app.state.ops = ops
        self.pipeline = app.state.pipeline = pipeline

    def __is_ready__(self) -> bool:
        return self.pipeline.ready

    @bentoml.on_shutdown
    async def flush_logs(self) -> None:
        await asyncio.to_thread(self._building.join)
        if not isinstance(self.pipeline, Starting):  # it failed to build: nothing was started
            self.ops.stop()
            await self.pipeline.close()
        await asyncio.to_thread(self.access_log.stop)

    # BentoML's own API for the same routes: the typed schema that its clients read
    # (/schema.json, so `bentoml.SyncHTTPClient(url).classify(image=path)` works) and methods a
    # caller in this process can await. Over HTTP these routes are answered by the FastAPI app
    # below (ToTheRoutes), so uploads are limited, admitted and refused exactly as documented,
    # and BentoML's clients get those same answers.

    @bentoml.api(route="/classify")
    async def classify(self, image: Path, top_k: int = DEFAULT_TOP_K) -> Classification:
        """Classify one image: JPEG, PNG, WebP, GIF, BMP or TIFF."""
        started, request_id = time.perf_counter(), new_id()
        data = read_file(image, "image")
        variant, (result,) = await self.pipeline.classify(
            [data], check_top_k(top_k), request_id, started
        )
        return Classification(**classification(variant, result, request_id))

    @bentoml.api(route="/classify_batch")
    async def classify_batch(
        self, images: list[Path], top_k: int = DEFAULT_TOP_K
    ) -> BatchClassification:
        """Classify several images; results in input order."""
        started, request_id = time.perf_counter(), new_id()
        check_batch_size(len(images))
        data = [read_file(image, f"images[{i}]") for i, image in enumerate(images)]
        variant, results = await self.pipeline.classify(
            data, check_top_k(top_k), request_id, started
        )
        return BatchClassification(**batch_classification(variant, results, request_id))

    @bentoml.api(route="/feedback", input_spec=FeedbackIn)
    async def feedback(self, **given) -> FeedbackAnswer:
        """The true label of an image answered earlier. Over HTTP it needs an API key
        (Authorization: Bearer); a caller in this process is trusted and recorded as such."""
        answer = await record_feedback(self.pipeline, FeedbackIn(**given), IN_PROCESS)
        self.ops.labels_changed()
        return FeedbackAnswer(**answer)

    @bentoml.api(route="/model")
    def model(self) -> dict:
        """Model card: architecture, weights, device, batching."""
        return self.pipeline.model_card()

    @bentoml.api(route="/stats")
    def stats(self) -> dict:
        """This worker's live numbers, accuracy and drift verdicts."""
        return live_stats(self.pipeline, self.ops.summary())


# The stored models the settings serve (model.tag) travel inside the Bento `bentoml build` packs.
ImageClassifier.models.extend(bentoml.models.BentoModel(tag) for tag in settings.stored_model_tags)
ImageClassifier.add_asgi_middleware(
    ToTheRoutes, routes=app, paths={api.route for api in ImageClassifier.apis.values()}
)


# The inference routes read their form themselves (api/inputs.py: read_form), as plain Starlette
# routes of the app: FastAPI's typed parameters cost the event loop 16-33% more CPU. The app's
# middleware (RequestGuard) and error handlers answer for them as for every route; their schema
# in /docs.json is the BentoML API methods' above.
async def classify(request: Request) -> JSONResponse:
    started, request_id = time.perf_counter(), request_id_of(request)
    data, top_k = await read_form(request, "image", many=False)
    variant, (result,) = await app.state.pipeline.classify(
        data, top_k, request_id, started, **routing(request)
    )
    return JSONResponse(
        classification(variant, result, request_id), headers={"X-Request-ID": request_id}
    )


async def classify_batch(request: Request) -> JSONResponse:
    started, request_id = time.perf_counter(), request_id_of(request)
    data, top_k = await read_form(request, "images", many=True)
    variant, results = await app.state.pipeline.classify(
        data, top_k, request_id, started, **routing(request)
    )
    return JSONResponse(
        batch_classification(variant, results, request_id), headers={"X-Request-ID": request_id}
    )


app.add_route("/classify", classify, methods=["POST"])
app.add_route("/classify_batch", classify_batch, methods=["POST"])


# GET for browsers and curl; POST too for BentoML's clients, which post to every endpoint (its
# schema, /schema.json, describes the POST).
@app.get("/model", summary="Model card: architecture, weights, device, batching")
@app.post("/model", include_in_schema=False)
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
@app.post("/stats", include_in_schema=False)
async def stats() -> dict:
    return live_stats(app.state.pipeline, await asyncio.to_thread(app.state.ops.summary))


def routing(request: Request) -> dict:
    """The variant the request guard admitted, and the client key it was chosen by."""
    return {
        "client_key": getattr(request.state, "client_key", None),
        "variant_name": getattr(request.state, "variant", None),
    }


# The answers, one shape for the BentoML API methods (their typed models, service/api/answers.py)
# and the routes.
def classification(variant, result: dict, request_id: str) -> dict:
    return {**result, **model_fields(variant), "request_id": request_id}


def batch_classification(variant, results: list[dict], request_id: str) -> dict:
    return {"results": results, **model_fields(variant), "request_id": request_id}


def model_fields(variant) -> dict:
    return {"model": variant.classifier.card_summary(), "variant": variant.name}


def live_stats(pipeline, ops_summary: dict) -> dict:
    return {**LIVE.snapshot(), **ops_summary, "ready": pipeline.ready}
