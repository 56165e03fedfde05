"""The prediction log on SQLite: batched writes, spooling while the database fails, replay;
the faults it must survive: a row the database refuses, a full disk, memory running out."""

import contextlib
import dataclasses
import os
import queue
import subprocess
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from support import eventually
from support import prediction_record as record

import service.store.db as store_db
import service.store.log as store_log
from service.store import PredictionLog, PredictionRecord
from service.store.labels import save_feedback
from service.store.schema import RUNTIME_PRIVILEGES, Base


def rows(db) -> list[str]:
    with create_engine(f"sqlite:///{db}").connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT request_id FROM predictions"))]


@pytest.fixture
def make_log(tmp_path):
    logs = []

    def factory(**kwargs):
        options = {"flush_interval_s": 0.05, "retry_interval_s": 0.1}
        log = PredictionLog(
            f"sqlite:///{tmp_path}/db/p.db", tmp_path / "spool", **{**options, **kwargs}
        )
        logs.append(log)
        return log

    yield factory
    for log in logs:
        log.close(timeout_s=2)


def test_records_are_migrated_and_written(make_log, tmp_path):
    log = make_log()
    log.start()
    for i in range(25):
        log.record(record(i))
    eventually(lambda: log.written == 25, "log.written == 25", timeout_s=10, interval_s=0.05)
    assert sorted(rows(tmp_path / "db/p.db")) == sorted(f"req-{i}" for i in range(25))
    with create_engine(f"sqlite:///{tmp_path}/db/p.db").connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"


class FlakyInsert:
    """Fails while `down` is set, like a stopped database; then passes through."""

    def __init__(self):
        self.down = True
        self.real = store_log.insert_ignoring_duplicates

    def __call__(self, engine, records):
        if self.down:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        return self.real(engine, records)


def test_failed_batches_are_spooled_then_replayed_without_loss(make_log, tmp_path, monkeypatch):
    flaky = FlakyInsert()
    monkeypatch.setattr(store_log, "insert_ignoring_duplicates", flaky)
    log = make_log()
    log.start()
    for i in range(30):
        log.record(record(i))
    eventually(lambda: log.spooled == 30, "log.spooled == 30", timeout_s=10, interval_s=0.05)
    assert log.pending == 30 and list((tmp_path / "spool").glob("*.jsonl"))
    flaky.down = False
    eventually(lambda: log.pending == 0, "log.pending == 0", timeout_s=10, interval_s=0.05)
    assert sorted(rows(tmp_path / "db/p.db")) == sorted(f"req-{i}" for i in range(30))


def test_replaying_a_file_twice_inserts_each_row_once(make_log, tmp_path):
    log = make_log()
    batch = [record(i) for i in range(5)]
    log._spool(batch)
    log._spool(batch)  # e.g. a crash after the insert, before the spool file was removed
    log.start()
    eventually(lambda: log.pending == 0, "log.pending == 0", timeout_s=10, interval_s=0.05)
    assert sorted(rows(tmp_path / "db/p.db")) == [f"req-{i}" for i in range(5)]


def test_close_spools_what_the_database_did_not_take_and_a_restart_replays_it(
    make_log, tmp_path, monkeypatch
):
    flaky = FlakyInsert()
    monkeypatch.setattr(store_log, "insert_ignoring_duplicates", flaky)
    log = make_log(flush_interval_s=60)  # nothing flushes before close()
    log.start()
    for i in range(7):
        log.record(record(i))
    log.close()
    assert log.spooled == 7
    flaky.down = False
    restarted = make_log()
    assert restarted.pending == 7  # found the spool left by the earlier run
    restarted.start()
    eventually(
        lambda: restarted.pending == 0, "restarted.pending == 0", timeout_s=10, interval_s=0.05
    )
    assert len(rows(tmp_path / "db/p.db")) == 7


def test_a_refused_row_is_dead_lettered_and_never_blocks_the_rows_behind_it(make_log, tmp_path):
    log = make_log()
    log.start()
    poisoned = record(7)
    poisoned.class_index = None  # NOT NULL: the database refuses it, as PostgreSQL a long label
    for i in range(20):
        log.record(poisoned if i == 7 else record(i))
    eventually(lambda: log.written + log.dead_lettered == 20, "20 rows handled", timeout_s=10)
    assert sorted(rows(tmp_path / "db/p.db")) == sorted(f"req-{i}" for i in range(20) if i != 7)
    [(error, row)] = list(log.dead_letters.entries())
    assert row["request_id"] == "req-7" and "NOT NULL" in error
    assert log.dead_lettered == 1 and log.written == 19 and log.pending == 0
    assert oct(log.dead_letters.path.stat().st_mode & 0o777) == "0o600"


