"""jpeg_decode: device through a real `bentoml serve`, on the CPU (the same path nvJPEG takes on
a GPU, tests/gpu): the Pillow path's answers, and a broken JPEG in a batch gets the Pillow
path's 400 without failing its batch or the server."""

import httpx
import pytest
from support import ServiceProcess, jpeg_of, jpeg_without_quantization_tables, metric, photo

DECODED = 'bento_fleet_device_decoded_images_total{outcome="decoded"}'
FALLBACK = 'bento_fleet_device_decoded_images_total{outcome="fallback"}'


@pytest.fixture(scope="module")
def on_device(tmp_path_factory):
    server = ServiceProcess(
        tmp_path_factory.mktemp("device-decode"),
        {
            "BENTO_FLEET_JPEG_DECODE": "device",
            "BENTO_FLEET_BATCHING__CALIBRATE": "false",
            # Images drawn for drift statistics take the Pillow path: draw (almost) none.
            "BENTO_FLEET_DRIFT__STATISTICS_SHARE": "0.000001",
        },
    ).start()
    yield server
    server.stop()


def classify(server, name: str, data: bytes) -> httpx.Response:
    return httpx.post(server.url + "/classify", files={"image": (name, data)}, timeout=60)


def test_jpegs_get_the_pillow_paths_answers(on_device, service):
    assert httpx.get(on_device.url + "/model", timeout=10).json()["jpeg_decode"] == "device"
    assert httpx.get(service.url + "/model", timeout=10).json()["jpeg_decode"] == "pillow"
    decoded = metric(on_device, DECODED)
    for name, data in [("rocket.jpg", photo("rocket.jpg")), ("c.jpg", jpeg_of("coffee.png"))]:
        device, pillow = classify(on_device, name, data), classify(service, name, data)
        assert device.status_code == pillow.status_code == 200, device.text
        assert device.json()["label"] == pillow.json()["label"]
        assert abs(device.json()["confidence"] - pillow.json()["confidence"]) < 0.02
        assert device.json()["image"] == pillow.json()["image"]
    assert metric(on_device, DECODED) == decoded + 2


def test_a_broken_jpeg_in_a_batch_gets_the_pillow_paths_400(on_device, service):
    images = [photo("rocket.jpg"), jpeg_without_quantization_tables(), jpeg_of("coffee.png")]
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    fallbacks = metric(on_device, FALLBACK)
    answers = [
        httpx.post(server.url + "/classify_batch", files=files, timeout=60)
        for server in (on_device, service)
    ]
    device, pillow = (answer.json()["error"] for answer in answers)
    assert [answer.status_code for answer in answers] == [400, 400]
    assert device == pillow and device["code"] == "not_an_image"
    assert device["message"].startswith("images[1]: ")
    assert metric(on_device, FALLBACK) == fallbacks + 1
    assert classify(on_device, "c.jpg", jpeg_of("coffee.png")).json()["label"] == "espresso"


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("cut in its scan", photo("rocket.jpg")[:6000], "truncated_image"),
        ("cut in its header", photo("rocket.jpg")[:300], "truncated_image"),
        ("no quantization tables", jpeg_without_quantization_tables(), "not_an_image"),
    ],
)
def test_bad_jpegs_get_their_400(on_device, name, data, code):
    answer = classify(on_device, "a.jpg", data)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, code), name
