"""`bentoml build` packs a Bento that serves offline, outside the repo: the embedded model, or
a model from BentoML's model store."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import torch
import torchvision
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


def test_a_stored_model_travels_inside_the_bento(tmp_path):
    """Issue 17: `bento-fleet model import`, then `bentoml build` with model.tag packs the model;
    the exported Bento, unpacked and served by import path with an empty BentoML home (as the
    bento_service role serves it), answers with the stored model's labels and names its tag."""
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    torch.manual_seed(0)
    weights, labels = tmp_path / "pets.pt", tmp_path / "labels.txt"
    torch.save(torchvision.models.squeezenet1_1(num_classes=3).state_dict(), weights)
    labels.write_text("cat\ndog\nbird\n")
    model = ["--architecture", "squeezenet1_1", "--weights", str(weights), "--labels", str(labels)]
    imported = subprocess.run(
        [sys.executable, "-m", "service.cli", "model", "import", "pets", "--version", "v1", *model],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    bentoml = str(Path(sys.executable).parent / "bentoml")
    tagged = {**env, "BENTO_FLEET_MODEL__TAG": "pets:v1"}
    subprocess.run([bentoml, "build"], cwd=REPO, env=tagged, check=True, capture_output=True)
    exported = tmp_path / "pets.bento"
    subprocess.run(
        [bentoml, "export", "bento-fleet-classifier:latest", str(exported)],
        env=env,
        check=True,
        capture_output=True,
    )
    release = tmp_path / "release"
    release.mkdir()
    with tarfile.open(exported) as bento:
        bento.extractall(release, filter="data")
    assert (release / "models/pets/v1/weights.pt").read_bytes() == weights.read_bytes()

    state = tmp_path / "state"
    state.mkdir()
    server = ServiceProcess(
        state,
        {"BENTOML_HOME": str(tmp_path / "empty-home"), "BENTO_FLEET_MODEL__TAG": "pets:latest"},
        target="service.service:ImageClassifier",
        cwd=release / "src",
    ).start()
    try:
        answer = httpx.post(
            server.url + "/classify", files={"image": ("c.png", photo("coffee.png"))}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in {"cat", "dog", "bird"}
        assert answer.json()["model"] == {"name": "pets", "version": "v1"}
        card = httpx.get(server.url + "/model", timeout=10).json()
        assert card["tag"] == "pets:v1" and card["architecture"] == "squeezenet1_1"
        assert card["weights_path"] == str(release / "models/pets/v1/weights.pt")
    finally:
        server.stop()
