"""POST /feedback: the true label of an image answered earlier, checked before it is stored."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from .. import metrics
from ..errors import ServiceError
from ..store.labels import find_request, save_feedback

if TYPE_CHECKING:
    from ..serving.pipeline import ClassificationPipeline


class FeedbackIn(BaseModel):
    request_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="From X-Request-ID")
    index: int = Field(0, ge=0, description="Which image of a /classify_batch request")
    label: str | None = Field(None, description="The true class name, e.g. 'espresso'")
    class_index: int | None = Field(None, ge=0, description="... or its index")


def resolve_label(labels: list[str], given: FeedbackIn) -> tuple[int, str]:
    if given.label is None and given.class_index is None:
        raise ServiceError("missing_field", "send the true 'label' (a class name) or 'class_index'")
    if given.label is not None:
        try:
            index = labels.index(given.label.strip())
        except ValueError:
            raise ServiceError(
                "invalid_label",
                f"label {given.label!r} is not one of the model's {len(labels)} classes "
                "(GET /model lists them)",
            ) from None
        if given.class_index is not None and given.class_index != index:
            raise ServiceError(
                "invalid_label",
                f"label {given.label!r} is class {index}, not class_index {given.class_index}",
            )
        return index, labels[index]
    if given.class_index >= len(labels):
        raise ServiceError(
            "invalid_label",
            f"class_index {given.class_index} is out of range: the model has {len(labels)} classes",
        )
    return given.class_index, labels[given.class_index]


async def served_request(pipeline: ClassificationPipeline, request_id: str, wait_s: float):
    """This worker remembers what it answered; other workers' answers are read from the log,
    waiting a little for rows still on their way (the log flushes every half second)."""
    answered = pipeline.answered(request_id)
    if answered is not None:
        return answered
    deadline = time.monotonic() + wait_s
    while True:
        found = await asyncio.to_thread(find_request, pipeline.database, request_id)
        if found or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.25)


async def record_feedback(pipeline: ClassificationPipeline, given: FeedbackIn, sender: str) -> dict:
    pipeline.require_ready()
    try:
        served = await served_request(
            pipeline, given.request_id, pipeline.settings.feedback.lookup_wait_s
        )
        if served is None:
            raise ServiceError(
                "unknown_request",
                f"no prediction with request_id {given.request_id!r} in the prediction log",
            )
        if given.index >= served.images:
            raise ServiceError(
                "invalid_index",
                f"index {given.index} is out of range: request {given.request_id} had "
                f"{served.images} image(s)",
            )
        class_index, label = resolve_label(pipeline.labels_of(served.variant), given)
        await asyncio.to_thread(
            save_feedback,
            pipeline.database,
            given.request_id,
            given.index,
            class_index,
            label,
            sender,
        )
    except SQLAlchemyError as exc:
        raise ServiceError(
            "store_unavailable",
            f"the prediction log's database is unavailable: {type(exc).__name__}",
            retry_after=5,
        ) from exc
    metrics.FEEDBACK.labels(variant=served.variant).inc()
    return {
        "request_id": given.request_id,
        "index": given.index,
        "label": label,
        "class_index": class_index,
        "variant": served.variant,
        "labelled_by": sender,
    }
