"""The API's answers as types: the schema BentoML publishes (/schema.json, /docs.json) and what
an in-process caller gets back. The HTTP routes build the same answers as dicts; the tests check
every answer they receive against these models, which forbid fields they do not name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(Answer):
    class_index: int
    label: str
    confidence: float


class ImageInfo(Answer):
    width: int
    height: int
    format: str


class ModelName(Answer):
    name: str
    version: str


class ImageResult(Answer):
    label: str
    class_index: int
    confidence: float
    top_k: list[Candidate]
    image: ImageInfo


class Classification(ImageResult):
    model: ModelName
    variant: str
    request_id: str


class BatchClassification(Answer):
    results: list[ImageResult]
    model: ModelName
    variant: str
    request_id: str


class FeedbackAnswer(Answer):
    request_id: str
    index: int
    label: str
    class_index: int
    variant: str
    labelled_by: str
