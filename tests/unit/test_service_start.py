"""A worker builds its pipeline and model operations on a thread, so that it answers as soon as
uvicorn is up: while they are built every route that needs them is refused `model_loading`
(Retry-After), and if building fails `load_failed` with the reason. Before, a restarted host
held the gateway's requests unanswered in its backlog while it imported torch. The pipeline
and the operations are stand-ins: this tests the worker's lifecycle only (the real service
starts in every integration test)."""

from __future__ import annotations

import threading

import pytest

import service.modelops.jobs as jobs
import service.serving.pipeline as pipeline_module
from service.errors import ServiceError
from service.service import ImageClassifier, app


class StandInPipeline:
    built = threading.Event()
    release = threading.Event()
    failure: Exception | None = None

    def __init__(self, settings):
        StandInPipeline.built.set()
        assert StandInPipeline.release.wait(30), "the test never let the build finish"
        if StandInPipeline.failure is not None:
            raise StandInPipeline.failure
        self.ready = True
        self.database = None
        self.prediction_log = None

    def start_loading(self):
        pass


class StandInOps:
    def __init__(self, settings, engine, ready):
        pass

    def start(self):
        pass


@pytest.fixture
def stand_ins(monkeypatch):
    StandInPipeline.built.clear()
    StandInPipeline.release.clear()
    StandInPipeline.failure = None
    monkeypatch.setattr(pipeline_module, "ClassificationPipeline", StandInPipeline)
    monkeypatch.setattr(jobs, "ModelOps", StandInOps)
    yield StandInPipeline
    StandInPipeline.release.set()


def refusal(call) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        call()
    return raised.value


def test_the_worker_answers_model_loading_while_it_builds_its_pipeline(stand_ins):
    worker = ImageClassifier()  # returns while the pipeline is still being built
    assert stand_ins.built.wait(30)
    assert not worker.__is_ready__()
    for call in (lambda: app.state.pipeline.admit(1), lambda: app.state.ops.summary()):
        error = refusal(call)
        assert (error.code, error.status, error.retry_after) == ("model_loading", 503, 5)
    stand_ins.release.set()
    worker._building.join(30)
    assert isinstance(app.state.pipeline, StandInPipeline) and worker.__is_ready__()
    assert isinstance(app.state.ops, StandInOps)


def test_a_pipeline_that_fails_to_build_is_load_failed_with_the_reason(stand_ins):
    stand_ins.failure = RuntimeError("no such database")
    stand_ins.release.set()
    worker = ImageClassifier()
    worker._building.join(30)
    assert not worker.__is_ready__()
    error = refusal(lambda: app.state.pipeline.classify)
    assert (error.code, error.status, error.retry_after) == ("load_failed", 503, None)
    assert "RuntimeError: no such database" in error.message
