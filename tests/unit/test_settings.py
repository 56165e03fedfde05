"""Settings: defaults run the embedded model; env beats YAML; bad values name the variable."""

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("BENTO_FLEET_"):
            monkeypatch.delenv(name)


def test_no_configuration_is_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.model.architecture == "efficientnet_lite0"
    assert settings.model.weights_path is None
    assert (settings.device, settings.dtype) == ("auto", "auto")
    assert settings.limits.max_upload_bytes == 10 * 1024 * 1024
    assert settings.limits.max_batch_images == 64
    assert settings.database_url == f"sqlite:///{tmp_path}/var/predictions.db"


def test_nested_environment_variables(monkeypatch):
    monkeypatch.setenv("BENTO_FLEET_BATCHING__MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("BENTO_FLEET_DEVICE", "cpu")
    monkeypatch.setenv("BENTO_FLEET_LIMITS__MAX_UPLOAD_BYTES", "2048")
    settings = Settings()
    assert settings.batching.max_batch_size == 8
    assert settings.device == "cpu"
    assert settings.limits.max_upload_bytes == 2048


def test_yaml_file_and_environment_precedence(tmp_path, monkeypatch):
    config = tmp_path / "service.yaml"
    config.write_text(
        "workers: 3\nbatching:\n  max_batch_size: 4\n  max_latency_ms: 250\n"
        "database:\n  url: postgresql://app:secret@db:5432/predictions\n"
    )
    monkeypatch.setenv("BENTO_FLEET_CONFIG", str(config))
    monkeypatch.setenv("BENTO_FLEET_BATCHING__MAX_BATCH_SIZE", "16")
    settings = Settings()
    assert settings.workers == 3
    assert settings.batching.max_latency_ms == 250
    assert settings.batching.max_batch_size == 16  # the environment wins over the file
    # libpq-style URLs are pointed at the psycopg 3 driver
    assert settings.database_url == "postgresql+psycopg://app:secret@db:5432/predictions"


def test_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("BENTO_FLEET_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(FileNotFoundError, match="BENTO_FLEET_CONFIG"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("BENTO_FLEET_DEVICE", "tpu", "device"),
        ("BENTO_FLEET_DTYPE", "int8", "dtype"),
        ("BENTO_FLEET_BATCHING__MAX_BATCH_SIZE", "0", "max_batch_size"),
        ("BENTO_FLEET_LIMITS__MAX_UPLOAD_BYTES", "ten", "max_upload_bytes"),
        ("BENTO_FLEET_WORKERS", "0", "workers"),
    ],
)
def test_bad_values_name_the_field(monkeypatch, variable, value, field):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_unknown_keys_in_the_file_are_refused(tmp_path, monkeypatch):
    config = tmp_path / "service.yaml"
    config.write_text("batch_size: 4\n")
    monkeypatch.setenv("BENTO_FLEET_CONFIG", str(config))
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()


def test_other_architectures_need_their_weights(monkeypatch):
    monkeypatch.setenv("BENTO_FLEET_MODEL__ARCHITECTURE", "resnet50")
    with pytest.raises(ValidationError, match="weights_path is required"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "value", "message", "remedy"),
    [
        (  # the centre crop is taken from the resized image
            "MODEL__RESIZE_SIZE",
            "200",
            r"resize_size \(200\) must be at least .*input_size",
            "MODEL__INPUT_SIZE",
        ),
        (  # a batch the queue can never admit
            "BATCHING__MAX_QUEUE_SIZE",
            "48",
            r"max_batch_images \(64\) exceeds .*max_queue_size",
            "LIMITS__MAX_BATCH_IMAGES",
        ),
    ],
)
def test_settings_that_cannot_work_together_are_refused(
    monkeypatch, variable, value, message, remedy
):
    monkeypatch.setenv(f"BENTO_FLEET_{variable}", value)
    with pytest.raises(ValidationError, match=message):
        Settings()
    monkeypatch.setenv(f"BENTO_FLEET_{remedy}", str(int(value) - 8))  # the other one lowered
    Settings()


def test_the_defaults_admit_the_largest_batch():
    settings = Settings()
    assert settings.limits.max_batch_images <= settings.batching.max_queue_size
