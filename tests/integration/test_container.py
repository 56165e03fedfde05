"""The container image (issue 17): `bentoml containerize` with podman, FROM the runtime base built
from Debian's archive (container/, `make container-base`), serves the Bento with no network at
all; BentoML's own client inside the container classifies a photo, and the prediction log lands
on the mounted volume."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text
from support import PHOTOS, REPO, eventually, prediction_log

CLIENT = """
import json, bentoml
with bentoml.SyncHTTPClient("http://127.0.0.1:3000", server_ready_timeout=240) as client:
    print(json.dumps(client.classify(image="/tmp/coffee.png")))
"""


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args[:3]}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


def test_the_image_serves_offline_and_logs_to_its_volume(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    run(bentoml, "build", cwd=REPO, env=env)
    image = f"localhost/bento-fleet-classifier:test-{uuid.uuid4().hex[:8]}"
    # BentoML reads the Dockerfile template only from below its working directory, and puts
    # its build context in TMPDIR (the Makefile's `image` target does the same in var/).
    run(
        bentoml,
        "containerize",
        "bento-fleet-classifier:latest",
        "--backend",
        "podman",
        "--image-tag",
        image,
        cwd=tmp_path,
        env={**env, "TMPDIR": str(tmp_path)},
    )
    state, name = tmp_path / "state", f"bento-fleet-test-{uuid.uuid4().hex[:8]}"
    state.mkdir()
    run(
        "podman",
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "none",
        "--volume",
        f"{state}:/var/lib/bento-fleet:U",
        image,
    )
    try:
        run("podman", "cp", str(PHOTOS / "coffee.png"), f"{name}:/tmp/coffee.png")
        answer = json.loads(
            run("podman", "exec", name, "python", "-c", CLIENT, timeout=300).stdout.splitlines()[-1]
        )
        assert answer["label"] == "espresso"
        log = prediction_log(state)
        query = text("SELECT label FROM predictions WHERE request_id = :id")

        def logged():
            with log.connect() as conn:
                return conn.execute(query, {"id": answer["request_id"]}).scalar()

        assert eventually(logged, "the prediction on the mounted volume") == "espresso"
    finally:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True)
        subprocess.run(["podman", "rmi", image], capture_output=True)
