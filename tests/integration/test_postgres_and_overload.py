"""The service against a real PostgreSQL that is stopped and restarted under it, plus overload.

The database going away must neither slow nor fail requests, nor lose a single record.
"""

import concurrent.futures

import httpx
import pytest
from sqlalchemy import create_engine, text
from support import ServiceProcess, eventually, jpeg_of, sqlalchemy_url

IMAGE = jpeg_of("coffee.png", (320, 240))


def classify(url: str) -> httpx.Response:
    return httpx.post(url + "/classify", files={"image": ("c.jpg", IMAGE)}, timeout=60)


def logged_ids(postgres) -> set[str]:
    engine = create_engine(sqlalchemy_url(postgres.url))
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT request_id FROM predictions"))}
    finally:
        engine.dispose()


def wait_for_ids(postgres, expected: set[str], timeout=60.0) -> set[str]:
    """The logged request ids, once they include `expected`."""

    def found():
        ids = logged_ids(postgres)
        return ids if expected <= ids else None

    return eventually(found, f"{len(expected)} request ids in PostgreSQL", timeout)


@pytest.fixture
def pg_service(postgres, tmp_path):
    server = ServiceProcess(
        tmp_path,
        {
            "BENTO_FLEET_DATABASE__URL": postgres.url,
            "BENTO_FLEET_DATABASE__RETRY_INTERVAL_S": "0.5",
            "BENTO_FLEET_DATABASE__FLUSH_INTERVAL_S": "0.2",
            "BENTO_FLEET_BATCHING__MAX_QUEUE_SIZE": "4",
            "BENTO_FLEET_LIMITS__MAX_BATCH_IMAGES": "4",
        },
    ).start()
    yield server
    server.stop()


def test_predictions_reach_postgres_and_survive_an_outage(postgres, pg_service):
    before = {classify(pg_service.url).json()["request_id"] for _ in range(5)}
    assert before <= wait_for_ids(postgres, before), "rows never reached PostgreSQL"

    postgres.stop()
    during = []
    for _ in range(8):
        response = classify(pg_service.url)
        assert response.status_code == 200, response.text  # requests don't fail...
        during.append(response.json()["request_id"])
    assert len(list((pg_service.state_dir / "spool").glob("*.jsonl"))) >= 1  # ...they spool

    postgres.start()
    everything = before | set(during)
    assert everything <= wait_for_ids(postgres, everything), "spooled rows were lost"
    assert not list((pg_service.state_dir / "spool").glob("*.jsonl"))


def test_graceful_shutdown_keeps_unwritten_records_for_the_next_start(postgres, pg_service):
    postgres.stop()
    ids = {classify(pg_service.url).json()["request_id"] for _ in range(4)}
    assert pg_service.stop() == 0
    assert list((pg_service.state_dir / "spool").glob("*.jsonl")), "shutdown lost the queue"
    postgres.start()
    restarted = ServiceProcess(pg_service.state_dir, {"BENTO_FLEET_DATABASE__URL": postgres.url})
    restarted.start()
    try:
        assert ids <= wait_for_ids(postgres, ids), "spool was not replayed after restart"
    finally:
        restarted.stop()


def test_overload_gets_fast_503_with_retry_after_and_admitted_requests_are_answered(pg_service):
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: classify(pg_service.url), range(48)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0, "a queue of 4 never overflowed under 24 clients"
    assert statuses.count(200) >= 4
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] == "overloaded"
        else:
            assert response.json()["label"] == "espresso"
    assert classify(pg_service.url).status_code == 200  # and it recovers at once


def test_a_row_postgres_refuses_is_dead_lettered_and_the_rest_arrive(postgres, tmp_path):
    """A label over 256 characters: PostgreSQL refuses the row (a DataError, not an outage)."""
    from service.cli import main as cli
    from service.store import PredictionLog, PredictionRecord

    def row(i, label="espresso"):
        return PredictionRecord(
            request_id=f"poison-{i}", model_name="m", model_version="1", class_index=967,
            label=label, confidence=0.9, latency_ms=10.0, image_width=320, image_height=240,
            image_bytes=1000,
        )  # fmt: skip

    url = sqlalchemy_url(postgres.url)
    log = PredictionLog(url, tmp_path / "spool", flush_interval_s=0.05, retry_interval_s=0.2)
    log.start()
    for i in range(30):
        log.record(row(i, "x" * 300 if i == 11 else "espresso"))
    eventually(lambda: log.written + log.dead_lettered == 30, "30 rows handled", timeout_s=20)
    log.close()
    expected = {f"poison-{i}" for i in range(30) if i != 11}
    assert {i for i in logged_ids(postgres) if i.startswith("poison-")} == expected
    [(error, refused)] = list(log.dead_letters.entries())
    assert refused["request_id"] == "poison-11" and "too long" in error

    # The operator's view and replay: still refused (the column is unchanged), so kept.
    env = {"BENTO_FLEET_DATABASE__URL": postgres.url, "BENTO_FLEET_STATE_DIR": str(tmp_path)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        from service.settings import get_settings

        get_settings.cache_clear()
        assert cli(["log", "dead-letters"]) == 0
        assert cli(["log", "dead-letters", "--replay"]) == 1
        get_settings.cache_clear()
    assert [r["request_id"] for _, r in log.dead_letters.entries()] == ["poison-11"]
