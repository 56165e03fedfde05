"""Least privilege on a real PostgreSQL: the schema belongs to a migration role, which
`bento-fleet migrate --grant-to` runs as; the service's runtime role can then do all the service
does (log predictions, replace a label, take over a lease, store drift references and results)
and nothing else: no DELETE, TRUNCATE or DDL, and no migrating."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError
from support import eventually, prediction_record, sqlalchemy_url

from service.modelops.drift import FeatureDrift, Profile
from service.store import PredictionLog
from service.store.db import check_schema, migrate
from service.store.drift_runs import save_reference, save_results
from service.store.labels import save_feedback
from service.store.leases import claim, holder_of

REPO = Path(__file__).resolve().parents[2]
OWNER, RUNTIME = "fleet_migrator", "fleet_runtime"


@pytest.fixture
def database(postgres):
    """A database owned by the migration role, as the postgresql role makes it: (the owner's
    URL, the runtime role's URL)."""
    admin = create_engine(sqlalchemy_url(postgres.url), isolation_level="AUTOCOMMIT")

    def drop(connection):
        connection.execute(text("DROP DATABASE IF EXISTS least_privilege WITH (FORCE)"))
        for role in (OWNER, RUNTIME):
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))

    with admin.connect() as connection:
        drop(connection)
        for role in (OWNER, RUNTIME):
            connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(text(f"CREATE DATABASE least_privilege OWNER {OWNER}"))
    base = postgres.url.rsplit("@", 1)[1].rsplit("/", 1)[0]
    yield (
        f"postgresql://{OWNER}@{base}/least_privilege",
        f"postgresql://{RUNTIME}@{base}/least_privilege",
    )
    with admin.connect() as connection:
        drop(connection)
    admin.dispose()


def bento_fleet_migrate(url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BENTO_FLEET_DATABASE__URL=url)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_migrates_as_the_owner_and_grants_the_runtime_role_once(database):
    owner_url, _ = database
    first = bento_fleet_migrate(owner_url, "--grant-to", RUNTIME)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "schema: empty -> 0004 (changed)",
        f"grants of {RUNTIME}: set (changed)",
    ]
    again = bento_fleet_migrate(owner_url, "--grant-to", RUNTIME)
    assert again.returncode == 0, again.stderr
    assert "(changed)" not in again.stdout, again.stdout  # what Ansible's changed_when reads

    unknown = bento_fleet_migrate(owner_url, "--grant-to", "nobody")
    assert unknown.returncode == 1
    assert 'not migrated: role "nobody" does not exist' in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_the_runtime_role_does_what_the_service_does_and_nothing_more(database, tmp_path):
    owner_url, runtime_url = database
    assert bento_fleet_migrate(owner_url, "--grant-to", RUNTIME).returncode == 0
    engine = create_engine(sqlalchemy_url(runtime_url))
    check_schema(engine)

    log = PredictionLog(
        runtime_url, tmp_path / "spool", flush_interval_s=0.05, migrate_on_start=False
    )
    log.start()
    for i in range(3):
        log.record(prediction_record(i))
    eventually(lambda: log.written == 3, "3 rows written by the runtime role", timeout_s=15)
    log.close()
    assert log.spooled == 0

    save_feedback(engine, "req-0", 0, 1, "class 1", labelled_by="labeler")
    save_feedback(engine, "req-0", 0, 2, "class 2", labelled_by="labeler")  # replaces it
    now = datetime.now(UTC)
    assert claim(engine, "drift:1", "host-a", 60, now)
    assert claim(engine, "drift:1", "host-b", 60, now + timedelta(seconds=61))  # takes it over
    assert holder_of(engine, "drift:1")[0] == "host-b"
    save_reference(engine, "m", "1", "test", Profile.from_observations([]))
    save_results(engine, "m", "1", [FeatureDrift("brightness", "ks", 0.1, 0.5, 0.05, False, 1, 1)])

    refused = [
        "DELETE FROM predictions",
        "TRUNCATE predictions",
        "UPDATE predictions SET label = 'forged'",
        "DELETE FROM feedback",
        "DROP TABLE predictions",
        "ALTER TABLE predictions ADD COLUMN forged text",
        "CREATE TABLE forged (id int)",
        "UPDATE alembic_version SET version_num = '0001'",
    ]
    for statement in refused:
        with engine.connect() as connection, pytest.raises(ProgrammingError) as caught:
            connection.execute(text(statement))
        assert "permission denied" in str(caught.value) or "must be owner" in str(caught.value)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM predictions")).scalar() == 3
        assert connection.execute(text("SELECT label FROM feedback")).scalar() == "class 2"
    engine.dispose()


def test_a_privilege_granted_by_hand_is_taken_back_by_the_next_migrate(database, postgres):
    owner_url, runtime_url = database
    assert bento_fleet_migrate(owner_url, "--grant-to", RUNTIME).returncode == 0
    owner = create_engine(sqlalchemy_url(owner_url))
    with owner.begin() as connection:
        connection.execute(text(f"GRANT DELETE ON predictions TO {RUNTIME}"))
    again = bento_fleet_migrate(owner_url, "--grant-to", RUNTIME)
    assert f"grants of {RUNTIME}: set (changed)" in again.stdout
    runtime = create_engine(sqlalchemy_url(runtime_url))
    with runtime.connect() as connection, pytest.raises(ProgrammingError, match="permission"):
        connection.execute(text("DELETE FROM predictions"))
    owner.dispose()
    runtime.dispose()


def test_the_runtime_role_cannot_migrate_a_schema_behind_its_code(database):
    """Where the service would still try (database.migrate left true), the database refuses."""
    _, runtime_url = database
    engine = create_engine(sqlalchemy_url(runtime_url))
    with pytest.raises(ProgrammingError, match="permission denied for schema public"):
        migrate(engine)
    engine.dispose()
