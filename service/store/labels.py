"""Feedback (true labels): storing them, the accuracy they give, predictions joined with them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, Row, and_, func, select

from .db import dialect_insert
from .schema import Feedback, Prediction, Role


@dataclass(frozen=True)
class ServedRequest:
    variant: str
    images: int


@dataclass(frozen=True)
class Accuracy:
    model_version: str
    variant: str
    role: str
    samples: int
    top1: float
    top5: float

    def as_dict(self) -> dict:
        return {
            "model_version": self.model_version,
            "variant": self.variant,
            "role": self.role,
            "samples": self.samples,
            "top1": round(self.top1, 4),
            "top5": round(self.top5, 4),
        }


def find_request(engine: Engine, request_id: str) -> ServedRequest | None:
    """The serving variant of a logged request and how many images it had."""
    query = (
        select(Prediction.variant, func.max(Prediction.item_index))
        .where(Prediction.request_id == request_id, Prediction.role == Role.SERVE)
        .group_by(Prediction.variant)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return ServedRequest(row[0], row[1] + 1) if row else None


def save_feedback(
    engine: Engine,
    request_id: str,
    item_index: int,
    class_index: int,
    label: str,
    labelled_by: str | None = None,
) -> None:
    """Insert, or replace an earlier answer for the same image: the latest label wins, and
    records who sent it (the API key's name)."""
    row = {
        "created_at": datetime.now(UTC),
        "request_id": request_id,
        "item_index": item_index,
        "class_index": class_index,
        "label": label,
        "labelled_by": labelled_by,
    }
    statement = dialect_insert(engine)(Feedback).values(**row)
    statement = statement.on_conflict_do_update(
        index_elements=["request_id", "item_index"],
        set_={key: row[key] for key in ("created_at", "class_index", "label", "labelled_by")},
    )
    with engine.begin() as connection:
        connection.execute(statement)


def accuracy(
    engine: Engine, window_count: int, window_s: float, now: datetime | None = None
) -> list[Accuracy]:
    """Top-1 and top-5 accuracy over the latest `window_count` labels no older than
    `window_s`, per model version, variant and role. A shadow's predictions are scored
    against the same labels as the answer the client got: same images, same truth."""
    since = (now or datetime.now(UTC)) - timedelta(seconds=window_s)
    latest = (
        select(Feedback.request_id, Feedback.item_index, Feedback.class_index)
        .where(Feedback.created_at >= since)
        .order_by(Feedback.created_at.desc())
        .limit(window_count)
        .subquery()
    )
    query = select(
        Prediction.model_version,
        Prediction.variant,
        Prediction.role,
        Prediction.class_index,
        Prediction.top5,
        latest.c.class_index,
    ).join(
        latest,
        (Prediction.request_id == latest.c.request_id)
        & (Prediction.item_index == latest.c.item_index),
    )
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    with engine.connect() as connection:
        for version, variant, role, predicted, top5, truth in connection.execute(query):
            tally = counts[(version, variant, role)]
            tally[0] += 1
            tally[1] += predicted == truth
            tally[2] += str(truth) in top5.split(",")
    return [
        Accuracy(version, variant, role, n, hits / n, top5_hits / n)
        for (version, variant, role), (n, hits, top5_hits) in sorted(counts.items())
    ]


def predictions_with_labels(engine: Engine, since: datetime | None = None) -> Iterator[Row]:
    """Every prediction (created at or after `since`) with its true class when labelled: rows
    of variant, role, model_version, request_id, item_index, class_index, confidence,
    latency_ms and true_class_index (None without feedback)."""
    query = select(
        Prediction.variant,
        Prediction.role,
        Prediction.model_version,
        Prediction.request_id,
        Prediction.item_index,
        Prediction.class_index,
        Prediction.confidence,
        Prediction.latency_ms,
        Feedback.class_index.label("true_class_index"),
    ).outerjoin(
        Feedback,
        and_(
            Feedback.request_id == Prediction.request_id,
            Feedback.item_index == Prediction.item_index,
        ),
    )
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    with engine.connect() as connection:
        yield from connection.execute(query)
