import pytest
from support import PostgresCluster, ServiceProcess


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The embedded model and SQLite log; batches capped at the configured 32, not calibrated,
    so that the batching tests do not depend on how fast each batch size was at start.

    The queue's time bound is lifted (60 s instead of 2 s): on a shared, noisy CI machine the
    running cost estimate can spike and refuse a burst of 16 with 503, which is the overload
    test's business (its own server, test_postgres_and_overload.py), not the functional tests'."""
    server = ServiceProcess(
        tmp_path_factory.mktemp("service"),
        {
            "BENTO_FLEET_BATCHING__CALIBRATE": "false",
            "BENTO_FLEET_BATCHING__MAX_LATENCY_MS": "60000",
            # An unknown request id is answered 404 after this wait for the log's flush.
            "BENTO_FLEET_FEEDBACK__LOOKUP_WAIT_S": "1",
            "BENTO_FLEET_FEEDBACK__REFRESH_S": "1",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.destroy()
