"""Job leases: of the workers that find the drift job due together, exactly one runs it.

SQLite here (one file, one engine per worker, as separate processes would have); the same claim
against a real PostgreSQL is in tests/integration/test_postgres_coordination.py."""

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import create_engine, func, select
from support import log_observations, together
from test_drift import observations

from service.modelops.drift import Profile
from service.modelops.jobs import DriftStatus, ModelOps, run_drift_check
from service.settings import Settings
from service.store import drift_runs as drift_store
from service.store.db import migrate
from service.store.leases import claim, holder_of
from service.store.schema import DriftResult

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def engines(path, n):
    return [create_engine(f"sqlite:///{path}", connect_args={"timeout": 30}) for _ in range(n)]


def test_of_eight_workers_claiming_at_once_exactly_one_wins(tmp_path):
    workers = engines(tmp_path / "l.db", 8)
    migrate(workers[0])
    won = together(
        [lambda e=e, i=i: claim(e, "drift:1", f"w{i}", 300, T0) for i, e in enumerate(workers)]
    )
    assert won.count(True) == 1
    assert holder_of(workers[0], "drift:1")[0] == f"w{won.index(True)}"


def test_a_lease_lapses_on_its_own_and_jobs_are_separate(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/l.db")
    migrate(engine)
    assert claim(engine, "drift:1", "a", 300, T0)
    assert not claim(engine, "drift:1", "b", 300, T0 + timedelta(seconds=299))
    assert not claim(engine, "drift:1", "a", 300, T0 + timedelta(seconds=10))  # not re-entrant
    assert claim(engine, "drift:2", "b", 300, T0)  # another model version's job
    assert claim(engine, "drift:1", "b", 300, T0 + timedelta(seconds=300))  # a's died or is done
    assert holder_of(engine, "drift:1")[0] == "b" and holder_of(engine, "nothing") is None


def test_workers_that_find_the_drift_job_due_together_store_one_run(tmp_path):
    path = tmp_path / "p.db"
    settings = Settings(database={"url": f"sqlite:///{path}"}, drift={"min_samples": 30})
    first = create_engine(f"sqlite:///{path}")
    migrate(first)
    rng = np.random.default_rng(0)
    drift_store.save_reference(
        first, "m", "1", "test", Profile.from_observations(observations(rng, 200))
    )
    log_observations(first, observations(rng, 100))
    workers = [ModelOps(settings, engine) for engine in engines(path, 6)]
    for i, worker in enumerate(workers):
        worker.holder = f"worker-{i}"  # one process here; separate processes differ by pid
    checks = together([lambda w=w: w.refresh_drift("m", "1") for w in workers])
    with first.connect() as connection:
        runs = connection.execute(select(func.count(func.distinct(DriftResult.run_id)))).scalar()
    assert runs == 1
    # the others publish that run, or nothing yet if they looked before it was stored
    assert len({check.run_id for check in checks if check is not None}) == 1


def test_the_first_predictions_become_the_reference_only_when_the_operator_says_so(tmp_path):
    """By default a reference comes from data the operator chose (`drift reference`), never
    from whatever the public sent first after a deploy."""
    path = tmp_path / "p.db"
    engine = create_engine(f"sqlite:///{path}")
    migrate(engine)
    log_observations(engine, observations(np.random.default_rng(1), 600))
    default = Settings(database={"url": f"sqlite:///{path}"}, drift={"min_samples": 30})
    assert run_drift_check(engine, default, "m", "1").status == DriftStatus.NO_REFERENCE
    assert drift_store.latest_reference(engine, "1") is None
    allowed = default.model_copy(
        update={"drift": default.drift.model_copy(update={"reference_first_n": 50})}
    )
    assert run_drift_check(engine, allowed, "m", "1").status == DriftStatus.CHECKED
    assert drift_store.latest_reference(engine, "1").source == "first 50 predictions"
