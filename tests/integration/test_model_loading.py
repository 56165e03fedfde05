"""A model that fails to load: the service stays up and says so with its own code, at once and
for good, so a deploy's wait (bento_service's wait_ready.yml) ends with the reason instead of a
timeout; while it loads it says `model_loading`, with Retry-After. Inference is refused the
same way, before the body is read."""

import httpx
import pytest
import torch
import yaml
from support import ServiceProcess, eventually, photo

from service.serving.model import default_weights_path


@pytest.fixture(scope="module")
def broken_service(tmp_path_factory):
    state = tmp_path_factory.mktemp("broken")
    weights = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    torch.save({name: t.float() * float("nan") for name, t in weights.items()}, state / "nan.pth")
    config = {"model": {"weights_path": str(state / "nan.pth")}, "drift": {"interval_s": 0}}
    (state / "config.yaml").write_text(yaml.safe_dump(config))
    env = {"BENTO_FLEET_CONFIG": str(state / "config.yaml")}
    server = ServiceProcess(state, env).start(probe="/livez")
    yield server
    server.stop()


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def test_loading_then_load_failed_with_the_reason(broken_service):
    seen = []

    def settled():
        answer = httpx.get(broken_service.url + "/model", timeout=10)
        seen.append((answer.status_code, error_of(answer), answer.headers.get("retry-after")))
        return answer if error_of(answer) == "load_failed" else None

    failed = eventually(settled, "GET /model answering load_failed", timeout_s=120)
    assert failed.status_code == 503 and "retry-after" not in failed.headers
    assert "non-finite output" in failed.json()["error"]["message"]
    # Every answer before it said the model was loading, and when to ask again.
    assert set(seen[:-1]) <= {(503, "model_loading", "5")}
    assert httpx.get(broken_service.url + "/readyz", timeout=10).status_code == 503


def test_inference_is_refused_with_the_same_code(broken_service):
    eventually(
        lambda: error_of(httpx.get(broken_service.url + "/model", timeout=10)) == "load_failed",
        "load_failed",
        timeout_s=120,
    )
    answer = httpx.post(
        broken_service.url + "/classify",
        files={"image": ("c.png", photo("coffee.png"))},
        timeout=30,
    )
    assert answer.status_code == 503 and error_of(answer) == "load_failed"
    assert "non-finite output" in answer.json()["error"]["message"]
