"""Bytes in, predictions out: decode -> variant's batcher -> model -> metrics + prediction log.

One pipeline per worker process. It owns every configured model variant (each with its own
batcher), the decode threads and the prediction log. A request is answered by one serving
variant; shadow variants run the same images afterwards, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import torch

from .. import metrics
from ..errors import ServiceError
from ..settings import Settings
from ..store import PredictionLog, PredictionRecord
from .batching import AdaptiveBatcher, BatchStats, choose_batch_cap
from .live_stats import LIVE
from .model import Classifier, Prediction
from .preprocessing import DecodedInfo
from .variants import Variant, VariantRouter

log = logging.getLogger(__name__)
RECENT_REQUESTS = 100_000  # request ids remembered for feedback before their rows are flushed


class ClassificationPipeline:
    """Owns the model variants, their batchers and the prediction log for one worker."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.load_error: str | None = None
        self.router = VariantRouter(settings.model_variants)
        self.variants: dict[str, Variant] = {
            variant.name: Variant(variant, self._make_batcher(variant.name))
            for variant in settings.model_variants
        }
        self.control = self.variants[self.router.control.name]
        metrics.QUEUE_CAPACITY.set(settings.batching.max_queue_size)
        # Decoding releases the GIL in Pillow; two threads keep it off the event loop.
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self.prediction_log = PredictionLog(
            settings.database_url,
            settings.spool_dir,
            flush_interval_s=settings.database.flush_interval_s,
            flush_batch_size=settings.database.flush_batch_size,
            retry_interval_s=settings.database.retry_interval_s,
            connect_timeout_s=settings.database.connect_timeout_s,
            on_pending=metrics.PREDICTION_LOG_PENDING.set,
        )
        # request id -> (serving variant, images): feedback can be checked before the flush.
        self.recent: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._shadow_tasks: set[asyncio.Task] = set()

    def _make_batcher(self, variant: str) -> AdaptiveBatcher:
        batching = self.settings.batching
        return AdaptiveBatcher(
            lambda batch: self.variants[variant].classifier.infer(batch),
            max_batch_size=batching.max_batch_size,
            max_queue_size=batching.max_queue_size,
            max_latency_ms=batching.max_latency_ms,
            enabled=batching.enabled,
            on_batch=lambda stats: self._observe_batch(variant, stats),
        )

    # The variant in place, as seen by the model card, the request guard and the benchmark.
    @property
    def classifier(self) -> Classifier | None:
        return self.control.classifier

    @property
    def batcher(self) -> AdaptiveBatcher:
        return self.control.batcher

    @property
    def batch_profile(self) -> dict[int, float]:
        return self.control.batch_profile

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
        # Serving variants first: a shadow that fails to load must not keep the service down.
        for variant in sorted(self.variants.values(), key=lambda v: v.shadow):
            role = variant.role
            try:
                classifier = Classifier(self.settings.for_variant(variant.settings))
                self._calibrate(variant, classifier)
                classifier.warm_up(classifier.sizes_to_warm(variant.batcher.max_batch_size))
                variant.classifier = classifier
                if classifier.device.type == "cuda":  # fixed for the device: set once
                    metrics.GPU_MEMORY_TOTAL_BYTES.set(
                        torch.cuda.get_device_properties(classifier.device).total_memory
                    )
                metrics.VARIANT_UP.labels(variant=variant.name, role=role).set(1)
                log.info(
                    "variant %s: model %s ready on %s",
                    variant.name,
                    classifier.name,
                    classifier.device,
                )
            except Exception as exc:
                variant.load_error = f"{type(exc).__name__}: {exc}"
                metrics.VARIANT_UP.labels(variant=variant.name, role=role).set(0)
                log.exception("variant %s: model failed to load", variant.name)
                if not variant.shadow:
                    self.load_error = f"variant {variant.name}: {variant.load_error}"
                    return

    def _calibrate(self, variant: Variant, classifier: Classifier) -> None:
        """Warm every batch size we may run and cap batches at the fastest per image.

        See choose_batch_cap. The measured cost also seeds the queue's admission estimate.
        """
        batching, batcher = self.settings.batching, variant.batcher
        largest = batcher.max_batch_size
        if batching.enabled and batching.calibrate:
            powers_of_two = [1 << i for i in range(largest.bit_length())]
            variant.batch_profile = classifier.profile_batch_sizes([*powers_of_two, largest])
            batcher.max_batch_size = choose_batch_cap(variant.batch_profile)
        else:
            variant.batch_profile = classifier.profile_batch_sizes([1, largest])
        batcher.calibrate(variant.batch_profile[batcher.max_batch_size])
        log.info(
            "variant %s batch profile (ms/image): %s -> max batch %d",
            variant.name,
            {size: round(cost * 1000, 1) for size, cost in variant.batch_profile.items()},
            batcher.max_batch_size,
        )

    @property
    def ready(self) -> bool:
        """Every serving variant warm, and every shadow settled: loaded, or failed and reported.
        A shadow never keeps the service down, but /readyz waits for its verdict, so a deploy
        sees the whole set of variants it configured."""
        return all(
            v.ready if not v.shadow else (v.ready or v.load_error is not None)
            for v in self.variants.values()
        )

    def require_ready(self) -> Classifier:
        if not self.ready:
            reason = self.load_error or "the model is still loading"
            raise ServiceError("not_ready", f"not ready: {reason}", retry_after=5)
        return self.classifier

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        for variant in self.variants.values():
            await variant.batcher.close()
        self._decode_pool.shutdown(wait=True)
        await asyncio.to_thread(self.prediction_log.close)

    # -- request path -------------------------------------------------------------------
    async def classify(
        self,
        images: list[bytes],
        top_k: int,
        request_id: str,
        started: float,
        client_key: str | None = None,
    ) -> tuple[Variant, list[dict]]:
        """The serving variant that answered and its results, in input order."""
        self.require_ready()
        variant = self.variants[self.router.choose(client_key).name]
        variant.batcher.check_admission(len(images))
        shadows = [
            self.variants[s.name]
            for s in self.router.shadows_for_request()
            if self.variants[s.name].ready
        ]
        preprocessors = [v.classifier.preprocessor for v in (variant, *shadows)]
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, self._decode, data, preprocessors)
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
        infos = [info for info, _ in decoded]
        rows = await variant.batcher.submit([tensors[0] for _, tensors in decoded])
        metrics.QUEUE_DEPTH.set(self.pending)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._remember(request_id, variant.name, len(images))
        LIVE.request(variant.name, len(images), latency_ms)
        results = []
        for index, (info, probabilities) in enumerate(zip(infos, rows, strict=True)):
            prediction = variant.classifier.top_k(probabilities, max(top_k, 5))
            self._observe(variant, prediction, info, request_id, index, latency_ms)
            results.append(
                {
                    "label": prediction.label,
                    "class_index": prediction.class_index,
                    "confidence": prediction.confidence,
                    "top_k": prediction.top_k[:top_k],
                    "image": {"width": info.width, "height": info.height, "format": info.format},
                }
            )
        for position, shadow in enumerate(shadows, start=1):
            tensors = [item_tensors[position] for _, item_tensors in decoded]
            task = loop.create_task(self._shadow(shadow, tensors, infos, request_id, started))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return variant, results

    @property
    def pending(self) -> int:
        return sum(v.batcher.pending for v in self.variants.values())

    def _decode(self, data: bytes, preprocessors) -> tuple[DecodedInfo, list[torch.Tensor]]:
        started = time.perf_counter()
        image, info = preprocessors[0].decode(data)
        tensors = [preprocessor.to_tensor(image) for preprocessor in preprocessors]
        metrics.PREPROCESS_SECONDS.observe(time.perf_counter() - started)
        return info, tensors

    async def _shadow(self, variant, tensors, infos, request_id: str, started: float) -> None:
        """Run a shadow on images already answered; whatever happens stays here."""
        try:
            rows = await variant.batcher.submit(tensors)
            latency_ms = (time.perf_counter() - started) * 1000.0
            for index, (info, probabilities) in enumerate(zip(infos, rows, strict=True)):
                prediction = variant.classifier.top_k(probabilities, 5)
                self._observe(variant, prediction, info, request_id, index, latency_ms)
        except ServiceError as exc:  # its queue is full: the shadow skips this request
            metrics.SHADOW_FAILURES.labels(variant=variant.name, reason=exc.code).inc()
        except Exception as exc:  # noqa: BLE001 - a broken candidate must never reach clients
            metrics.SHADOW_FAILURES.labels(variant=variant.name, reason="error").inc()
            log.warning("shadow variant %s failed on %s: %s", variant.name, request_id, exc)

    def _remember(self, request_id: str, variant: str, images: int) -> None:
        self.recent[request_id] = (variant, images)
        self.recent.move_to_end(request_id)
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)

    # -- observations -------------------------------------------------------------------
    def _observe_batch(self, variant: str, stats: BatchStats) -> None:
        metrics.INFERENCE_SECONDS.observe(stats.inference_seconds)
        metrics.BATCH_SIZE.observe(stats.batch_size)
        if not self.variants[variant].shadow:
            LIVE.batch(stats.batch_size)
        for waited in stats.queue_seconds:
            metrics.QUEUE_SECONDS.observe(waited)
        metrics.QUEUE_DEPTH.set(self.pending)
        classifier = self.variants[variant].classifier
        if classifier is not None and classifier.device.type == "cuda":
            metrics.GPU_MEMORY_BYTES.set(torch.cuda.memory_allocated(classifier.device))

    def _observe(
        self,
        variant: Variant,
        prediction: Prediction,
        info: DecodedInfo,
        request_id: str,
        index: int,
        latency_ms: float,
    ) -> None:
        role = variant.role
        classifier = variant.classifier
        metrics.CONFIDENCE.labels(variant=variant.name, role=role).observe(prediction.confidence)
        metrics.PREDICTION_LATENCY.labels(variant=variant.name, role=role).observe(
            latency_ms / 1000.0
        )
        metrics.PREDICTIONS.labels(
            label=metrics.class_label(prediction.label, prediction.class_index),
            variant=variant.name,
            role=role,
        ).inc()
        stats = info.stats
        self.prediction_log.record(
            PredictionRecord(
                request_id=request_id,
                model_name=classifier.name,
                model_version=classifier.version,
                class_index=prediction.class_index,
                label=prediction.label,
                confidence=prediction.confidence,
                latency_ms=round(latency_ms, 3),
                image_width=info.width,
                image_height=info.height,
                image_bytes=info.bytes,
                item_index=index,
                variant=variant.name,
                role=role,
                top5=",".join(str(item["class_index"]) for item in prediction.top_k[:5]),
                brightness=stats.brightness if stats else None,
                contrast=stats.contrast if stats else None,
                saturation=stats.saturation if stats else None,
                sharpness=stats.sharpness if stats else None,
            )
        )

    def model_card(self) -> dict:
        classifier = self.require_ready()
        batching = self.settings.batching
        return {
            **classifier.card(),
            "batching": {
                "enabled": batching.enabled,
                "max_batch_size": self.settings.batching.max_batch_size,
                "effective_max_batch_size": self.batcher.max_batch_size,
                "calibrated": self.settings.batching.calibrate,
                "ms_per_image_by_batch_size": {
                    size: round(cost * 1000, 2) for size, cost in self.batch_profile.items()
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
                for variant in self.variants.values()
            ],
        }
