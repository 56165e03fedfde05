"""A/B variants and shadows on the real service: sticky assignment, a healthy shadow logged
beside the answer, and a broken candidate (its output is NaN) that clients never notice: it
is refused at load, reported, and the service serves on. A shadow failing per request is
contained the same way (tests/unit/test_shadow.py)."""

import httpx
import pytest
import torch
import yaml
from sqlalchemy import text
from support import AUTH, ServiceProcess, accuracy_of, eventually, metric, photo, prediction_log

from service.serving.model import default_weights_path


@pytest.fixture(scope="module")
def ab_service(tmp_path_factory):
    state = tmp_path_factory.mktemp("variants")
    weights = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    broken = {name: tensor.float() * float("nan") for name, tensor in weights.items()}
    torch.save(broken, state / "nan.pth")
    config = {
        "batching": {"calibrate": False, "max_latency_ms": 60000},
        "feedback": {"lookup_wait_s": 1, "refresh_s": 1},
        # Trusted here, as a gateway that sets it would be (nginx_client_key).
        "experiment": {"client_key_header": "X-Client-Key"},
        "drift": {"interval_s": 0},
        "variants": [
            {"name": "main", "weight": 1, "model": {"version": "1"}},
            {"name": "candidate", "weight": 1, "model": {"version": "2", "input_size": 256}},
            {"name": "shadow-ok", "shadow": True, "model": {"version": "3"}},
            {
                "name": "shadow-nan",
                "shadow": True,
                "model": {"version": "4", "weights_path": str(state / "nan.pth")},
            },
        ],
    }
    (state / "config.yaml").write_text(yaml.safe_dump(config))
    server = ServiceProcess(state, {"BENTO_FLEET_CONFIG": str(state / "config.yaml")}).start()
    yield server
    server.stop()


def logged_requests(db, pattern: str) -> int:
    """Requests whose served answer has reached the prediction log, by request id pattern."""
    query = text(
        "SELECT COUNT(DISTINCT request_id) FROM predictions"
        " WHERE request_id LIKE :pattern AND role = 'serve'"
    )
    with db.connect() as connection:
        return connection.execute(query, {"pattern": pattern}).scalar_one()


def classify(service, key=None, request_id=None):
    headers = {"X-Client-Key": key} if key else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    answer = httpx.post(
        service.url + "/classify",
        files={"image": ("coffee.png", photo("coffee.png"))},
        headers=headers,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_client_key_sticks_and_keys_spread_over_both_variants(ab_service):
    for key in ("alice", "bob"):
        assert len({classify(ab_service, key)["variant"] for _ in range(6)}) == 1
    seen = {classify(ab_service, f"client-{i}")["variant"] for i in range(24)}
    assert seen == {"main", "candidate"}  # P(one variant only) = 2 * 0.5**24


def test_the_broken_shadow_never_reaches_clients(ab_service, service):
    plain = httpx.post(
        service.url + "/classify", files={"image": ("c.png", photo("coffee.png"))}, timeout=60
    ).json()
    answers = [classify(ab_service, "alice") for _ in range(5)]
    for answer in answers:
        if answer["variant"] == "main":  # same model, same image: same answer as no shadows
            assert answer["top_k"] == plain["top_k"]
        assert answer["label"] == "espresso"
    card = httpx.get(ab_service.url + "/model", timeout=30).json()
    ready = {v["name"]: v["ready"] for v in card["variants"]}
    assert ready == {
        "main": True,
        "candidate": True,
        "shadow-ok": True,
        "shadow-nan": False,
    }
    (nan,) = [v for v in card["variants"] if v["name"] == "shadow-nan"]
    assert "non-finite output" in nan["load_error"]
    assert metric(ab_service, 'bento_fleet_variant_up{role="shadow",variant="shadow-nan"}') == 0


def test_the_log_holds_served_and_shadow_answers_with_their_variant(ab_service):
    classify(ab_service, request_id="ab-logged")
    db = prediction_log(ab_service.state_dir)

    def both_rows():
        with db.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT variant, role, model_version FROM predictions"
                    " WHERE request_id = 'ab-logged'"
                )
            ).all()
        return rows if len(rows) == 2 else None

    rows = eventually(both_rows, "the served and the shadow row of ab-logged", timeout_s=20)
    served = [r for r in rows if r.role == "serve"]
    assert len(served) == 1 and served[0].variant in ("main", "candidate")
    assert [(r.variant, r.model_version) for r in rows if r.role == "shadow"] == [
        ("shadow-ok", "3")
    ]


def test_feedback_scores_the_shadow_on_the_same_images(ab_service):
    for i in range(3):
        classify(ab_service, request_id=f"ab-fb-{i}")
    db = prediction_log(ab_service.state_dir)
    eventually(lambda: logged_requests(db, "ab-fb-%") == 3, "the three requests in the log")
    for i in range(3):
        answer = httpx.post(
            ab_service.url + "/feedback",
            json={"request_id": f"ab-fb-{i}", "label": "espresso"},
            headers=AUTH,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    shadow = accuracy_of(ab_service, "shadow-ok", samples=3)
    assert shadow["role"] == "shadow" and shadow["top1"] == 1.0
