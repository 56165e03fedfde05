"""`bentoml build` packs a Bento that serves the embedded model offline, outside the repo."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
from support import REPO, ServiceProcess, photo


def test_built_bento_serves_from_anywhere(tmp_path):
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    subprocess.run([bentoml, "build"], cwd=REPO, env=env, check=True, capture_output=True)
    (bento_dir,) = [p for p in (home / "bentos/bento-fleet-classifier").iterdir() if p.is_dir()]
    packed = {p.relative_to(bento_dir / "src").as_posix() for p in bento_dir.rglob("src/**/*")}
    assert "service/service.py" in packed
    assert "service/store/migrations/versions/0001_predictions.py" in packed
    assert not any(p.startswith(("tests/", "bench/")) for p in packed)

    elsewhere, state = tmp_path / "elsewhere", tmp_path / "state"
    elsewhere.mkdir()
    state.mkdir()
    server = ServiceProcess(
        state,
        {"BENTOML_HOME": str(home)},
        target=f"bento-fleet-classifier:{bento_dir.name}",
        cwd=elsewhere,
    ).start()
    try:
        response = httpx.post(
            server.url + "/classify", files={"image": ("c.png", photo("coffee.png"))}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.json()["label"] == "espresso"
    finally:
        server.stop()
