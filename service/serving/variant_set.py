"""Every configured variant with its own batcher: loaded and calibrated in turn, and asked
which one answers a request and which shadows mirror it (routing rules: variants.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

from .. import metrics
from ..settings import Settings
from .batching import AdaptiveBatcher, BatchStats, choose_batch_cap
from .model import Classifier
from .model_thread import on_model_thread
from .variants import Variant, VariantRouter

log = logging.getLogger(__name__)


class VariantSet:
    def __init__(self, settings: Settings, on_batch: Callable[[Variant, BatchStats], None]):
        self.settings = settings
        self.router = VariantRouter(settings.model_variants)
        self._variants: dict[str, Variant] = {
            variant.name: Variant(variant, self._batcher_for(variant.name, on_batch))
            for variant in settings.model_variants
        }
        self.control = self._variants[self.router.control.name]

    def _batcher_for(self, name: str, on_batch) -> AdaptiveBatcher:
        batching = self.settings.batching
        return AdaptiveBatcher(
            lambda images: self._variants[name].classifier.run_batch(images),
            max_batch_size=batching.max_batch_size,
            max_queue_size=batching.max_queue_size,
            max_latency_ms=batching.max_latency_ms,
            enabled=batching.enabled,
            on_batch=lambda stats: on_batch(self._variants[name], stats),
        )

    def __iter__(self) -> Iterator[Variant]:
        return iter(self._variants.values())

    def __getitem__(self, name: str) -> Variant:
        return self._variants[name]

    def get(self, name: str) -> Variant | None:
        return self._variants.get(name)

    # -- routing ------------------------------------------------------------------------
    def serving(self, client_key: str | None = None) -> Variant:
        """The variant that answers a request (sticky for a client key)."""
        return self._variants[self.router.choose(client_key).name]

    def shadows_for_request(self) -> list[Variant]:
        """The loaded shadows that mirror this request (each by its share)."""
        chosen = (self._variants[s.name] for s in self.router.shadows_for_request())
        return [shadow for shadow in chosen if shadow.ready]

    @property
    def queued_images(self) -> int:
        return sum(variant.batcher.pending for variant in self)

    @property
    def ready(self) -> bool:
        """Every serving variant warm, and every shadow settled: loaded, or failed and reported.
        A shadow never keeps the service down, but /readyz waits for its verdict, so a deploy
        sees the whole set of variants it configured."""
        return all(v.ready if not v.shadow else (v.ready or v.load_error is not None) for v in self)

    # -- loading ------------------------------------------------------------------------
    def load(self) -> str | None:
        """Load, calibrate and warm every variant, serving ones first; the reason a serving
        variant failed to load (then the rest are not tried), else None."""
        # Serving variants first: a shadow that fails to load must not keep the service down.
        for variant in sorted(self, key=lambda v: v.shadow):
            try:
                # Built, calibrated and warmed on the thread its batches will run on: the
                # calibration then times what serving will get (model_thread.py).
                classifier = on_model_thread(self._build, variant)
                variant.classifier = classifier
                if classifier.device.type == "cuda":  # fixed for the device: set once
                    metrics.GPU_MEMORY_TOTAL_BYTES.set(
                        torch.cuda.get_device_properties(classifier.device).total_memory
                    )
                metrics.VARIANT_UP.labels(variant=variant.name, role=variant.role).set(1)
                log.info(
                    "variant %s: model %s ready on %s",
                    variant.name,
                    classifier.name,
                    classifier.device,
                )
            except Exception as exc:
                variant.load_error = f"{type(exc).__name__}: {exc}"
                metrics.VARIANT_UP.labels(variant=variant.name, role=variant.role).set(0)
                log.exception("variant %s: model failed to load", variant.name)
                if not variant.shadow:
                    return f"variant {variant.name}: {variant.load_error}"
        return None

    def _build(self, variant: Variant) -> Classifier:
        classifier = Classifier(self.settings.for_variant(variant.settings))
        self._calibrate(variant, classifier)
        classifier.warm_up(classifier.sizes_to_warm(variant.batcher.max_batch_size))
        return classifier

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
            # Not calibrating is for a fast start (a rolling deploy): one timed pass at the cap
            # seeds the estimate, which the batcher's running average corrects from its first
            # batches; three rounds of two sizes cost a 2-core host several seconds more.
            variant.batch_profile = classifier.profile_batch_sizes([largest], rounds=1)
        batcher.calibrate(variant.batch_profile[batcher.max_batch_size])
        log.info(
            "variant %s batch profile (ms/image): %s -> max batch %d",
            variant.name,
            {size: round(cost * 1000, 1) for size, cost in variant.batch_profile.items()},
            batcher.max_batch_size,
        )

    async def close(self) -> None:
        for variant in self:
            await variant.batcher.close()
