"""BentoML's access log written by a thread of its own (service/api/access_log.py), on a logger
set up as BentoML sets up the worker's: a StreamHandler on "bentoml", with a filter that reads
the request's context, and "bentoml.access" propagating to it."""

from __future__ import annotations

import contextvars
import io
import logging
import threading
import time

import pytest

from service.api import access_log
from service.api.access_log import WrittenOnAThread

REQUEST = contextvars.ContextVar("request", default="-")


class FromContext(logging.Filter):
    """Like BentoML's TraceRecordFilter: the request's trace ids from context variables."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request = REQUEST.get()
        return True


class Recording(logging.StreamHandler):
    """A StreamHandler as BentoML's (emit not overridden), whose stream notes who writes."""

    def __init__(self):
        super().__init__(Written())
        self.setFormatter(logging.Formatter("%(message)s request=%(request)s"))
        self.addFilter(FromContext())
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()

    @property
    def writers(self) -> set[str]:
        return self.stream.writers

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()


class Written(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


@pytest.fixture
def bentoml_like():
    parent, access = logging.getLogger("t-bentoml"), logging.getLogger("t-bentoml.access")
    handler = Recording()
    parent.handlers, parent.propagate, parent.level = [handler], False, logging.INFO
    access.handlers, access.propagate = [], True
    yield access, handler
    parent.handlers, access.handlers = [], []


def test_lines_are_written_by_the_thread_in_order_with_the_callers_context(bentoml_like):
    access, handler = bentoml_like
    written = WrittenOnAThread(access.name)
    written.install()

    def request(i: int) -> None:
        REQUEST.set(f"r{i}")
        access.info("line %d", i)

    for i in range(500):
        contextvars.copy_context().run(request, i)
    written.stop()
    assert handler.lines() == [f"line {i} request=r{i}" for i in range(500)]
    assert handler.writers == {"access-log"}


def test_stop_puts_the_logger_back(bentoml_like):
    access, handler = bentoml_like
    written = WrittenOnAThread(access.name)
    written.install()
    assert access.propagate is False
    written.stop()
    assert access.handlers == [] and access.propagate is True
    access.info("after")
    assert handler.lines() == ["after request=-"]
    assert handler.writers == {threading.current_thread().name}


def test_lines_that_gather_between_flushes_are_written_with_one_flush(bentoml_like, monkeypatch):
    access, handler = bentoml_like
    monkeypatch.setattr(access_log, "FLUSH_S", 60)  # none but the one at stop()
    written = WrittenOnAThread(access.name)
    written.install()
    for i in range(100):
        access.info("line %d", i)
    assert handler.lines() == [] and handler.flushes == 0  # nothing written on this thread
    written.stop()
    assert len(handler.lines()) == 100 and handler.flushes == 1


def test_lines_are_written_within_a_flush_interval(bentoml_like, monkeypatch):
    access, handler = bentoml_like
    monkeypatch.setattr(access_log, "FLUSH_S", 0.05)
    written = WrittenOnAThread(access.name)
    written.install()
    access.info("soon")
    deadline = time.monotonic() + 5
    while not handler.lines() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handler.lines() == ["soon request=-"]
    written.stop()


def test_a_writer_that_falls_behind_leaves_the_caller_to_write(bentoml_like, monkeypatch):
    access, handler = bentoml_like
    monkeypatch.setattr(access_log, "FLUSH_S", 60)  # a writer that never catches up
    monkeypatch.setattr(access_log, "MAX_PENDING", 3)
    written = WrittenOnAThread(access.name)
    written.install()
    for i in range(5):
        access.info("l%d", i)
    assert handler.lines() == ["l3 request=-", "l4 request=-"]  # beyond 3 waiting: written here
    written.stop()
    assert handler.lines()[2:] == ["l0 request=-", "l1 request=-", "l2 request=-"]
    assert handler.writers == {threading.current_thread().name, "access-log"}


def test_a_logger_that_writes_nowhere_is_left_alone():
    lonely = logging.getLogger("t-nowhere.access")
    logging.getLogger("t-nowhere").propagate = False
    written = WrittenOnAThread(lonely.name)
    written.install()
    assert lonely.handlers == [] and lonely.propagate is True
    written.stop()


def test_each_handler_keeps_its_level_and_its_own_emit(bentoml_like):
    access, handler = bentoml_like
    warnings = Listing(logging.WARNING)
    access.parent.addHandler(warnings)
    written = WrittenOnAThread(access.name)
    written.install()
    access.info("an answer")
    access.warning("a refusal")
    written.stop()
    assert handler.lines() == ["an answer request=-", "a refusal request=-"]
    assert [(r.getMessage(), thread) for r, thread in warnings.emitted] == [
        ("a refusal", "access-log")
    ]


class Listing(logging.Handler):
    """A handler with an emit of its own (as pytest's capture has)."""

    def __init__(self, level: int):
        super().__init__(level)
        self.emitted: list[tuple[logging.LogRecord, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.emitted.append((record, threading.current_thread().name))
