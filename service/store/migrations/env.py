"""Alembic environment: the service passes its connection; the CLI reads the service's settings."""

from alembic import context
from sqlalchemy import create_engine

from service.store.schema import Base

target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:  # `alembic upgrade head` from the repository root
    from service.settings import get_settings
    from service.store.db import wait_for_migration_turn

    with create_engine(get_settings().database_url).connect() as conn:
        wait_for_migration_turn(conn)  # in turn with the services' workers (db.migrate)
        run_migrations(conn)
        conn.commit()
