"""playbooks/deploy.yml: a rolling deploy under continuous client load loses no request; a broken
release stops at the first host, which goes back to the release it served, and the fleet serves."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from fleet import REPO, SCENARIO_SETTINGS, ClientLoad, apps, classify, gateway, service_get
from playbook_runner import run_playbook

# The embedded model's own weights, imported into BentoML's model store under a tag whose version
# the answers carry: the release ships its model inside the Bento, and answers stay the same.
STORED_MODEL = "efficientnet-lite0-imagenet:2"


@pytest.fixture(scope="module")
def bento_file(tmp_path_factory) -> Path:
    """The service and a stored model packed by `bentoml build` and `bentoml export`, as a user
    ships a release."""
    home = tmp_path_factory.mktemp("bentoml-home")
    out = tmp_path_factory.mktemp("bento") / "bento-fleet-classifier.bento"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    python, bentoml = str(REPO / ".venv/bin/python"), str(REPO / ".venv/bin/bentoml")
    weights = subprocess.run(
        [python, "-c", "from service.serving.model import default_weights_path as w; print(w())"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    name, version = STORED_MODEL.split(":")
    model = ["--version", version, "--architecture", "efficientnet_lite0", "--weights", weights]
    subprocess.run(
        [python, "-m", "service.cli", "model", "import", name, *model],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    tagged = {**env, "BENTO_FLEET_MODEL__TAG": STORED_MODEL}
    subprocess.run([bentoml, "build"], cwd=REPO, env=tagged, check=True, capture_output=True)
    subprocess.run(
        [bentoml, "export", "bento-fleet-classifier:latest", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    return out


def deploy(**extra_vars) -> subprocess.CompletedProcess:
    return run_playbook("playbooks/deploy.yml", "-e", json.dumps(extra_vars))


def versions() -> list[str]:
    return [service_get(app, "/model")["version"] for app in apps]


def test_a_rolling_deploy_under_load_fails_no_request(bento_file):
    assert versions() == ["1", "1"]
    with ClientLoad() as load:
        result = deploy(
            bento_service_bento_file=str(bento_file),
            bento_service_settings={**SCENARIO_SETTINGS, "model": {"tag": STORED_MODEL}},
            # The model travels in the Bento, alone: the scenario's inventory ships weights
            # beside the release, which the role's preflight refuses together with a tag.
            bento_service_model_weights_file="",
            bento_service_model_weights_sha256="",
        )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert versions() == ["2", "2"]  # the stored model's version
    for app in apps:  # served from the model store inside the release, not from any other
        card = service_get(app, "/model")
        assert card["tag"] == STORED_MODEL
        release = app.file("/opt/bento-fleet/current").linked_to
        assert (
            card["weights_path"] == f"{release}/models/{STORED_MODEL.replace(':', '/')}/weights.pt"
        )
    assert len(load.responses) > 20 and not load.refused(), load.timeline()
    for app in apps:  # the Bento reused the venv of the same pins: no second torch install
        assert len(app.file("/opt/bento-fleet/venvs").listdir()) == 1
        assert app.file("/opt/bento-fleet/previous").is_symlink


def test_a_broken_release_stops_at_the_first_host_and_the_fleet_keeps_serving():
    releases = "ls /opt/bento-fleet/releases"
    before = [
        (app.file("/opt/bento-fleet/current").linked_to, app.check_output(releases)) for app in apps
    ]
    result = deploy(
        bento_service_settings={"model": {"version": "3", "architecture": "no_such_net"}}
    )
    # Under Molecule, failed tasks' messages go to stderr (display_failed_stderr).
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-3000:]
    # The service's own reason, from the fail-fast readiness wait.
    assert "no_such_net" in output, output[-3000:]
    assert "It is back on" in output and "the hosts after it were not touched" in output
    # The first host went back to the release it served; the second never saw the new one.
    assert apps[0].file("/opt/bento-fleet/current").linked_to == before[0][0]
    assert (
        apps[1].file("/opt/bento-fleet/current").linked_to,
        apps[1].check_output(releases),
    ) == before[1]
    assert versions() == ["2", "2"]
    assert (
        " down;" not in gateway.file("/etc/nginx/sites-available/bento-fleet.conf").content_string
    )
    assert all(classify().status_code == 200 for _ in range(4))
