"""Drift detection with the real model: the same photos recompressed do not alarm; a
brightness or blur shift of the same photos does, on the features that changed. The
reference comes from a folder (the CLI), the windows from what the service really logged,
and the service's own periodic job publishes the verdicts in /metrics."""

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from sqlalchemy import text
from support import ServiceProcess, encode, eventually, metric, photo_crops, prediction_log

from service.store.drift_runs import latest_results

COUNT = 80
CLI = [str(Path(sys.executable).parent / "bento-fleet")]


@pytest.fixture(scope="module")
def pictures():
    crops = photo_crops(COUNT)
    originals = [encode(crop, "JPEG", quality=92) for crop in crops]
    return {
        "reference": originals,
        "recompressed": [
            encode(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality=85)
            for data in originals
        ],
        "brighter": [
            encode(ImageEnhance.Brightness(crop).enhance(1.5), "JPEG", quality=92) for crop in crops
        ],
        "blurred": [
            encode(crop.filter(ImageFilter.GaussianBlur(2.5)), "JPEG", quality=92) for crop in crops
        ],
    }


@pytest.fixture(scope="module")
def drift_service(tmp_path_factory, pictures):
    state = tmp_path_factory.mktemp("drift")
    env = {
        "BENTO_FLEET_STATE_DIR": str(state),
        "BENTO_FLEET_BATCHING__CALIBRATE": "false",
        "BENTO_FLEET_BATCHING__MAX_LATENCY_MS": "60000",
        "BENTO_FLEET_DRIFT__WINDOW_COUNT": str(COUNT),
        "BENTO_FLEET_DRIFT__INTERVAL_S": "2",
        "BENTO_FLEET_DRIFT__REFERENCE_FIRST_N": "0",
        "BENTO_FLEET_DRIFT__STATISTICS_SHARE": "1",  # each of the 80 photos counts ...
        "BENTO_FLEET_DRIFT__STATISTICS_PER_SECOND": "100000",  # ... however fast they come
    }
    folder = state / "reference-images"
    folder.mkdir()
    for i, data in enumerate(pictures["reference"]):
        (folder / f"{i:03d}.jpg").write_bytes(data)
    made = cli(env, "drift", "reference", "--images", str(folder))
    assert made.returncode == 0, made.stderr
    assert f"{COUNT} images" in made.stdout
    server = ServiceProcess(state, env).start()
    server.cli_env = env
    yield server
    server.stop()


def cli(env, *args):
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def logged(service) -> int:
    with prediction_log(service.state_dir).connect() as connection:
        return connection.execute(text("SELECT COUNT(*) FROM predictions")).scalar_one()


def send(service, images):
    before = logged(service)
    for start in range(0, len(images), 16):
        files = [
            ("images", (f"{i}.jpg", data)) for i, data in enumerate(images[start : start + 16])
        ]
        answer = httpx.post(service.url + "/classify_batch", files=files, timeout=120)
        assert answer.status_code == 200, answer.text
    total = before + len(images)
    eventually(lambda: logged(service) >= total, f"{len(images)} more rows in the log")


def check(service, scenario, pictures):
    """Send one scenario's pictures, run the job once, return the features that drifted."""
    send(service, pictures[scenario])
    run = cli(service.cli_env, "drift", "check", "--fail-on-drift")
    assert run.returncode in (0, 3), run.stderr
    stored = latest_results(prediction_log(service.state_dir), "1")
    assert all(r.current_samples == COUNT for r in stored.results)
    drifted = {r.feature for r in stored.results if r.drifted}
    assert (run.returncode == 3) == bool(drifted), run.stdout
    return drifted, run.stdout


def test_recompressed_photos_do_not_alarm(drift_service, pictures):
    drifted, table = check(drift_service, "recompressed", pictures)
    assert drifted == set(), table
    assert "no drift" in table


def test_a_brightness_shift_alarms_on_brightness(drift_service, pictures):
    drifted, table = check(drift_service, "brighter", pictures)
    assert "brightness" in drifted, table
    assert not drifted & {"width", "height", "aspect_ratio"}, table
    # The service's periodic job reaches the same verdict and publishes it.
    labels = 'feature="brightness",model_version="1"'
    eventually(
        lambda: metric(drift_service, f"bento_fleet_drift_detected{{{labels}}}") == 1.0,
        "the drift job flagging brightness in /metrics",
        interval_s=1,
    )
    assert (
        metric(
            drift_service,
            'bento_fleet_drift_score{feature="brightness",model_version="1",test="ks"}',
        )
        > 0.25
    )


def test_a_blur_alarms_on_sharpness_not_brightness(drift_service, pictures, tmp_path):
    drifted, table = check(drift_service, "blurred", pictures)
    assert "sharpness" in drifted and "brightness" not in drifted, table
    report = cli(drift_service.cli_env, "drift", "report", "--html", str(tmp_path / "drift.html"))
    assert report.returncode == 0 and "sharpness" in report.stdout
    page = (tmp_path / "drift.html").read_text()
    assert "data:image/png;base64," in page and "drifted: " in page
    stats = httpx.get(drift_service.url + "/stats", timeout=30).json()
    assert stats["drift"][0]["status"] == "checked"
