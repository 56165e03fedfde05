"""`bento-fleet model import` and model.tag (issue 17): a torchvision state_dict with its labels
and preprocessing goes into BentoML's model store (a real one, in a temporary folder), settings
naming its tag are filled from it, and every bad input is refused naming what is wrong, with
nothing left in the store."""

import os
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import torch
import torchvision
import yaml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore
from pydantic import ValidationError
from support import REPO

from service.serving.stored_models import ImportRefused, import_model
from service.settings import ModelSettings, Settings

ARCHITECTURE = "squeezenet1_1"  # small: 2.8 MB of weights
PYTHON_CLI = [sys.executable, "-m", "service.cli"]


@pytest.fixture
def store(tmp_path):
    """BentoML's model store in a temporary folder, for this test only."""
    original = BentoMLContainer.model_store.get()
    (tmp_path / "models").mkdir()
    store = ModelStore(tmp_path / "models")
    BentoMLContainer.model_store.set(store)
    yield store
    BentoMLContainer.model_store.set(original)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    three = torchvision.models.get_model(ARCHITECTURE, weights=None, num_classes=3)
    other = torchvision.models.get_model("resnet18", weights=None, num_classes=3)
    paths = {
        "weights": folder / "pets.pt",
        "resnet18": folder / "resnet18.pt",
        "labels": folder / "labels.txt",
        "four_labels": folder / "four.txt",
        "junk": folder / "junk.pt",
    }
    torch.save(three.state_dict(), paths["weights"])
    torch.save(other.state_dict(), paths["resnet18"])
    paths["labels"].write_text("cat\ndog\n\nbird\n")
    paths["four_labels"].write_text("cat\ndog\nbird\nfish\n")
    paths["junk"].write_bytes(b"not a torch file")
    return paths


def test_an_imported_model_serves_from_its_tag(store, files):
    tag = import_model(
        "pets", ARCHITECTURE, files["weights"], files["labels"], "v1", mean=(120.0, 110.0, 100.0)
    )
    assert tag == "pets:v1"
    assert (store._path / "pets/v1").stat().st_mode & 0o777 == 0o755  # others may read it
    model = ModelSettings(tag="pets:latest")
    assert model.tag == "pets:v1"  # latest, pinned to what it was when the settings were read
    assert (model.architecture, model.name, model.version) == (ARCHITECTURE, "pets", "v1")
    assert model.weights_path.read_bytes() == files["weights"].read_bytes()
    assert model.labels_path.read_text().split() == ["cat", "dog", "bird"]
    assert (model.mean, model.std, model.input_size) == ((120.0, 110.0, 100.0), None, 224)
    # The same object in a variant is not refused for the fields the store filled.
    settings = Settings(model={"tag": "pets:v1", "version": "7"})
    assert settings.variant().model.version == "7"
    assert settings.stored_model_tags == ["pets:v1"]


def refused(store, *args, **kwargs) -> str:
    with pytest.raises(ImportRefused) as raised:
        import_model(*args, **kwargs)
    assert store.list() == [], "a refused import left a model in the store"
    return str(raised.value)


def test_labels_that_do_not_match_the_classifier_are_refused(store, files):
    message = refused(store, "pets", ARCHITECTURE, files["weights"], files["four_labels"])
    assert message == (
        "--labels: 4 class names, but the state_dict's classifier (classifier.1.weight) "
        "has 3 outputs"
    )


def test_a_state_dict_of_another_architecture_is_refused(store, files):
    message = refused(store, "pets", ARCHITECTURE, files["resnet18"], files["labels"])
    assert f"--weights {files['resnet18']}: the state_dict does not fit {ARCHITECTURE}" in message
    assert "was it saved from another architecture?" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"weights": Path("/nonexistent/w.pt")}, "--weights /nonexistent/w.pt: no such file"),
        ({"labels_file": Path("/nonexistent/l.txt")}, "--labels /nonexistent/l.txt: no such file"),
        ({"architecture": "no_such_net"}, "--architecture: model.architecture='no_such_net' is"),
        ({"name": "Pets"}, "Pets is not a valid tag"),
        ({"resize_size": 200}, "--resize-size (200) must be at least --input-size (224)"),
        ({"input_size": 8}, "--input-size: Input should be greater than or equal to 32"),
    ],
    ids=["no weights", "no labels", "architecture", "tag", "crop", "input size"],
)
def test_bad_input_is_refused_naming_it(store, files, change, expected):
    given = {
        "name": "pets",
        "architecture": ARCHITECTURE,
        "weights": files["weights"],
        "labels_file": files["labels"],
    }
    assert expected in refused(store, **{**given, **change})


def test_a_file_that_is_no_state_dict_is_refused(store, files):
    message = refused(store, "pets", ARCHITECTURE, files["junk"], files["labels"])
    assert message.startswith(f"--weights {files['junk']}: not a state_dict saved by torch.save")


def test_settings_refuse_a_tag_with_its_own_files_or_an_unknown_one(store, files):
    import_model("pets", ARCHITECTURE, files["weights"], files["labels"], "v1")
    with pytest.raises(ValidationError, match=r"drop model\.input_size, model\.weights_path"):
        ModelSettings(tag="pets:v1", weights_path=files["weights"], input_size=256)
    with pytest.raises(ValidationError, match="'nope:v1' is not in BentoML's model store"):
        ModelSettings(tag="nope:v1")
    with bentoml.models.create("foreign", labels={"kind": "someone-else"}) as model:
        Path(model.path_of("x")).write_text("x")
    with pytest.raises(ValidationError, match="was not stored by `bento-fleet model import`"):
        ModelSettings(tag="foreign:latest")


def test_the_cli_refuses_with_the_reason_and_exit_2(tmp_path, files):
    """(Its import, packed into a Bento and served: tests/integration/test_bento.py.)"""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    model = ["--architecture", ARCHITECTURE, "--weights", str(files["weights"])]
    bad = subprocess.run(
        [*PYTHON_CLI, "model", "import", "pets", *model, "--labels", str(files["four_labels"])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("not imported: --labels: 4 class names"), bad.stderr


def test_the_role_refuses_a_tag_without_a_bento_to_carry_it(tmp_path):
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": True,
                    "tasks": [
                        {
                            "ansible.builtin.include_role": {
                                "name": "bento_service",
                                "tasks_from": "preflight",
                            }
                        }
                    ],
                }
            ]
        )
    )
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            '{"bento_service_settings": {"model": {"tag": "pets:1"}}}',
            str(playbook),
        ],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert "bento_service_settings.model.tag (pets:1) names a model" in output, output[-2000:]
    assert "set bento_service_bento_file" in output
