"""POST /feedback and GET /stats on the real service: true labels in, accuracy out."""

import httpx
import pytest
from sqlalchemy import text
from support import API_KEY, API_KEY_NAME, AUTH, accuracy_of, jpeg_of, metric, photo, prediction_log


def post_feedback(service, headers=AUTH, **body):
    return httpx.post(service.url + "/feedback", json=body, headers=headers, timeout=30)


def classify_coffee(service, request_id):
    answer = httpx.post(
        service.url + "/classify",
        files={"image": ("coffee.png", photo("coffee.png"))},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_feedback_is_stored_and_scored_per_variant(service):
    right = classify_coffee(service, "fb-right")
    assert right["label"] == "espresso" and right["variant"] == "main"
    classify_coffee(service, "fb-top5")
    classify_coffee(service, "fb-wrong")
    stored = post_feedback(service, request_id="fb-right", label="espresso")
    assert stored.status_code == 200, stored.text
    assert stored.json() == {
        "request_id": "fb-right",
        "index": 0,
        "label": "espresso",
        "class_index": 967,
        "variant": "main",
        "labelled_by": API_KEY_NAME,
    }
    assert post_feedback(service, request_id="fb-top5", label="cup").status_code == 200
    assert post_feedback(service, request_id="fb-wrong", class_index=1).status_code == 200

    # The labels are stored at once; the predictions they score reach the log within a flush.
    main = accuracy_of(service, "main", samples=3)
    # Other tests may label more requests; these three are right, top-5 and wrong.
    assert main["samples"] >= 3 and main["role"] == "serve"
    assert 0 < main["top1"] < main["top5"] <= 1
    labels = 'model_version="1",role="serve",variant="main"'
    assert (
        round(metric(service, f'bento_fleet_accuracy_ratio{{k="1",{labels}}}'), 4) == main["top1"]
    )
    assert metric(service, 'bento_fleet_feedback_total{variant="main"}') >= 3


def test_feedback_for_the_second_image_of_a_batch(service):
    answer = httpx.post(
        service.url + "/classify_batch",
        files=[
            ("images", ("a.jpg", jpeg_of("chelsea.png"))),
            ("images", ("b.png", photo("coffee.png"))),
        ],
        headers={"X-Request-ID": "fb-batch"},
        timeout=60,
    )
    assert answer.status_code == 200
    assert (
        post_feedback(service, request_id="fb-batch", index=1, label="espresso").status_code == 200
    )
    out_of_range = post_feedback(service, request_id="fb-batch", index=2, label="espresso")
    assert out_of_range.status_code == 422
    assert out_of_range.json()["error"]["code"] == "invalid_index"
    assert "had 2 image(s)" in out_of_range.json()["error"]["message"]


def test_bad_feedback_gets_a_clear_4xx(service):
    classify_coffee(service, "fb-bad")
    cases = [
        ({"request_id": "never-seen", "label": "espresso"}, 404, "unknown_request", "never-seen"),
        ({"request_id": "fb-bad", "label": "flying saucer"}, 422, "invalid_label", "1000 classes"),
        ({"request_id": "fb-bad", "class_index": 1000}, 422, "invalid_label", "out of range"),
        (
            {"request_id": "fb-bad", "label": "espresso", "class_index": 3},
            422,
            "invalid_label",
            "967",
        ),
        ({"request_id": "fb-bad"}, 400, "missing_field", "label"),
        ({"label": "espresso"}, 400, "missing_field", "request_id"),
        ({"request_id": "bad id!", "label": "espresso"}, 400, "invalid_field", "request_id"),
    ]
    for body, status, code, mentioned in cases:
        answer = post_feedback(service, **body)
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert error["code"] == code and mentioned in error["message"], (body, error)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": f"Basic {API_KEY}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer bfk_a-guess"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {API_KEY}x"}, 403, "forbidden"),
    ],
)
def test_feedback_without_the_right_key_is_refused_and_stores_nothing(
    service, headers, status, code
):
    classify_coffee(service, "fb-auth")
    answer = post_feedback(service, headers=headers, request_id="fb-auth", label="cup")
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert ("www-authenticate" in answer.headers) is (status == 401)
    with prediction_log(service.state_dir).connect() as connection:
        stored = connection.execute(
            text("SELECT count(*) FROM feedback WHERE request_id = 'fb-auth'")
        )
        assert stored.scalar() == 0


def test_each_label_records_the_key_that_sent_it(service):
    classify_coffee(service, "fb-sender")
    assert post_feedback(service, request_id="fb-sender", label="espresso").status_code == 200
    with prediction_log(service.state_dir).connect() as connection:
        sender = connection.execute(
            text("SELECT labelled_by FROM feedback WHERE request_id = 'fb-sender'")
        )
        assert sender.scalar() == API_KEY_NAME


def test_stats_reports_requests_latency_batches_and_uptime(service):
    classify_coffee(service, "stats-1")
    httpx.post(service.url + "/classify", files={"image": ("x.txt", b"not an image")}, timeout=30)
    stats = httpx.get(service.url + "/stats", timeout=30).json()
    assert stats["ready"] is True and stats["uptime_s"] > 0
    assert stats["requests"] >= 1 and stats["requests_by_variant"]["main"] >= 1
    assert stats["errors_by_code"]["not_an_image"] >= 1
    latency = stats["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert stats["batch_sizes"]["batches"] >= 1 and stats["batch_sizes"]["mean"] >= 1
    assert stats["accuracy_window"] == {"count": 1000, "seconds": 86400.0}
