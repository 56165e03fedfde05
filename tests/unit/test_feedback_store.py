"""Feedback storage and sliding-window accuracy on a real SQLite log."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from service.store.db import migrate
from service.store.labels import accuracy, find_request, save_feedback
from service.store.log import PredictionRecord, insert_ignoring_duplicates


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/log.db")
    migrate(engine)
    return engine


def prediction(request_id, predicted, top5, variant="main", role="serve", index=0, version="1"):
    return PredictionRecord(
        request_id=request_id,
        model_name="m",
        model_version=version,
        class_index=predicted,
        label=str(predicted),
        confidence=0.5,
        latency_ms=1.0,
        image_width=10,
        image_height=10,
        image_bytes=100,
        item_index=index,
        variant=variant,
        role=role,
        top5=",".join(map(str, top5)),
    )


def test_find_request_counts_images_of_the_serving_variant(engine):
    insert_ignoring_duplicates(
        engine,
        [
            prediction("r1", 1, [1], index=0),
            prediction("r1", 2, [2], index=1),
            prediction("r1", 2, [2], variant="cand", role="shadow", index=0),
        ],
    )
    found = find_request(engine, "r1")
    assert (found.variant, found.images) == ("main", 2)
    assert find_request(engine, "nope") is None


def test_accuracy_top1_top5_per_variant_and_role(engine):
    # main: right, right-in-top5, wrong. The shadow answered the same images: right every time.
    insert_ignoring_duplicates(
        engine,
        [
            prediction("a", 7, [7, 1, 2]),
            prediction("b", 1, [1, 7, 2]),
            prediction("c", 3, [3, 4, 5]),
            *(prediction(r, 7, [7], variant="cand", role="shadow", version="2") for r in "abc"),
        ],
    )
    for request_id in "abc":
        save_feedback(engine, request_id, 0, 7, "seven")
    results = {(a.variant, a.role): a for a in accuracy(engine, 100, 3600)}
    main, shadow = results[("main", "serve")], results[("cand", "shadow")]
    assert (main.samples, main.top1, main.top5) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (shadow.samples, shadow.top1, shadow.model_version) == (3, 1.0, "2")


def test_the_latest_label_wins_and_windows_bound_the_count_and_age(engine):
    insert_ignoring_duplicates(engine, [prediction(f"r{i}", 7, [7]) for i in range(5)])
    for i in range(5):
        save_feedback(engine, f"r{i}", 0, 7, "seven")
    save_feedback(engine, "r4", 0, 8, "eight")  # corrected: now wrong
    (latest_two,) = accuracy(engine, window_count=2, window_s=3600)
    assert (latest_two.samples, latest_two.top1) == (2, 0.5)
    later = datetime.now(UTC) + timedelta(hours=2)
    assert accuracy(engine, window_count=100, window_s=3600, now=later) == []
