import pytest
from support import PostgresCluster, ServiceProcess


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The embedded model and SQLite log; batches capped at the configured 32, not calibrated,
    so that the batching tests do not depend on how fast each batch size was at start."""
    server = ServiceProcess(
        tmp_path_factory.mktemp("service"), {"BENTO_FLEET_BATCHING__CALIBRATE": "false"}
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.destroy()
