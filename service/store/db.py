"""The database connection: engines with timeouts that suit a writer off the request path,
the schema migrations, the runtime role's grants, and the dialect's INSERT.

Two ways to keep the schema at its head. In development (SQLite, or one PostgreSQL role that
owns everything) every worker migrates on start (`database.migrate: true`). In production the
schema belongs to a migration role the service never holds: `bento-fleet migrate --grant-to
ROLE` runs as that role before the service starts (the bento_service role does this), and the
service, logging in as a runtime role that may only read and add rows, checks that the schema is
at the head its code expects (`check_schema`) and spools until it is."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, text

from .schema import RUNTIME_PRIVILEGES

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


# Every privilege a table can carry in PostgreSQL: what the runtime role holds is compared with
# all of them, so one granted by hand beyond RUNTIME_PRIVILEGES is found and taken back.
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


class SchemaBehind(RuntimeError):
    """The database's schema is older than this release's code, and the service may not migrate."""


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine, grant_to: str | None = None) -> tuple[str | None, str, bool]:
    """Bring the schema to Alembic's head; with `grant_to`, give that runtime role exactly
    RUNTIME_PRIVILEGES (PostgreSQL). Returns the revision before, the head, and whether the
    grants changed. Workers of every host may do this at once: on PostgreSQL they take turns
    under an advisory lock held until the migration commits, so the next one finds the schema
    at head instead of failing to create the same tables."""
    config = _alembic_config()
    with engine.begin() as connection:
        wait_for_migration_turn(connection)
        before = current_revision(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        granted = grant_runtime_privileges(connection, grant_to) if grant_to else False
    return before, head_revision(), granted


def grant_runtime_privileges(connection: Connection, role: str) -> bool:
    """Make `role`'s privileges on the schema's tables exactly RUNTIME_PRIVILEGES (and USAGE of
    their id sequences). True if anything had to change. The caller owns the tables."""
    if connection.dialect.name != "postgresql":
        raise ValueError("runtime grants are PostgreSQL's: SQLite has no roles")
    quoted = connection.dialect.identifier_preparer.quote(role)
    tables = connection.execute(
        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    ).scalars()
    changed = False
    for table in sorted(set(tables) & RUNTIME_PRIVILEGES.keys()):
        held = {
            privilege
            for privilege in TABLE_PRIVILEGES
            if connection.execute(
                text("SELECT has_table_privilege(:role, quote_ident(:table), :privilege)"),
                {"role": role, "table": table, "privilege": privilege},
            ).scalar()
        }
        if held != set(RUNTIME_PRIVILEGES[table]):
            connection.execute(text(f'REVOKE ALL ON TABLE "{table}" FROM {quoted}'))
            wanted = ", ".join(RUNTIME_PRIVILEGES[table])
            connection.execute(text(f'GRANT {wanted} ON TABLE "{table}" TO {quoted}'))
            changed = True
    sequences = connection.execute(
        text(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()"
            " AND NOT has_sequence_privilege(:role, quote_ident(sequencename), 'USAGE')"
        ),
        {"role": role},
    ).scalars()
    for sequence in sequences:  # the serial ids of the tables it adds rows to
        connection.execute(text(f'GRANT USAGE ON SEQUENCE "{sequence}" TO {quoted}'))
        changed = True
    return changed


def ensure_schema(engine: Engine, may_migrate: bool) -> None:
    """The schema at this code's head: migrated where the caller's role may (database.migrate),
    else checked (SchemaBehind)."""
    if may_migrate:
        migrate(engine)
    else:
        check_schema(engine)


def check_schema(engine: Engine) -> None:
    """Raise SchemaBehind unless the schema is at this code's head. A revision this code does
    not know is newer (a rollback to an earlier release): accepted, as migrations only add."""
    with engine.connect() as connection:
        current = current_revision(connection)
    script = ScriptDirectory.from_config(_alembic_config())
    head = script.get_current_head()
    if current == head:
        return
    try:
        known = current is None or script.get_revision(current) is not None
    except CommandError:
        known = False
    if known:
        raise SchemaBehind(
            f"the database's schema is at {current or 'no revision'} but this release needs "
            f"{head}; the service does not migrate (database.migrate is false): run "
            "`bento-fleet migrate` as the migration role (the bento_service role does, before "
            "it starts the service)"
        )


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
