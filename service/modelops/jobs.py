"""The periodic side of model operations: the drift job and the accuracy gauges.

In the service a daemon thread runs `ModelOps.tick` every few seconds. The drift job runs when
the latest stored run for a model version is older than `drift.interval_s`, by the one worker
(of all the workers and hosts on the database) that claims its lease for that interval
(store/leases.py); every worker then publishes the stored verdicts, so /metrics agrees wherever
it is scraped. The CLI calls the same code, without a lease: a person asked for that run.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import torch
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import metrics
from ..serving.model import Classifier
from ..settings import Settings, VariantSettings
from ..store import drift_runs as drift_store
from ..store import leases
from ..store.labels import Accuracy, accuracy
from .drift import FeatureDrift, Observation, Profile, compare

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class DriftStatus(StrEnum):
    CHECKED = "checked"
    NO_REFERENCE = "no_reference"  # none stored, and none may be made from the log yet
    TOO_FEW_SAMPLES = "too_few_samples"  # in the recent window (drift.min_samples)


@dataclass
class DriftCheck:
    model_name: str
    model_version: str
    status: DriftStatus
    results: list[FeatureDrift] = field(default_factory=list)
    reference_source: str | None = None
    current_samples: int = 0
    run_id: str | None = None
    checked_at: datetime | None = None
    reference: Profile | None = None
    current: Profile | None = None

    @property
    def drifted(self) -> list[str]:
        return [result.feature for result in self.results if result.drifted]


def model_versions(settings: Settings) -> list[tuple[str, str]]:
    """(name, version) of every configured variant, serving and shadow."""
    seen = {}
    for variant in settings.model_variants:
        seen.setdefault(variant.model.version, variant.model.display_name)
    return [(name, version) for version, name in seen.items()]


def run_drift_check(
    engine: Engine, settings: Settings, model_name: str, model_version: str, store: bool = True
) -> DriftCheck:
    """Compare the recent window with the reference (made from the first N predictions when
    none is stored and `drift.reference_first_n` allows); store the verdicts."""
    config = settings.drift
    reference = drift_store.latest_reference(engine, model_version)
    first_n = config.reference_first_n
    if (
        reference is None
        and first_n
        and drift_store.count_predictions(engine, model_version) >= first_n
    ):
        first = drift_store.first_predictions(engine, model_version, first_n)
        source = f"first {first_n} predictions"
        profile = Profile.from_observations(*first)
        drift_store.save_reference(engine, model_name, model_version, source, profile)
        log.info("drift: reference for %s %s from its %s", model_name, model_version, source)
        reference = drift_store.latest_reference(engine, model_version)
    if reference is None:
        return DriftCheck(model_name, model_version, DriftStatus.NO_REFERENCE)
    recent = drift_store.recent_predictions(
        engine, model_version, config.window_count, config.window_s
    )
    current = Profile.from_observations(*recent)
    check = DriftCheck(
        model_name,
        model_version,
        DriftStatus.TOO_FEW_SAMPLES,
        reference_source=reference.source,
        current_samples=current.samples,
        reference=reference.profile,
        current=current,
    )
    if current.samples < config.min_samples:
        return check
    check.status, check.results = DriftStatus.CHECKED, compare(reference.profile, current, config)
    check.checked_at = datetime.now(UTC)
    if store:
        check.run_id = drift_store.save_results(engine, model_name, model_version, check.results)
    return check


def reference_from_images(settings: Settings, folder: Path, variant: VariantSettings) -> Profile:
    """Run the variant's model over a folder of images and profile what it saw and answered."""
    classifier = Classifier(settings.for_variant(variant))
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    observations = []
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        decoded = [classifier.preprocessor.decode(path.read_bytes()) for path in chunk]
        batch = torch.stack([classifier.preprocessor.to_tensor(image) for image, _ in decoded])
        rows = classifier.infer(batch)
        for (_, info), row in zip(decoded, rows, strict=True):
            confidence, index = row.max(dim=0)
            observations.append(
                Observation(
                    brightness=info.stats.brightness,
                    contrast=info.stats.contrast,
                    saturation=info.stats.saturation,
                    sharpness=info.stats.sharpness,
                    width=info.width,
                    height=info.height,
                    file_size=info.bytes,
                    confidence=float(confidence),
                    class_index=int(index),
                )
            )
    return Profile.from_observations(observations)


