"""The drift job's reads and writes: windows of the prediction log, reference profiles and
results, so that every worker and every host sees the same verdicts."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select

from ..modelops.drift import DriftTest, FeatureDrift, Observation, Profile
from .schema import DriftResult, Prediction, ReferenceProfile


def _observations(rows) -> list[Observation]:
    return [Observation(**row) for row in rows.mappings()]


# The prediction log's columns under the names of Observation's fields.
_OBSERVED = (
    Prediction.brightness,
    Prediction.contrast,
    Prediction.saturation,
    Prediction.sharpness,
    Prediction.image_width.label("width"),
    Prediction.image_height.label("height"),
    Prediction.image_bytes.label("file_size"),
    Prediction.confidence,
    Prediction.class_index,
)


# A window of the log: its rows, and the rows of the same span that have pixel statistics, as
# many as it has rows (Profile.from_observations).
Window = tuple[list[Observation], list[Observation]]


def first_predictions(engine: Engine, model_version: str, count: int) -> Window:
    query = (
        select(*_OBSERVED)
        .where(Prediction.model_version == model_version)
        .order_by(Prediction.created_at)
        .limit(count)
    )
    return _window(engine, query)


def recent_predictions(
    engine: Engine, model_version: str, count: int, window_s: float, now: datetime | None = None
) -> Window:
    since = (now or datetime.now(UTC)) - timedelta(seconds=window_s)
    query = (
        select(*_OBSERVED)
        .where(Prediction.model_version == model_version, Prediction.created_at >= since)
        .order_by(Prediction.created_at.desc())
        .limit(count)
    )
    return _window(engine, query)


def _window(engine: Engine, query) -> Window:
    with engine.connect() as connection:
        rows = _observations(connection.execute(query))
        with_statistics = _observations(
            connection.execute(query.where(Prediction.brightness.is_not(None)))
        )
    return rows, with_statistics


def count_predictions(engine: Engine, model_version: str) -> int:
    query = select(func.count()).where(Prediction.model_version == model_version)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


@dataclass(frozen=True)
class StoredReference:
    model_name: str
    model_version: str
    source: str
    created_at: datetime
    profile: Profile


def save_reference(
    engine: Engine, model_name: str, model_version: str, source: str, profile: Profile
) -> None:
    with engine.begin() as connection:
        connection.execute(
            ReferenceProfile.__table__.insert().values(
                created_at=datetime.now(UTC),
                model_name=model_name,
                model_version=model_version,
                source=source[:512],
                samples=profile.samples,
                profile=json.dumps(profile.to_json()),
            )
        )


def latest_reference(engine: Engine, model_version: str) -> StoredReference | None:
    query = (
        select(ReferenceProfile)
        .where(ReferenceProfile.model_version == model_version)
        .order_by(ReferenceProfile.created_at.desc(), ReferenceProfile.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    if row is None:
        return None
    return StoredReference(
        row["model_name"],
        row["model_version"],
        row["source"],
        row["created_at"],
        Profile.from_json(json.loads(row["profile"])),
    )


def save_results(
    engine: Engine, model_name: str, model_version: str, results: list[FeatureDrift]
) -> str:
    run_id, now = uuid.uuid4().hex, datetime.now(UTC)
    rows = [
        {
            "run_id": run_id,
            "created_at": now,
            "model_name": model_name,
            "model_version": model_version,
            "feature": result.feature,
            "test": result.test,
            "statistic": result.statistic,
            "p_value": result.p_value,
            "threshold": result.threshold,
            "drifted": result.drifted,
            "reference_samples": result.reference_samples,
            "current_samples": result.current_samples,
        }
        for result in results
    ]
    with engine.begin() as connection:
        connection.execute(DriftResult.__table__.insert(), rows)
    return run_id


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    created_at: datetime
    results: list[FeatureDrift]


def latest_results(engine: Engine, model_version: str) -> StoredRun | None:
    latest = (
        select(DriftResult.run_id, DriftResult.created_at)
        .where(DriftResult.model_version == model_version)
        .order_by(DriftResult.created_at.desc(), DriftResult.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        head = connection.execute(latest).first()
        if head is None:
            return None
        rows = connection.execute(
            select(DriftResult).where(DriftResult.run_id == head[0]).order_by(DriftResult.id)
        ).mappings()
        results = [
            FeatureDrift(
                feature=row["feature"],
                test=DriftTest(row["test"]),
                statistic=row["statistic"],
                p_value=row["p_value"],
                threshold=row["threshold"],
                drifted=bool(row["drifted"]),
                reference_samples=row["reference_samples"],
                current_samples=row["current_samples"],
            )
            for row in rows
        ]
    created = head[1] if head[1].tzinfo else head[1].replace(tzinfo=UTC)  # SQLite drops the tz
    return StoredRun(head[0], created, results)
