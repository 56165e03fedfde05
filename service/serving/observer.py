"""What the service records about what it served, in one place: Prometheus metrics, this
worker's live numbers (GET /stats) and the prediction log's rows.

The request path calls it with what happened; nothing here blocks (the prediction log only
queues the row, see store/log.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import metrics
from ..store import PredictionLog, PredictionRecord
from .batching import BatchStats
from .live_stats import LIVE
from .model import Prediction
from .preprocessing import DecodedInfo
from .variants import Variant


class Observer:
    def __init__(self, prediction_log: PredictionLog, queued_images: Callable[[], int]):
        self.prediction_log = prediction_log
        self._queued_images = queued_images  # across every variant's batcher

    def batch(self, variant: Variant, stats: BatchStats) -> None:
        """A batch the model ran for `variant`."""
        metrics.INFERENCE_SECONDS.observe(stats.inference_seconds)
        metrics.BATCH_SIZE.observe(stats.batch_size)
        if not variant.shadow:
            LIVE.batch(stats.batch_size)
        for waited in stats.queue_seconds:
            metrics.QUEUE_SECONDS.observe(waited)
        metrics.QUEUE_DEPTH.set(self._queued_images())
        classifier = variant.classifier
        if classifier is not None and classifier.device.type == "cuda":
            metrics.GPU_MEMORY_BYTES.set(torch.cuda.memory_allocated(classifier.device))

    def request(self, variant: Variant, images: int, latency_ms: float) -> None:
        """A request `variant` answered."""
        metrics.QUEUE_DEPTH.set(self._queued_images())
        LIVE.request(variant.name, images, latency_ms)

    def prediction(
        self,
        variant: Variant,
        prediction: Prediction,
        info: DecodedInfo,
        request_id: str,
        index: int,
        latency_ms: float,
    ) -> None:
        """One image's answer from `variant`, serving or shadow: its metrics and its row in the
        prediction log."""
        role = variant.role
        metrics.CONFIDENCE.labels(variant=variant.name, role=role).observe(prediction.confidence)
        metrics.PREDICTION_LATENCY.labels(variant=variant.name, role=role).observe(
            latency_ms / 1000.0
        )
        metrics.PREDICTIONS.labels(
            label=metrics.class_label(prediction.label, prediction.class_index),
            variant=variant.name,
            role=role,
        ).inc()
        classifier, stats = variant.classifier, info.stats
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

    @staticmethod
    def shadow_failed(variant: Variant, reason: str) -> None:
        metrics.SHADOW_FAILURES.labels(variant=variant.name, reason=reason).inc()