def publish_drift(check: DriftCheck) -> None:
    for result in check.results:
        labels = {"model_version": check.model_version, "feature": result.feature}
        metrics.DRIFT_SCORE.labels(**labels, test=result.test).set(result.statistic)
        metrics.DRIFT_DETECTED.labels(**labels).set(1 if result.drifted else 0)
    if check.checked_at:
        metrics.DRIFT_LAST_RUN.labels(model_version=check.model_version).set(
            check.checked_at.timestamp()
        )


def publish_accuracy(results: list[Accuracy]) -> None:
    for result in results:
        labels = {
            "model_version": result.model_version,
            "variant": result.variant,
            "role": result.role,
        }
        metrics.ACCURACY.labels(**labels, k="1").set(result.top1)
        metrics.ACCURACY.labels(**labels, k="5").set(result.top5)
        metrics.ACCURACY_SAMPLES.labels(**labels).set(result.samples)


class ModelOps:
    """Runs in each worker: keeps accuracy and drift gauges fresh, runs the drift job when due."""

    TICK_S = 2.0

    def __init__(self, settings: Settings, engine: Engine, ready=lambda: True):
        self.settings = settings
        self.engine = engine
        self.ready = ready  # the tables exist once the prediction log has migrated
        self.accuracy: list[Accuracy] = []
        self.accuracy_at = 0.0
        self.drift: dict[str, DriftCheck] = {}
        self.drift_at = float("-inf")
        self.holder = leases.this_worker()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-ops", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            if not self.ready():
                continue
            try:
                self.tick()
            except Exception:  # the database may be away: retry next tick (logged)
                log.warning("model ops: tick failed", exc_info=True)

    def tick(self) -> None:
        if time.monotonic() - self.accuracy_at >= self.settings.feedback.refresh_s:
            self.refresh_accuracy()
        interval = self.settings.drift.interval_s
        # Reading the stored verdicts is cheap, but not worth doing every tick.
        if interval and time.monotonic() - self.drift_at >= min(interval, 30.0):
            self.drift_at = time.monotonic()
            for name, version in model_versions(self.settings):
                self.refresh_drift(name, version)

    def labels_changed(self) -> None:
        """A label was stored: the next tick or /stats recomputes accuracy, not after refresh_s."""
        self.accuracy_at = float("-inf")

    def refresh_accuracy(self) -> list[Accuracy]:
        with self._lock:
            feedback = self.settings.feedback
            self.accuracy = accuracy(self.engine, feedback.window_count, feedback.window_s)
            self.accuracy_at = time.monotonic()
            publish_accuracy(self.accuracy)
            return self.accuracy

    def refresh_drift(self, name: str, version: str) -> DriftCheck | None:
        interval = self.settings.drift.interval_s
        stored = drift_store.latest_results(self.engine, version)
        age = (datetime.now(UTC) - stored.created_at).total_seconds() if stored else None
        due = age is None or age >= interval
        if due and leases.claim(self.engine, f"drift:{version}", self.holder, interval):
            check = run_drift_check(self.engine, self.settings, name, version)
        elif stored is None:  # the first check runs elsewhere, or found nothing to store yet
            return self.drift.get(version)
        else:
            check = DriftCheck(
                name,
                version,
                DriftStatus.CHECKED,
                stored.results,
                run_id=stored.run_id,
                checked_at=stored.created_at,
            )
        self.drift[version] = check
        publish_drift(check)
        return check

    def summary(self) -> dict:
        """For GET /stats: the latest accuracy and drift verdicts."""
        stale = time.monotonic() - self.accuracy_at >= self.settings.feedback.refresh_s
        if stale and self.ready():
            try:
                self.refresh_accuracy()
            except SQLAlchemyError:
                log.warning("model ops: accuracy unavailable", exc_info=True)
        return {
            "accuracy": [result.as_dict() for result in self.accuracy],
            "accuracy_window": {
                "count": self.settings.feedback.window_count,
                "seconds": self.settings.feedback.window_s,
            },
            "drift": [
                {
                    "model_version": version,
                    "status": check.status,
                    "checked_at": check.checked_at.isoformat() if check.checked_at else None,
                    "drifted_features": check.drifted,
                }
                for version, check in self.drift.items()
            ],
        }