def test_a_dead_letter_replay_keeps_only_the_rows_still_refused(tmp_path):
    from service.store.dead_letters import DeadLetters

    letters = DeadLetters(tmp_path)
    for i in range(3):
        letters.add(record(i).to_row(), "value too long")
    inserted = []

    def insert(row):
        if row["request_id"] == "req-1":
            raise ValueError("still too long")
        inserted.append(row["request_id"])

    assert letters.replay(insert) == (2, 1)
    assert inserted == ["req-0", "req-2"]
    assert [(e, r["request_id"]) for e, r in letters.entries()] == [("still too long", "req-1")]
    assert list(letters.folder.iterdir()) == [letters.path]


@pytest.fixture
def full_disk(tmp_path):
    """A real file system that is full: a 64 KiB tmpfs (root only, as `make test` runs)."""
    if os.geteuid() != 0:
        pytest.fail("this fault test mounts a tmpfs: run the unit tests as root, as CI does")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder):
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as fh:
        while True:
            fh.write(b"x" * 4096)
            fh.flush()


def test_a_full_disk_neither_kills_the_writer_nor_loses_a_row(tmp_path, monkeypatch, full_disk):
    flaky = FlakyInsert()
    monkeypatch.setattr(store_log, "insert_ignoring_duplicates", flaky)
    log = PredictionLog(
        f"sqlite:///{tmp_path}/p.db",
        full_disk / "spool",
        flush_interval_s=0.05,
        retry_interval_s=0.1,
    )
    fill(full_disk)
    log.start()
    for i in range(40):
        log.record(record(i))
    eventually(lambda: len(log._held) == 40, "40 rows held in memory", timeout_s=10)
    assert log.spooled == 0 and log.pending == 40
    assert any(t.name == "prediction-log" for t in threading.enumerate())  # still writing
    (full_disk / "filler").unlink()  # space again, the database still down: the spool takes them
    eventually(lambda: log.spooled == 40, "log.spooled == 40", timeout_s=10)
    flaky.down = False
    eventually(lambda: log.pending == 0, "log.pending == 0", timeout_s=10)
    log.close(timeout_s=2)
    assert sorted(rows(tmp_path / "p.db")) == sorted(f"req-{i}" for i in range(40))


def test_memory_is_bounded_and_what_is_dropped_is_counted(tmp_path, monkeypatch, full_disk):
    monkeypatch.setattr(store_log, "insert_ignoring_duplicates", FlakyInsert())
    dropped = []
    log = PredictionLog(
        f"sqlite:///{tmp_path}/p.db",
        full_disk / "spool",
        flush_interval_s=0.05,
        retry_interval_s=0.1,
        max_memory_rows=25,
        on_dropped=dropped.append,
    )
    fill(full_disk)
    log.start()
    for i in range(60):
        log.record(record(i))
    eventually(lambda: log.dropped == 35, "35 rows dropped", timeout_s=10)
    assert sum(dropped) == 35 and log.pending == 25
    log.close(timeout_s=2)
    assert log.dropped == 60  # neither the database nor the spool took the rest: counted too


def test_spool_round_trip_keeps_every_field():
    original = record(3)
    assert PredictionRecord.from_json(original.to_json()) == original


def test_a_records_values_are_its_fields_as_dataclasses_gives_them():
    original = record(5)
    assert original.values() == dataclasses.asdict(original)
    assert original.values() is not original.__dict__  # the insert may not change the record


class CountedQueue(queue.SimpleQueue):
    """The log's queue, counting the reads that wait for a row (each wakes the writer)."""

    def __init__(self):
        self.waits = 0

    def get(self, block=True, timeout=None):
        self.waits += block
        return super().get(block, timeout)


def test_recording_a_row_does_not_wake_the_writer(make_log, tmp_path):
    # Woken once per row, the writer takes the GIL from the event loop and the model's thread
    # once per prediction: it waits the flush interval out instead, then takes what came.
    log = make_log(flush_interval_s=0.2)
    log._queue = CountedQueue()
    log.start()
    for i in range(30):
        log.record(record(i))
        time.sleep(0.01)
    eventually(lambda: log.written == 30, "log.written == 30", timeout_s=10, interval_s=0.05)
    assert log._queue.waits == 0
    assert sorted(rows(tmp_path / "db/p.db")) == sorted(f"req-{i}" for i in range(30))


