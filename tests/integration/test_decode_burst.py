"""A burst of images that are small on the wire and costly to decode does not take the service
from other clients: they are admitted and answered while it decodes, and more of the burst is
refused with 503 and Retry-After instead of queueing behind it."""

import io
import threading

import httpx
import pytest
from PIL import Image
from support import ServiceProcess, eventually, jpeg_of, metric

PHOTO = jpeg_of("coffee.png", (320, 240))


def flat_png(width: int, height: int) -> bytes:
    """12 MP of one colour: 40 KB on the wire, a fifth of a second and 36 MB to decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


HEAVY = flat_png(4000, 3000)


@pytest.fixture
def service(tmp_path):
    server = ServiceProcess(tmp_path, {"BENTO_FLEET_BATCHING__CALIBRATE": "false"}).start()
    yield server
    server.stop()


def heavy_batch(url: str, images: int = 64) -> httpx.Response:
    files = [("images", (f"{i}.png", HEAVY, "image/png")) for i in range(images)]
    return httpx.post(url + "/classify_batch", files=files, timeout=300)


def test_photos_are_answered_while_a_burst_of_heavy_images_decodes(service):
    # A full batch of heavy images, on an idle server: admitted, and seconds of decoding.
    first: list[httpx.Response] = []
    burst = threading.Thread(target=lambda: first.append(heavy_batch(service.url)))
    burst.start()
    eventually(
        lambda: metric(service, 'bento_fleet_decode_backlog_seconds{lane="heavy"}') > 0,
        "the heavy batch admitted and decoding",
    )

    # While it decodes, more of the burst is refused at once, with a reason and a retry time.
    refused = heavy_batch(service.url)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "overloaded"
    assert "heavy images waiting to decode" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1

    # Photos are admitted and answered while it decodes: the batch holds neither the decode
    # threads they need nor 64 places in the batcher's queue (64 is the queue's size). Once
    # decoded, its 64 images are the model's work and do fill the queue for a while.
    def decoding() -> bool:
        return metric(service, 'bento_fleet_decode_backlog_seconds{lane="heavy"}') > 0

    answered_during = 0
    while True:
        response = httpx.post(
            service.url + "/classify", files={"image": ("c.jpg", PHOTO)}, timeout=60
        )
        # Still decoding once answered: the batch's images were not in the queue at any time
        # while this photo was admitted (they enter it when the last one is decoded).
        if not decoding():
            break
        assert response.status_code == 200, response.text
        assert response.json()["label"] == "espresso"
        answered_during += 1
    burst.join()
    assert answered_during >= 3, "the heavy batch was decoded before photos were sent"

    (batch,) = first
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["results"]) == 64
    assert metric(service, 'bento_fleet_decode_backlog_seconds{lane="heavy"}') == 0
