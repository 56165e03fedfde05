"""Bytes in, predictions out: decode -> batcher -> model -> metrics + prediction log."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from . import metrics
from .batching import AdaptiveBatcher, BatchStats, choose_batch_cap
from .errors import ServiceError
from .model import Classifier
from .preprocessing import DecodedInfo
from .settings import Settings
from .store import PredictionLog, PredictionRecord

log = logging.getLogger(__name__)


class ClassificationPipeline:
    """Owns the model, the batcher and the prediction log for one worker process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.classifier: Classifier | None = None
        self.load_error: str | None = None
        batching = settings.batching
        self.batcher = AdaptiveBatcher(
            self._infer,
            max_batch_size=batching.max_batch_size,
            max_queue_size=batching.max_queue_size,
            max_latency_ms=batching.max_latency_ms,
            enabled=batching.enabled,
            on_batch=self._observe_batch,
        )
        metrics.QUEUE_CAPACITY.set(batching.max_queue_size)
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
        self.batch_profile: dict[int, float] = {}

    # -- lifecycle ----------------------------------------------------------------------
    def start_loading(self) -> threading.Thread:
        """Load and warm the model in the background: /livez answers meanwhile, /readyz not."""
        thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        try:
            self.prediction_log.start()
            classifier = Classifier(self.settings)
            self._calibrate(classifier)
            classifier.warm_up(classifier.sizes_to_warm(self.batcher.max_batch_size))
            self.classifier = classifier
            log.info("model %s ready on %s", classifier.name, classifier.device)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def _calibrate(self, classifier: Classifier) -> None:
        """Warm every batch size we may run and cap batches at the fastest per image.

        See choose_batch_cap. The measured cost also seeds the queue's admission estimate.
        """
        batching = self.settings.batching
        largest = self.batcher.max_batch_size
        if batching.enabled and batching.calibrate:
            powers_of_two = [1 << i for i in range(largest.bit_length())]
            self.batch_profile = classifier.profile_batch_sizes([*powers_of_two, largest])
            self.batcher.max_batch_size = choose_batch_cap(self.batch_profile)
        else:
            self.batch_profile = classifier.profile_batch_sizes([1, largest])
        self.batcher.calibrate(self.batch_profile[self.batcher.max_batch_size])
        log.info(
            "batch profile (ms/image): %s -> max batch %d",
            {size: round(cost * 1000, 1) for size, cost in self.batch_profile.items()},
            self.batcher.max_batch_size,
        )

    @property
    def ready(self) -> bool:
        return self.classifier is not None and self.classifier.ready

    def require_ready(self) -> Classifier:
        if not self.ready:
            reason = self.load_error or "the model is still loading"
            raise ServiceError("not_ready", f"not ready: {reason}", retry_after=5)
        return self.classifier

    async def close(self) -> None:
        await self.batcher.close()
        self._decode_pool.shutdown(wait=True)
        await asyncio.to_thread(self.prediction_log.close)

    # -- request path -------------------------------------------------------------------
    async def classify(
        self, images: list[bytes], top_k: int, request_id: str, started: float
    ) -> list[dict]:
        classifier = self.require_ready()
        self.batcher.check_admission(len(images))
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(self._decode_pool, self._decode, data) for data in images),
            return_exceptions=True,
        )
        for index, item in enumerate(decoded):
            if isinstance(item, ServiceError):
                if len(images) > 1:
                    item.message = f"images[{index}]: {item.message}"
                raise item
            if isinstance(item, BaseException):
                raise item
        rows = await self.batcher.submit([tensor for tensor, _ in decoded])
        metrics.QUEUE_DEPTH.set(self.batcher.pending)
        latency_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for (_, info), probabilities in zip(decoded, rows, strict=True):
            prediction = classifier.top_k(probabilities, top_k)
            self._observe_prediction(classifier, prediction, info, request_id, latency_ms)
            results.append(
                {
                    "label": prediction.label,
                    "class_index": prediction.class_index,
                    "confidence": prediction.confidence,
                    "top_k": prediction.top_k,
                    "image": {"width": info.width, "height": info.height, "format": info.format},
                }
            )
        return results

    def _decode(self, data: bytes) -> tuple[torch.Tensor, DecodedInfo]:
        started = time.perf_counter()
        result = self.classifier.preprocessor(data)
        metrics.PREPROCESS_SECONDS.observe(time.perf_counter() - started)
        return result

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self.classifier.infer(batch)

    # -- observations -------------------------------------------------------------------
    def _observe_batch(self, stats: BatchStats) -> None:
        metrics.INFERENCE_SECONDS.observe(stats.inference_seconds)
        metrics.BATCH_SIZE.observe(stats.batch_size)
        for waited in stats.queue_seconds:
            metrics.QUEUE_SECONDS.observe(waited)
        metrics.QUEUE_DEPTH.set(self.batcher.pending)
        if self.classifier is not None and self.classifier.device.type == "cuda":
            device = self.classifier.device
            metrics.GPU_MEMORY_BYTES.set(torch.cuda.memory_allocated(device))
            metrics.GPU_MEMORY_TOTAL_BYTES.set(
                torch.cuda.get_device_properties(device).total_memory
            )

    def _observe_prediction(self, classifier, prediction, info, request_id, latency_ms) -> None:
        metrics.CONFIDENCE.observe(prediction.confidence)
        metrics.PREDICTIONS.labels(
            label=metrics.class_label(prediction.label, prediction.class_index)
        ).inc()
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
        }
