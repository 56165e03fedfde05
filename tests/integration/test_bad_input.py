"""Every kind of bad input gets its JSON error and status, and the server keeps serving."""

import json
import urllib.error
import urllib.request

import httpx
import pytest
from PIL import Image
from support import PHOTOS, encode, photo, png16

TEN_MB = 10 * 1024 * 1024


def post(service, path="/classify", **kwargs):
    return httpx.post(service.url + path, timeout=60, **kwargs)


def tiny_png() -> bytes:
    return encode(Image.new("RGB", (4, 4)), "PNG")


CASES = {
    "no body": ({"content": b""}, 400, "empty_body"),
    "empty image": ({"files": {"image": ("a.png", b"")}}, 400, "empty_body"),
    "not an image": ({"files": {"image": ("a.png", b"%PDF-1.4 hello")}}, 400, "not_an_image"),
    "truncated": (
        {"files": {"image": ("a.jpg", photo("rocket.jpg")[:6000])}},
        400,
        "truncated_image",
    ),
    "truncated webp": (
        {"files": {"image": ("a.webp", encode(Image.open(PHOTOS / "coffee.png"), "WEBP")[:3000])}},
        400,
        "truncated_image",
    ),
    "jpeg cut in its header": (
        {"files": {"image": ("a.jpg", photo("rocket.jpg")[:300])}},
        400,
        "truncated_image",
    ),
    "a 16-bit PNG of 40 MP (89 KB)": (
        {"files": {"image": ("a.png", png16(6000, 6666, color_type=0))}},
        413,
        "too_many_pixels",
    ),
    "unsupported format": (
        {"files": {"image": ("a.ico", encode(Image.new("RGB", (16, 16)), "ICO"))}},
        415,
        "unsupported_format",
    ),
    "too many bytes": (
        {"files": {"image": ("a.png", b"\x89PNG" + b"0" * (TEN_MB + 1))}},
        413,
        "payload_too_large",
    ),
    "too many pixels": (
        {"files": {"image": ("a.png", encode(Image.new("1", (8000, 6000)), "PNG"))}},
        413,
        "too_many_pixels",
    ),
    "decompression bomb": (
        {"files": {"image": ("a.png", encode(Image.new("1", (20000, 10000)), "PNG"))}},
        413,
        "too_many_pixels",
    ),
    "missing field": ({"files": {"picture": ("a.png", tiny_png())}}, 400, "missing_field"),
    "image as text": (
        {"data": {"image": "not a file"}, "files": {"x": ("x", b"x")}},
        400,
        "invalid_field",
    ),
    "malformed multipart": (
        {
            "content": b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\nx",
            "headers": {"Content-Type": "multipart/form-data"},  # no boundary
        },
        400,
        "invalid_field",
    ),
    "json body": ({"json": {"image": "aGVsbG8="}}, 400, "missing_field"),
    "top_k zero": (
        {"files": {"image": ("a.png", tiny_png())}, "data": {"top_k": "0"}},
        400,
        "invalid_top_k",
    ),
    "top_k too big": (
        {"files": {"image": ("a.png", tiny_png())}, "data": {"top_k": "21"}},
        400,
        "invalid_top_k",
    ),
    "top_k as a file": (
        {"files": {"image": ("a.png", tiny_png()), "top_k": ("k.txt", b"3")}},
        400,
        "invalid_top_k",
    ),
    "top_k not a number": (
        {"files": {"image": ("a.png", tiny_png())}, "data": {"top_k": "five"}},
        400,
        "invalid_top_k",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_json_error(service, case):
    kwargs, status, code = CASES[case]
    response = post(service, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    # ... and the server answers normally right after
    assert post(service, files={"image": ("c.png", photo("coffee.png"))}).status_code == 200


def test_streamed_body_over_the_limit_is_cut_off(service):
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(12):
            yield b"0" * (1024 * 1024)

    response = post(
        service, content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def urllib_post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    """urllib sends the whole body before it reads the answer (curl and httpx stop early)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_an_oversized_upload_gets_its_413_even_from_a_client_that_sends_it_all(service):
    # Issue 16: answered before the body was read, urllib got a connection reset instead.
    body = b"0" * (TEN_MB + 512 * 1024)
    status, answer = urllib_post(
        service.url + "/classify", body, {"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")


def test_a_streamed_oversized_upload_gets_its_413_from_a_client_that_sends_it_all(service):
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(12):
            yield b"0" * (1024 * 1024)

    request = urllib.request.Request(
        service.url + "/classify",
        data=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert json.load(caught.value)["error"]["code"] == "payload_too_large"


def test_too_many_images_in_a_batch(service):
    files = [("images", (f"{i}.png", tiny_png())) for i in range(65)]
    response = post(service, "/classify_batch", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_images"
    assert "65" in response.json()["error"]["message"]


def test_one_bad_image_in_a_batch_is_named(service):
    files = [("images", ("a.png", tiny_png())), ("images", ("b.png", b"nope"))]
    response = post(service, "/classify_batch", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("images[1]:")


def test_a_text_field_in_a_batch_is_named(service):
    response = post(
        service,
        "/classify_batch",
        files=[("images", ("a.png", tiny_png()))],
        data={"images": "not a file"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field" and error["message"].startswith("images[")


def test_rejections_are_counted_by_code(service):
    post(service, files={"image": ("a.png", b"garbage")})
    metrics = httpx.get(service.url + "/metrics", timeout=10).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith('bento_fleet_rejected_inputs_total{code="not_an_image"}')
    )
    assert float(line.split()[-1]) >= 1
