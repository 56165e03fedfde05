"""BentoML's own clients against a real `bentoml serve` (issue 17): they find every endpoint in
the service's schema, call it with a Path or a PIL image, and get the documented answers and the
documented errors (status and JSON body) exactly as curl does."""

import asyncio
import json
import os
import subprocess
import sys

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException
from PIL import Image
from support import API_KEY, PHOTOS, REPO, eventually

from service.api.answers import BatchClassification, Classification, FeedbackAnswer

ENDPOINTS = {"classify", "classify_batch", "feedback", "model", "stats"}


@pytest.fixture(scope="module")
def client(service):
    with bentoml.SyncHTTPClient(service.url, timeout=60) as client:
        yield client


def error_of(exc: BentoMLException) -> tuple[int, dict]:
    """The status and JSON error the client raised with: the server's answer, unchanged."""
    return int(exc.error_code), json.loads(str(exc))["error"]


def test_the_schema_lists_every_endpoint_and_its_typed_answer(service, client):
    assert set(client.endpoints) >= ENDPOINTS
    schema = httpx.get(service.url + "/schema.json", timeout=10).json()
    routes = {route["name"]: route for route in schema["routes"]}
    assert routes["classify"]["route"] == "/classify"
    assert routes["classify"]["input"]["properties"]["image"]["type"] == "file"
    assert routes["classify_batch"]["input"]["properties"]["images"]["items"]["type"] == "file"
    assert "confidence" in json.dumps(routes["classify"]["output"])


def test_classify_takes_a_path_or_a_pil_image(client):
    by_path = Classification.model_validate(client.classify(image=PHOTOS / "coffee.png"))
    assert by_path.label == "espresso" and len(by_path.top_k) == 5
    by_image = client.classify(image=Image.open(PHOTOS / "chelsea.png"), top_k=2)
    by_image = Classification.model_validate(by_image)
    assert len(by_image.top_k) == 2 and any("cat" in c.label for c in by_image.top_k)
    assert by_path.request_id != by_image.request_id


def test_classify_batch_answers_in_input_order(client):
    names = ["rocket.jpg", "coffee.png", "chelsea.png"]
    answer = client.classify_batch(images=[PHOTOS / name for name in names], top_k=3)
    answer = BatchClassification.model_validate(answer)
    assert answer.results[1].label == "espresso"
    assert [r.image.width for r in answer.results] == [Image.open(PHOTOS / n).width for n in names]


def test_model_and_stats(client):
    assert client.model()["name"] == "efficientnet_lite0"
    assert client.stats()["ready"] is True


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (
            lambda c, p: c.classify(image=p("not.jpg", b"plain text, not an image")),
            400,
            "not_an_image",
        ),
        (lambda c, p: c.classify(image=PHOTOS / "coffee.png", top_k=0), 400, "invalid_top_k"),
        (
            lambda c, p: c.classify(image=p("big.jpg", b"\xff" * (11 << 20))),
            413,
            "payload_too_large",
        ),
        (
            lambda c, p: c.classify_batch(images=[PHOTOS / "coffee.png"] * 65),
            400,
            "too_many_images",
        ),
        (lambda c, p: c.feedback(request_id="x" * 32, label="espresso"), 401, "unauthorized"),
    ],
    ids=["not an image", "top_k 0", "11 MB", "65 images", "feedback without a key"],
)
def test_errors_reach_the_client_as_documented(client, tmp_path, call, status, code):
    def upload(name: str, data: bytes):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    with pytest.raises(BentoMLException) as raised:
        call(client, upload)
    got_status, error = error_of(raised.value)
    assert (got_status, error["code"]) == (status, code), error


def test_feedback_with_a_key_records_who_sent_it(service, client):
    answered = client.classify(image=PHOTOS / "coffee.png")
    with bentoml.SyncHTTPClient(service.url, token=API_KEY, timeout=60) as keyed:
        given = eventually(
            lambda: try_feedback(keyed, answered["request_id"]), "the prediction logged"
        )
    assert FeedbackAnswer.model_validate(given).labelled_by == "tests"
    with (
        bentoml.SyncHTTPClient(service.url, token="not-a-key", timeout=60) as wrong,
        pytest.raises(BentoMLException) as raised,
    ):
        wrong.feedback(request_id=answered["request_id"], label="espresso")
    status, error = error_of(raised.value)
    assert (status, error["code"]) == (403, "forbidden")


def try_feedback(client, request_id: str):
    try:
        return client.feedback(request_id=request_id, label="espresso")
    except BentoMLException as exc:
        if error_of(exc)[1]["code"] != "unknown_request":
            raise
        return None


def test_the_async_client(service):
    async def calls():
        async with bentoml.AsyncHTTPClient(service.url, timeout=60) as client:
            answer = await client.classify(image=PHOTOS / "coffee.png")
            with pytest.raises(BentoMLException) as raised:
                await client.classify(image=PHOTOS / "coffee.png", top_k=99)
            return answer, raised.value

    answer, error = asyncio.run(calls())
    assert Classification.model_validate(answer).label == "espresso"
    assert error_of(error)[1]["code"] == "invalid_top_k"


IN_PROCESS = """
import asyncio, json, sys, time
from pathlib import Path
from service.service import ImageClassifier

photos = Path(sys.argv[1])
service = ImageClassifier()
deadline = time.monotonic() + 60
while not service.__is_ready__() and time.monotonic() < deadline:
    time.sleep(0.2)


async def calls():
    one = await service.classify(image=photos / "coffee.png", top_k=3)
    batch = await service.classify_batch(images=[photos / "coffee.png", photos / "rocket.jpg"])
    given = await service.feedback(request_id=one.request_id, label="espresso")
    await service.flush_logs()
    return {"one": one.model_dump(), "batch": batch.model_dump(), "feedback": given.model_dump(),
            "model": service.model()["name"]}

print(json.dumps(asyncio.run(calls())))
"""


def test_the_api_methods_called_in_process(tmp_path):
    """What `bentoml.depends` or a test calls without HTTP: the same answers, typed."""
    env = {
        **os.environ,
        "BENTO_FLEET_STATE_DIR": str(tmp_path),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(PHOTOS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert Classification.model_validate(answers["one"]).label == "espresso"
    assert BatchClassification.model_validate(answers["batch"]).results[0].label == "espresso"
    assert answers["feedback"]["labelled_by"] == "in-process"
    assert answers["model"] == "efficientnet_lite0"
