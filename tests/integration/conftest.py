import pytest
from support import PostgresCluster, ServiceProcess


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The service with no configuration beyond a state folder: embedded model, SQLite log."""
    server = ServiceProcess(tmp_path_factory.mktemp("service")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.destroy()
