"""The drift job's lease on a real PostgreSQL: of many connections claiming at once (as the
workers of several hosts would), exactly one wins, and the lease lapses at its expiry."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine
from support import together

from service.store.leases import claim, holder_of
from service.store.log import migrate


@pytest.fixture
def engine(postgres):
    engine = create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    migrate(engine)
    yield engine
    engine.dispose()


def test_of_twelve_connections_claiming_at_once_exactly_one_wins(engine):
    now = datetime.now(UTC)
    job = f"drift:test-{now.timestamp()}"
    won = together([lambda i=i: claim(engine, job, f"host{i}", 300, now) for i in range(12)])
    assert won.count(True) == 1
    assert holder_of(engine, job)[0] == f"host{won.index(True)}"
    assert not claim(engine, job, "late", 300, now + timedelta(seconds=299))
    assert claim(engine, job, "late", 300, now + timedelta(seconds=300))
