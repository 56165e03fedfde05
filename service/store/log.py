"""Batched, non-blocking prediction log with a local disk spool.

Requests only append to an in-memory queue (`record`, O(1), never touches the database).
A writer thread flushes the queue in batches. When the database is slow or down, a batch that
fails is written to a JSON-lines file in the spool folder instead, and the writer keeps
spooling (without waiting on the database) until a retry succeeds; then it replays the spool
oldest first. Rows carry their own primary key and are inserted with ON CONFLICT DO NOTHING,
so a replay after a half-finished insert never duplicates a row. `close()` flushes everything
(to the database, or else to the spool) on graceful shutdown, and the next start replays it.

Faults, and why none of them stops the log:
- The database *down* (connection refused, timeout) and the database *refusing a row* (a value
  too long, a constraint) are told apart by the error's class. Down: spool and retry later.
  Refused: the batch is halved until the refused rows stand alone; those go to the dead-letter
  file (`DeadLetters`, which an operator lists and replays with `bento-fleet log`) and every
  other row is written. A poisoned row never blocks the rows behind it.
- The spool itself failing (a full disk, ENOSPC; a read-only file system) keeps the batch in
  memory and retries it at the next flush, with the database retried first.
- Memory is bounded: rows held in memory (queued or kept back after a failed spool) never
  exceed `max_memory_rows`. Beyond it `record` drops the row and counts it (`dropped`, a
  metric with an alert): losing rows must be loud, running the host out of memory is worse.
- Any other error in the writer is logged and the writer goes on.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from ..ids import new_id
from .db import SchemaBehind, dialect_insert, ensure_schema, make_engine
from .dead_letters import DeadLetters, error_message
from .schema import Prediction, Role

log = logging.getLogger(__name__)


@dataclass
class PredictionRecord:
    request_id: str
    model_name: str
    model_version: str
    class_index: int
    label: str
    confidence: float
    latency_ms: float
    image_width: int
    image_height: int
    image_bytes: int
    item_index: int = 0
    variant: str = "main"
    role: str = Role.SERVE
    top5: str = ""
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    sharpness: float | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: new_id())

    def values(self) -> dict:
        """Its fields by name, as the insert takes them: a copy of the instance's dict (every
        field is a plain value), for a fiftieth of what dataclasses.asdict costs a row."""
        return dict(self.__dict__)

    def to_row(self) -> dict:
        """Its fields as JSON types (the spool's and the dead-letter file's form)."""
        row = self.values()
        row["created_at"] = self.created_at.isoformat()
        return row

    @classmethod
    def from_row(cls, row: dict) -> PredictionRecord:
        return cls(**{**row, "created_at": datetime.fromisoformat(row["created_at"])})

    def to_json(self) -> str:
        return json.dumps(self.to_row())

    @classmethod
    def from_json(cls, line: str) -> PredictionRecord:
        return cls.from_row(json.loads(line))


def insert_ignoring_duplicates(engine: Engine, records: list[PredictionRecord]) -> None:
    statement = dialect_insert(engine)(Prediction).on_conflict_do_nothing(index_elements=["id"])
    with engine.begin() as connection:
        connection.execute(statement, [record.values() for record in records])


class PredictionLog:
    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        flush_interval_s: float = 0.5,
        flush_batch_size: int = 500,
        retry_interval_s: float = 2.0,
        connect_timeout_s: int = 3,
        max_memory_rows: int = 100_000,
        migrate_on_start: bool = True,
        on_pending: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        on_dead_letter: Callable[[int], None] | None = None,
    ):
        self.url = url
        self.spool_dir = Path(spool_dir)
        self.flush_interval_s = flush_interval_s
        self.flush_batch_size = flush_batch_size
        self.retry_interval_s = retry_interval_s
        self.engine = make_engine(url, connect_timeout_s)
        self.max_memory_rows = max_memory_rows
        self._queue: queue.SimpleQueue[PredictionRecord] = queue.SimpleQueue()
        self._held: list[PredictionRecord] = []  # kept back after the spool failed (ENOSPC)
        self.dead_letters = DeadLetters(self.spool_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.migrate_on_start = migrate_on_start  # else only check_schema: see db.py
        self._migrated = False
        self._next_attempt = 0.0  # monotonic time before which the database is not retried
        self._spool_seq = 0
        self.written = 0
        self.spooled = 0
        self.dropped = 0
        self.dead_lettered = 0
        self._on_pending = on_pending  # told the backlog after every flush (a metric)
        self._on_dropped = on_dropped  # told each count of rows dropped (a counter)
        self._on_dead_letter = on_dead_letter  # told each count of rows refused for good
        self._spool_failing = False
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._spooled_rows = self._count_spooled_rows()  # left over from an earlier run

    # -- request path -------------------------------------------------------------------
    def record(self, record: PredictionRecord) -> None:
        if self._queue.qsize() + len(self._held) >= self.max_memory_rows:
            self._drop(1, "memory bound reached (max_memory_rows)")
            return
        self._queue.put(record)

    def _drop(self, count: int, why: str) -> None:
        if self.dropped == 0 or count > 1:
            log.error("prediction log: dropping %d record(s): %s", count, why)
        self.dropped += count
        if self._on_dropped:
            self._on_dropped(count)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued: to the database if it answers, else to the spool."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self._flush(self._drain(), final=True)
        except Exception:
            log.exception("prediction log: final flush failed")
        if self._held:  # neither the database nor the spool took them
            self._drop(len(self._held), "database and spool both failed at shutdown")
            self._held = []
        self.engine.dispose()

    @property
    def migrated(self) -> bool:
        """True once the schema is at head: the tables exist."""
        return self._migrated

    @property
    def pending(self) -> int:
        """Records not yet in the database: queued in memory or spooled on disk."""
        return self._queue.qsize() + len(self._held) + self._spooled_rows

    def _count_spooled_rows(self) -> int:
        total = 0
        for path in self._spool_files():
            try:
                with path.open() as fh:
                    total += sum(1 for _ in fh)
            except FileNotFoundError:
                pass
        return total

    # -- writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush(self._collect())
            except Exception:  # never let one fault end logging for good
                log.exception("prediction log: unexpected error in the writer; going on")
                time.sleep(self.retry_interval_s)
            if self._on_pending:
                self._on_pending(self.pending)
        # close() drains whatever is left after the join.

    def _collect(self) -> list[PredictionRecord]:
        """The next batch: what arrived in one flush interval, taken at its end (one wake-up
        per interval: taking each row as it came woke this thread, and so made it take the GIL
        from the event loop and the model's thread, once per prediction), or at once when a
        full batch is already waiting."""
        if self._queue.qsize() < self.flush_batch_size:
            self._stop.wait(self.flush_interval_s)
        return self._drain(self.flush_batch_size)

    def _drain(self, limit: float = float("inf")) -> list[PredictionRecord]:
        batch = []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _flush(self, batch: list[PredictionRecord], final: bool = False) -> None:
        if self._held:
            batch, self._held = self._held + batch, []
        retry_due = final or time.monotonic() >= self._next_attempt
        try:
            # Spooled rows go first, so the database receives records in the order they were made.
            if (
                retry_due
                and self._database_ok()
                and self._replay_spool()
                and (not batch or self._write(batch))
            ):
                return
        except Exception as exc:  # unforeseen: the batch is kept, by the spool or in memory
            log.exception("prediction log: write failed unexpectedly; spooling")
            self._mark_down(exc)
        if batch:
            self._spool(batch)

    def _database_ok(self) -> bool:
        if self._migrated:
            return True
        try:
            ensure_schema(self.engine, self.migrate_on_start)
            self._migrated = True
            return True
        except (SQLAlchemyError, OSError, SchemaBehind) as exc:
            self._mark_down(exc)
            return False

    def _write(self, batch: list[PredictionRecord]) -> bool:
        """Write the batch; False if the database is down (nothing refused is left behind)."""
        try:
            insert_ignoring_duplicates(self.engine, batch)
            self.written += len(batch)
            return True
        except (DataError, IntegrityError) as exc:  # the database answered: it refuses rows
            if len(batch) == 1:
                reason = error_message(exc)
                self.dead_letters.add(batch[0].to_row(), reason)
                self.dead_lettered += 1
                log.error("prediction log: row %s refused, dead-lettered: %s", batch[0].id, reason)
                if self._on_dead_letter:
                    self._on_dead_letter(1)
                return True
            half = len(batch) // 2  # about log2(n) inserts find each refused row
            return self._write(batch[:half]) and self._write(batch[half:])
        except (SQLAlchemyError, OSError) as exc:
            self._mark_down(exc)
            return False

    def _mark_down(self, exc: Exception) -> None:
        if self._next_attempt <= time.monotonic():
            log.warning("prediction log: database unavailable, spooling to disk: %s", exc)
        self._next_attempt = time.monotonic() + self.retry_interval_s

    # -- spool --------------------------------------------------------------------------
    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.jsonl"))

    def _spool(self, batch: list[PredictionRecord]) -> None:
        self._spool_seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._spool_seq:06d}"
        tmp = self.spool_dir / f"{name}.tmp"
        try:
            with tmp.open("w") as fh:
                fh.writelines(record.to_json() + "\n" for record in batch)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(self.spool_dir / f"{name}.jsonl")  # atomic: replay never sees half a file
        except OSError as exc:  # ENOSPC, EROFS: keep the rows and try again at the next flush
            tmp.unlink(missing_ok=True)
            if not self._spool_failing:
                log.error("prediction log: spool write failed, holding rows in memory: %s", exc)
            self._spool_failing = True
            self._held = batch  # _flush put what was held before at its front
            if len(self._held) > self.max_memory_rows:  # oldest rows go first
                excess = len(self._held) - self.max_memory_rows
                self._held = self._held[excess:]
                self._drop(excess, f"spool failing ({exc}) and memory bound reached")
            return
        if self._spool_failing:
            log.warning("prediction log: spool writable again")
            self._spool_failing = False
        self.spooled += len(batch)
        self._spooled_rows += len(batch)

    def _replay_spool(self) -> bool:
        """Insert spooled files oldest first; False if the database failed on the way."""
        for path in self._spool_files():
            try:
                records = [PredictionRecord.from_json(line) for line in path.open() if line.strip()]
            except FileNotFoundError:  # another worker replayed it
                continue
            if records and not self._write(records):
                return False
            path.unlink(missing_ok=True)
            self._spooled_rows = max(0, self._spooled_rows - len(records))
            log.info("prediction log: replayed %d spooled records from %s", len(records), path)
        return True