def test_a_full_batch_is_written_without_waiting_for_the_interval(make_log, monkeypatch):
    log = make_log(flush_interval_s=60, flush_batch_size=10)
    for i in range(25):
        log.record(record(i))
    waited = []
    monkeypatch.setattr(log._stop, "wait", waited.append)
    assert [r.request_id for r in log._collect()] == [f"req-{i}" for i in range(10)]
    assert [r.request_id for r in log._collect()] == [f"req-{i}" for i in range(10, 20)]
    assert waited == []
    assert [r.request_id for r in log._collect()] == [f"req-{i}" for i in range(20, 25)]
    assert waited == [60]  # fewer than a batch: it waits the interval out first


def log_at_revision(tmp_path, revision: str, *rows: str, name: str = "old.db"):
    """A SQLite log migrated only as far as `revision`, holding these rows (INSERTs)."""
    from alembic import command
    from alembic.config import Config

    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{tmp_path}/{name}")
    config = Config()
    config.set_main_option("script_location", str(store_db.MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        for row in rows:
            connection.execute(text(row))
    return engine


def test_a_0001_log_upgrades_in_place_keeping_its_rows(tmp_path):
    """Hosts already logging keep their history: 0002 adds columns with defaults, 0003 a table."""
    engine = log_at_revision(
        tmp_path,
        "0001",
        "INSERT INTO predictions VALUES ('a', '2026-01-01', 'r1', 'm', '1', 3, 'x', 0.9,"
        " 10.0, 64, 48, 500)",
    )
    store_db.migrate(engine)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT request_id, variant, role, item_index, brightness FROM predictions")
        ).one()
        tables = {r[0] for r in connection.execute(text("SELECT name FROM sqlite_master"))}
    assert tuple(row) == ("r1", "main", "serve", 0, None)
    assert {"feedback", "reference_profiles", "drift_results", "job_leases"} <= tables


def test_a_0003_log_keeps_its_feedback_and_gains_its_sender(tmp_path):
    """0004 adds feedback.labelled_by: labels sent before it stay, with no sender."""
    engine = log_at_revision(
        tmp_path,
        "0003",
        "INSERT INTO feedback (created_at, request_id, item_index, class_index, label)"
        " VALUES ('2026-01-01', 'r1', 0, 3, 'x')",
    )
    store_db.migrate(engine)
    save_feedback(engine, "r2", 0, 4, "y", labelled_by="labeler")
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT request_id, label, labelled_by FROM feedback ORDER BY request_id")
        ).all()
    assert [tuple(r) for r in rows] == [("r1", "x", None), ("r2", "y", "labeler")]


def test_every_table_has_its_runtime_privileges():
    """A new table without a line in RUNTIME_PRIVILEGES would be out of the runtime role's reach
    (or, granted by hand, beyond what it needs)."""
    assert set(Base.metadata.tables) | {"alembic_version"} == set(RUNTIME_PRIVILEGES)
    assert all(set(p) <= {"SELECT", "INSERT", "UPDATE"} for p in RUNTIME_PRIVILEGES.values())


def test_a_log_that_may_not_migrate_spools_until_the_schema_is_at_head(make_log, tmp_path):
    """database.migrate: false: a schema behind the code is never written to, nor migrated by
    the service; its rows wait in the spool, and the log names the command that fixes it."""
    log_at_revision(tmp_path / "db", "0003", name="p.db")
    log = make_log(migrate_on_start=False)
    with pytest.raises(
        store_db.SchemaBehind, match=r"at 0003 but this release needs 0004.*migrate"
    ):
        store_db.check_schema(log.engine)
    log.start()
    for i in range(3):
        log.record(record(i))
    eventually(lambda: log.spooled == 3, "3 rows spooled", timeout_s=10, interval_s=0.05)
    assert not log.migrated
    store_db.migrate(log.engine)  # what `bento-fleet migrate` does as the owner
    eventually(lambda: log.written == 3, "the spool replayed", timeout_s=10, interval_s=0.05)


def test_a_schema_newer_than_the_code_is_accepted_as_after_a_rollback(tmp_path):
    engine = log_at_revision(tmp_path, "0004")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    store_db.check_schema(engine)  # no SchemaBehind: migrations only add
