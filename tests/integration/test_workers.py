"""Several worker processes (`workers`, set from a GPU host's cores by the bento_service role):
each loads its model and answers, the requests of all are logged once each, their metrics add
up on /metrics, and feedback for a request one worker answered is taken by any of them."""

import time
import uuid

import httpx
import pytest
from sqlalchemy import text
from support import AUTH, ServiceProcess, eventually, metric, photo, prediction_log

REQUESTS = 16
PREDICTIONS = 'bento_fleet_predictions_total{label="espresso",role="serve",variant="main"}'


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    server = ServiceProcess(
        tmp_path_factory.mktemp("workers"),
        {
            "BENTO_FLEET_WORKERS": "2",
            "BENTO_FLEET_BATCHING__CALIBRATE": "false",
            "BENTO_FLEET_BATCHING__MAX_LATENCY_MS": "60000",
            "BENTO_FLEET_FEEDBACK__LOOKUP_WAIT_S": "5",
        },
    ).start(timeout_s=300)

    # start() returns once one /readyz answers, which either worker may give: on a slow host
    # the other was still loading its model and answered /model with 503. Each request is a new
    # connection, handed to either worker; wait until each has answered one with 200.
    def both_ready():
        httpx.get(server.url + "/model", timeout=10)
        return all(answered(server, worker, "/model") for worker in (1, 2))

    eventually(both_ready, "both workers ready", timeout_s=300)
    yield server
    server.stop()


def answered(server, worker: int, path: str) -> bool:
    """Whether the access log shows worker `worker` answering `path` with 200."""
    return any(
        f"classifier:{worker}] 127.0.0.1" in line
        and f"path={path}," in line
        and "status=200" in line
        for line in server.log_path.read_text().splitlines()
    )


def classify(server, request_id: str) -> httpx.Response:
    for _ in range(20):  # two models on two cores: a refusal says when to come back
        answer = httpx.post(
            server.url + "/classify",
            files={"image": ("coffee.png", photo("coffee.png"))},
            headers={"X-Request-ID": request_id},
            timeout=60,
        )
        if answer.status_code != 503:
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    return answer


def test_every_worker_answers_and_each_request_is_logged_once(two_workers):
    assert httpx.get(two_workers.url + "/model", timeout=10).json()["workers"] == 2
    ids = [f"w-{uuid.uuid4().hex[:12]}" for _ in range(REQUESTS)]
    answers = [classify(two_workers, request_id) for request_id in ids]
    assert [a.status_code for a in answers] == [200] * REQUESTS
    assert {a.json()["label"] for a in answers} == {"espresso"}
    for worker in (1, 2):  # the kernel hands each new connection to either: both serve
        assert answered(two_workers, worker, "/classify")

    def logged():
        with prediction_log(two_workers.state_dir).connect() as db:
            rows = db.execute(
                text("select request_id from predictions where request_id like 'w-%'")
            ).scalars()
            found = sorted(rows)
        return found if len(found) >= REQUESTS else None

    assert eventually(logged, "every request in the prediction log") == sorted(ids)
    assert metric(two_workers, PREDICTIONS) >= REQUESTS  # both workers' counts, summed


def test_feedback_reaches_the_request_whichever_worker_answered_it(two_workers):
    # Ten requests: about half are answered by the worker that does not get their feedback.
    ids = [f"f-{uuid.uuid4().hex[:12]}" for _ in range(10)]
    for request_id in ids:
        assert classify(two_workers, request_id).status_code == 200
    for request_id in ids:
        stored = httpx.post(
            two_workers.url + "/feedback",
            json={"request_id": request_id, "label": "espresso"},
            headers=AUTH,
            timeout=30,
        )
        assert stored.status_code == 200, stored.text
        assert stored.json()["class_index"] == 967
