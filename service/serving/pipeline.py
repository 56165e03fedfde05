"""Bytes in, predictions out: decode -> the serving variant's batcher -> model -> observations.

One pipeline per worker process. It owns the variants (variant_set.py: each with its own
batcher), the decode threads (decoding.py), the prediction log, and what it answered lately
(recent.py). A request is answered by one serving variant; shadow variants run the same images
afterwards, off the request path. What happened is recorded by the observer (observer.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import torch
from sqlalchemy import Engine

from .. import metrics
from ..errors import ServiceError
from ..settings import Settings
from ..store import PredictionLog
from ..store.labels import ServedRequest
from .decoding import Decoded, DecodePool
from .model import Classifier
from .observer import Observer
from .preprocessing import DecodedInfo
from .recent import RecentRequests
from .starting import not_ready
from .variant_set import VariantSet
from .variants import Variant

log = logging.getLogger(__name__)


class ClassificationPipeline:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.load_error: str | None = None
        self.prediction_log = PredictionLog(
            settings.database_url,
            settings.spool_dir,
            flush_interval_s=settings.database.flush_interval_s,
            flush_batch_size=settings.database.flush_batch_size,
            retry_interval_s=settings.database.retry_interval_s,
            connect_timeout_s=settings.database.connect_timeout_s,
            max_memory_rows=settings.database.max_memory_rows,
            migrate_on_start=settings.database.migrate,
            on_pending=metrics.PREDICTION_LOG_PENDING.set,
            on_dropped=metrics.PREDICTION_LOG_DROPPED.inc,
            on_dead_letter=metrics.PREDICTION_LOG_DEAD_LETTERS.inc,
        )
        self.variants = VariantSet(
            settings, on_batch=lambda v, stats: self.observer.batch(v, stats)
        )
        self.observer = Observer(self.prediction_log, lambda: self.variants.queued_images)
        self.recent = RecentRequests()
        self.decoder = DecodePool(
            statistics_share=settings.drift.statistics_share,
            statistics_per_second=settings.drift.statistics_per_second,
            heavy_decode_ms=settings.limits.heavy_decode_ms,
            max_pixels=settings.limits.max_pixels,
        )
        self._shadow_tasks: set[asyncio.Task] = set()
        metrics.QUEUE_CAPACITY.set(settings.batching.max_queue_size)

    @property
    def database(self) -> Engine:
        """The prediction log's database, for the feedback and model-operations queries."""
        return self.prediction_log.engine

    # -- lifecycle ----------------------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        """Load and warm the models in the background: /livez answers meanwhile, /readyz not."""
        thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        try:
            self.prediction_log.start()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("prediction log failed to start")
            return
        self.load_error = self.variants.load()

    @property
    def ready(self) -> bool:
        return self.variants.ready

    def require_ready(self) -> Classifier:
        if self.load_error is not None or not self.ready:
            raise not_ready(self.load_error, "the model is still loading")
        return self.variants.control.classifier

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await self.variants.close()
        self.decoder.close()
        await asyncio.to_thread(self.prediction_log.close)

    # -- request path -------------------------------------------------------------------
    def admit(
        self, images: int, client_key: str | None = None, chosen: str | None = None
    ) -> Variant:
        """The variant that will answer a request of `images` images (`chosen`, else routed by
        the client key), once the service is ready and that variant's queue has room for them;
        else the 503 that says why."""
        variant = self._route(client_key, chosen)
        variant.batcher.check_admission(images)
        return variant

    def _route(self, client_key: str | None, chosen: str | None) -> Variant:
        self.require_ready()
        return self.variants[chosen] if chosen else self.variants.serving(client_key)

    async def classify(
        self,
        images: list[bytes],
        top_k: int,
        request_id: str,
        started: float,
        client_key: str | None = None,
        variant_name: str | None = None,
    ) -> tuple[Variant, list[dict]]:
        """The serving variant that answered and its results, in input order. `variant_name`
        is the one the request guard admitted, if any (see admit)."""
        variant = self._route(client_key, variant_name)
        shadows = self.variants.shadows_for_request()
        preprocessors = [v.classifier.preprocessor for v in (variant, *shadows)]
        # Headers only, on the loop (tens of microseconds each; a WebP's about 0.4 ms): what
        # the decodes will cost is admitted before any is paid (decoding.py).
        opened = self.decoder.open(images, preprocessors[0])
        variant.batcher.check_admission(len(images))
        admitted = self.decoder.admit(
            opened, variant.batcher.max_latency_s, variant.classifier.jpeg_on_device
        )
        # The light images hold their places in the queue while they decode; heavy ones arrive
        # one slow decode at a time and hold none (decoding.py says why).
        with variant.batcher.reserve(sum(not image.heavy for image in admitted)):
            decoded = await self.decoder.decode(admitted, preprocessors)
        infos = [info for info, _ in decoded]
        rows = await variant.batcher.submit([tensors[0] for _, tensors in decoded], reserved=True)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.recent.remember(request_id, variant.name, len(images))
        self.observer.request(variant, len(images), latency_ms)
        results = [
            self._answer(variant, info, probabilities, top_k, request_id, index, latency_ms)
            for index, (info, probabilities) in enumerate(zip(infos, rows, strict=True))
        ]
        self._mirror(shadows, decoded, infos, request_id, started)
        return variant, results

    def _answer(
        self,
        variant: Variant,
        info: DecodedInfo,
        probabilities: torch.Tensor,
        top_k: int,
        request_id: str,
        index: int,
        latency_ms: float,
    ) -> dict:
        """One image's result as the API returns it; its observation recorded."""
        prediction = variant.classifier.top_k(probabilities, max(top_k, 5))
        self.observer.prediction(variant, prediction, info, request_id, index, latency_ms)
        return {
            "label": prediction.label,
            "class_index": prediction.class_index,
            "confidence": prediction.confidence,
            "top_k": prediction.top_k[:top_k],
            "image": {"width": info.width, "height": info.height, "format": info.format},
        }

    def _mirror(
        self,
        shadows: list[Variant],
        decoded: list[Decoded],
        infos: list[DecodedInfo],
        request_id: str,
        started: float,
    ) -> None:
        """Hand the request's images to its shadows, without waiting for them."""
        for position, shadow in enumerate(shadows, start=1):
            tensors = [item_tensors[position] for _, item_tensors in decoded]
            task = asyncio.get_running_loop().create_task(
                self._shadow(shadow, tensors, infos, request_id, started)
            )
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, variant, tensors, infos, request_id: str, started: float) -> None:
        """Run a shadow on images already answered; whatever happens stays here."""
        try:
            rows = await variant.batcher.submit(tensors)
            latency_ms = (time.perf_counter() - started) * 1000.0
            for index, (info, probabilities) in enumerate(zip(infos, rows, strict=True)):
                prediction = variant.classifier.top_k(probabilities, 5)
                self.observer.prediction(variant, prediction, info, request_id, index, latency_ms)
        except ServiceError as exc:  # its queue is full: the shadow skips this request
            self.observer.shadow_failed(variant, exc.code)
        except Exception as exc:  # noqa: BLE001 - a broken candidate must never reach clients
            self.observer.shadow_failed(variant, "error")
            log.warning("shadow variant %s failed on %s: %s", variant.name, request_id, exc)

    # -- what other parts ask -----------------------------------------------------------
    def answered(self, request_id: str) -> ServedRequest | None:
        """The variant and image count of a request this worker answered lately."""
        return self.recent.get(request_id)

    def labels_of(self, variant_name: str) -> list[str]:
        """The class names of the variant that answered (the control's if it is gone)."""
        variant = self.variants.get(variant_name) or self.variants.control
        return variant.classifier.labels

    def model_card(self) -> dict:
        classifier = self.require_ready()
        batching, control = self.settings.batching, self.variants.control
        return {
            **classifier.card(),
            "batching": {
                "enabled": batching.enabled,
                "max_batch_size": batching.max_batch_size,
                "effective_max_batch_size": control.batcher.max_batch_size,
                "calibrated": batching.calibrate,
                "ms_per_image_by_batch_size": {
                    size: round(cost * 1000, 2) for size, cost in control.batch_profile.items()
                },
                "max_latency_ms": batching.max_latency_ms,
                "max_queue_size": batching.max_queue_size,
            },
            "limits": self.settings.limits.model_dump(),
            "workers": self.settings.workers,
            "variants": [
                {
                    "name": variant.name,
                    "role": variant.role,
                    "weight": variant.settings.weight,
                    "shadow_share": variant.settings.shadow_share if variant.shadow else None,
                    "model": variant.classifier.card_summary() if variant.classifier else None,
                    "ready": variant.ready,
                    "load_error": variant.load_error,
                }
                for variant in self.variants
            ],
        }
