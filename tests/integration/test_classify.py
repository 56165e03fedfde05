"""The served API against a real `bentoml serve` process on loopback."""

import concurrent.futures
import re
import uuid

import httpx
import torch
from PIL import Image
from sqlalchemy import text
from support import PHOTOS, encode, eventually, jpeg_of, metric, photo, prediction_log


def classify(service, data: bytes, name="photo.png", **form):
    return httpx.post(
        service.url + "/classify", files={"image": (name, data)}, data=form, timeout=60
    )


def test_real_photos_get_the_right_labels(service):
    coffee = classify(service, photo("coffee.png"))
    assert coffee.status_code == 200, coffee.text
    body = coffee.json()
    assert body["label"] == "espresso" and body["confidence"] > 0.8
    assert body["class_index"] == 967
    assert len(body["top_k"]) == 5 and body["top_k"][0]["label"] == "espresso"
    assert body["model"] == {"name": "efficientnet_lite0", "version": "1"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert coffee.headers["x-request-id"] == body["request_id"]
    assert classify(service, photo("rocket.jpg")).json()["label"] in ("missile", "projectile")
    cat = classify(service, photo("chelsea.png"), top_k="2").json()
    assert len(cat["top_k"]) == 2 and any("cat" in t["label"] for t in cat["top_k"])


def test_client_request_id_is_kept(service):
    response = httpx.post(
        service.url + "/classify",
        files={"image": ("c.jpg", jpeg_of("coffee.png"))},
        headers={"X-Request-ID": "client-42"},
        timeout=60,
    )
    assert response.json()["request_id"] == "client-42"


def test_the_access_log_has_each_requests_line_with_its_trace(service):
    """BentoML's access log, written by a thread of the worker (service/api/access_log.py)."""
    path = f"/no-such-page-{uuid.uuid4().hex}"
    assert httpx.get(service.url + path, timeout=10).status_code == 404
    line = eventually(
        lambda: next((line for line in service.log().splitlines() if path in line), None),
        "the access log's line",
        timeout_s=10,
        interval_s=0.1,
    )
    assert re.search(
        rf"\[INFO\] \[entry_service:[^]]+\] 127\.0\.0\.1:\d+ "
        rf"\(scheme=http,method=GET,path={path}[,)].*\(status=404[,)].* [0-9.]+ms "
        r"\(trace=[0-9a-f]{32},span=[0-9a-f]{16},",
        line,
    ), line


def test_batch_results_come_back_in_input_order(service):
    names = ["rocket.jpg", "coffee.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    files = [("images", (n, photo(n))) for n in names]
    response = httpx.post(service.url + "/classify_batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    labels = [r["label"] for r in response.json()["results"]]
    assert labels[1] == labels[3] == "espresso"
    assert labels[0] == labels[4] != "espresso"
    widths = [Image.open(PHOTOS / n).size[0] for n in names]
    assert [r["image"]["width"] for r in response.json()["results"]] == widths


def test_the_largest_batch_is_served_on_an_idle_server(service):
    # Issue 16: with the queue smaller than max_batch_images, such a batch got 503 for ever.
    limit = httpx.get(service.url + "/model").json()["limits"]["max_batch_images"]
    data = jpeg_of("coffee.png", (64, 48))
    files = [("images", (f"{i}.jpg", data)) for i in range(limit)]
    response = httpx.post(service.url + "/classify_batch", files=files, timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == limit


def test_concurrent_requests_are_batched(service):
    count_before = metric(service, "bento_fleet_batch_size_count")
    sum_before = metric(service, "bento_fleet_batch_size_sum")
    data = jpeg_of("coffee.png", (320, 240))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: classify(service, data, "c.jpg"), range(48)))
    failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not failed, failed
    assert {r.json()["label"] for r in responses} == {"espresso"}
    batches = metric(service, "bento_fleet_batch_size_count") - count_before
    images = metric(service, "bento_fleet_batch_size_sum") - sum_before
    assert images == 48
    assert batches < 48, "no batch ever held more than one image"


def test_model_card(service):
    card = httpx.get(service.url + "/model", timeout=10).json()
    assert card["architecture"] == "efficientnet_lite0"
    # "auto": the GPU in half precision where there is one (tests/gpu), else the CPU in float32.
    expected = ("cuda", "float16") if torch.cuda.is_available() else ("cpu", "float32")
    assert (card["device"], card["dtype"]) == expected
    assert len(card["classes"]) == 1000 and card["classes"][967] == "espresso"
    assert len(card["weights_sha256"]) == 64
    assert card["input_size"] == [3, 224, 224]
    assert card["batching"]["max_batch_size"] == 32
    assert card["parameters"] > 1_000_000


def test_health_metrics_and_openapi(service):
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(service.url + path, timeout=10).status_code == 200
    metrics = httpx.get(service.url + "/metrics", timeout=10).text
    for name in (
        "bento_fleet_inference_seconds_bucket",
        "bento_fleet_preprocess_seconds_bucket",
        "bento_fleet_prediction_confidence_bucket",
        'bento_fleet_predictions_total{label="espresso",role="serve",variant="main"}',
        "bento_fleet_rejected_inputs_total",
        "bento_fleet_queue_capacity 64.0",  # the default batching.max_queue_size
        "bento_fleet_prediction_log_dropped_total 0.0",
        "bento_fleet_prediction_log_dead_letters_total 0.0",
        'bentoml_service_request_total{endpoint="/classify"',
    ):
        assert name in metrics, name
    spec = httpx.get(service.url + "/docs.json", timeout=10).json()
    assert {"/classify", "/classify_batch", "/model"} <= set(spec["paths"])
    assert "bento-fleet image classifier" in httpx.get(service.url + "/", timeout=10).text


def test_predictions_are_logged_to_sqlite(service):
    response = classify(service, photo("coffee.png"))
    request_id = response.json()["request_id"]
    engine = prediction_log(service.state_dir)
    query = text(
        "SELECT label, confidence, image_width, image_height, image_bytes, latency_ms "
        "FROM predictions WHERE request_id = :rid"
    )

    def logged_row():
        with engine.connect() as conn:
            return conn.execute(query, {"rid": request_id}).first()

    row = eventually(logged_row, "the prediction in the log", timeout_s=10, interval_s=0.2)
    assert row.label == "espresso" and row.confidence > 0.8
    assert (row.image_width, row.image_height) == (600, 400)
    assert row.image_bytes == len(photo("coffee.png")) and row.latency_ms > 0


def test_every_format_over_http(service):
    image = Image.open(PHOTOS / "coffee.png").convert("RGB")
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        response = classify(service, encode(image, fmt), f"x.{fmt.lower()}")
        assert response.status_code == 200, (fmt, response.text)
        assert response.json()["image"]["format"] == fmt
        if fmt != "GIF":  # 256 colours may move the top class
            assert response.json()["label"] == "espresso", fmt
