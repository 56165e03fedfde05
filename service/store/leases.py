"""Leases on periodic jobs, held in the database every worker and host shares.

Of all the workers that find a job due at the same moment, exactly one claims it: the claim is a
conditional UPDATE (`WHERE expires_at <= now`), which PostgreSQL and SQLite both apply to one
transaction at a time, and the others then see the new expiry and update nothing. A lease is
never released: it lapses at `expires_at`, so a holder that dies mid-run blocks the job for one
lease at most.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, update

from .db import dialect_insert
from .schema import JobLease

NEVER_HELD = datetime(1970, 1, 1, tzinfo=UTC)


def this_worker() -> str:
    """A holder name that tells a reader which process ran the job."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


def claim(engine: Engine, job: str, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
    """True when `holder` now holds `job` for `ttl_s` seconds; False when another does."""
    now = now or datetime.now(UTC)
    create = (
        dialect_insert(engine)(JobLease)
        .values(name=job, holder="", expires_at=NEVER_HELD)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    take = (
        update(JobLease)
        .where(JobLease.name == job, JobLease.expires_at <= now)
        .values(holder=holder, expires_at=now + timedelta(seconds=ttl_s))
    )
    with engine.begin() as connection:
        connection.execute(create)
        return connection.execute(take).rowcount == 1


def holder_of(engine: Engine, job: str) -> tuple[str, datetime] | None:
    """Who holds `job` and until when (for tests and operators); None if never claimed."""
    query = select(JobLease.holder, JobLease.expires_at).where(JobLease.name == job)
    with engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    return (row.holder, row.expires_at) if row else None
