"""The database connection: engines with timeouts that suit a writer off the request path,
the schema migrations every worker runs on start, and the dialect's INSERT."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x62656E746F  # "bento": the advisory lock key migrations take turns under


def make_engine(url: str, timeout_s: int) -> Engine:
    if url.startswith("sqlite"):
        connect_args: dict = {"timeout": timeout_s}
    else:
        # A slow server must fail a batch quickly (it is then spooled), not stall the writer.
        connect_args = {
            "connect_timeout": timeout_s,
            "options": f"-c statement_timeout={timeout_s * 1000}",
        }
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def migrate(engine: Engine) -> None:
    """Bring the schema to Alembic's head. Every worker of every host does this on start; on
    PostgreSQL they take turns under an advisory lock held until the migration commits, so the
    next one finds the schema at head instead of failing to create the same tables."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        wait_for_migration_turn(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def wait_for_migration_turn(connection) -> None:
    """On PostgreSQL, wait for the advisory lock that migrations take turns under; it is held
    until `connection`'s transaction ends. SQLite serialises writers by itself."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


def dialect_insert(engine: Engine):
    """The INSERT of the engine's dialect, for its ON CONFLICT clauses (both dialects have them)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
