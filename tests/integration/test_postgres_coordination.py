"""Coordination through a real PostgreSQL, where the workers of several hosts meet: of many
connections claiming the drift job's lease at once exactly one wins, and the lease lapses at its
expiry; workers that all migrate a fresh database at the same moment all succeed, and so does
`alembic upgrade head` from the repository root."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from support import sqlalchemy_url, together

from service.store.db import migrate
from service.store.leases import claim, holder_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_database(postgres):
    """The libpq URL of a new, empty database on the test cluster; dropped afterwards."""
    admin = create_engine(sqlalchemy_url(postgres.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS coordination"))
        connection.execute(text("CREATE DATABASE coordination"))
    yield postgres.url.rsplit("/", 1)[0] + "/coordination"
    with admin.connect() as connection:  # FORCE: even past sessions stuck in a failed run
        connection.execute(text("DROP DATABASE IF EXISTS coordination WITH (FORCE)"))
    admin.dispose()


def schema_versions(url: str) -> list[tuple]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def test_of_twelve_connections_claiming_at_once_exactly_one_wins(fresh_database):
    engine = create_engine(sqlalchemy_url(fresh_database))
    migrate(engine)
    now = datetime.now(UTC)
    won = together([lambda i=i: claim(engine, "drift:1", f"host{i}", 300, now) for i in range(12)])
    assert won.count(True) == 1
    assert holder_of(engine, "drift:1")[0] == f"host{won.index(True)}"
    assert not claim(engine, "drift:1", "late", 300, now + timedelta(seconds=299))
    assert claim(engine, "drift:1", "late", 300, now + timedelta(seconds=300))
    engine.dispose()


def test_workers_migrating_a_fresh_database_at_once_all_succeed(fresh_database):
    workers = [create_engine(sqlalchemy_url(fresh_database)) for _ in range(6)]

    def migrate_or_fail(engine):
        try:
            migrate(engine)
            return None
        except SQLAlchemyError as exc:  # what a worker would have logged, and retried
            return repr(exc)

    try:
        assert together([lambda e=e: migrate_or_fail(e) for e in workers]) == [None] * 6
    finally:
        for engine in workers:
            engine.dispose()
    assert schema_versions(fresh_database) == [("0004",)]


def test_alembic_upgrade_head_migrates_the_database_in_the_settings(fresh_database):
    env = dict(os.environ, BENTO_FLEET_DATABASE__URL=fresh_database)
    alembic = Path(sys.executable).parent / "alembic"
    run = subprocess.run(
        [alembic, "upgrade", "head"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert schema_versions(fresh_database) == [("0004",)]
