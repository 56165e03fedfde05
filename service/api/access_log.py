"""BentoML's access log, written ten times a second by a thread instead of once a request by
the event loop.

BentoML logs a line per request ("bentoml.access") through a StreamHandler that formats it and
flushes it to stdout at once: a write(2) on the event loop for every request. CPython lets go
of the GIL around that write, and with the model's thread or the decode threads running Python
the loop then queues to get it back (service/ids.py: the same for getrandom). On this
project's machine, with one Python-busy thread beside it, a line cost the loop 130-270 µs of
wall time, 13-16 of them CPU; gathered as below, 8 µs, 4 of them CPU.

`WrittenOnAThread.install()` gives that logger a handler that runs the levels and filters of
the handlers the line would reach, on the calling thread (BentoML's filter reads the request's
trace ids from context variables, which another thread cannot see), and appends the record to
a deque: no system call, no thread woken. A thread formats what has gathered every `FLUSH_S`
with those handlers and writes it in one go, so that a busy worker makes one write for many
lines, and an idle one wakes ten times a second. The lines, their format and their order are
BentoML's, up to `FLUSH_S` later. When `MAX_PENDING` lines are waiting (stdout blocked), the
caller writes its line itself, as before, rather than hold more in memory or drop it. `stop()`
writes what is left and puts the logger back as it was; a worker killed outright loses at most
its last `FLUSH_S` of lines (Nginx logs every request at the gateway too).
"""

from __future__ import annotations

import collections
import logging
import threading

ACCESS_LOGGER = "bentoml.access"
FLUSH_S = 0.1
MAX_PENDING = 10_000


Pending = tuple[logging.LogRecord, list[logging.Handler]]  # a record, and who takes it


class _Gather(logging.Handler):
    """Stands in for the handlers a record would reach: their levels and filters, here."""

    def __init__(self, targets: list[logging.Handler], pending: collections.deque):
        super().__init__()
        self.targets, self.pending = targets, pending

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle would take this handler's lock around emit: the deque needs none.
        taken = [t for t in self.targets if record.levelno >= t.level and t.filter(record)]
        if not taken:
            return False
        if len(self.pending) < MAX_PENDING:
            self.pending.append((record, taken))  # deque.append is atomic
        else:
            _write([(record, taken)])
        return True


def _write(pending: list[Pending]) -> None:
    """Each target's records, in order, without its filters (they ran where each record was
    made); a plain StreamHandler writes them all and flushes once."""
    targets: dict[logging.Handler, list[logging.LogRecord]] = {}
    for record, taken in pending:
        for target in taken:
            targets.setdefault(target, []).append(record)
    for target, records in targets.items():
        with target.lock:
            if type(target).emit is not logging.StreamHandler.emit:  # its own emit: one each
                for record in records:
                    target.emit(record)
                continue
            for record in records:
                try:
                    target.stream.write(target.format(record) + target.terminator)
                except Exception:  # noqa: BLE001 - as StreamHandler.emit: report it, go on
                    target.handleError(record)
            target.flush()


class WrittenOnAThread:
    def __init__(self, logger_name: str = ACCESS_LOGGER):
        self.logger = logging.getLogger(logger_name)
        self._pending: collections.deque = collections.deque()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: tuple[list[logging.Handler], bool] | None = None

    def install(self) -> None:
        """Move the logger's writes to the thread (one that reaches no handler is left alone)."""
        targets = _handlers_of(self.logger)
        if not targets or self._thread is not None:
            return
        self._saved = (self.logger.handlers[:], self.logger.propagate)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._write_every_flush, name="access-log", daemon=True
        )
        self._thread.start()
        self.logger.handlers = [_Gather(targets, self._pending)]
        self.logger.propagate = False

    def stop(self) -> None:
        if self._thread is None:
            return
        self.logger.handlers, self.logger.propagate = self._saved
        self._stopping.set()
        self._thread.join()
        self._thread = None
        if self._pending:  # appended by a caller that was inside the handler at the swap
            _write([self._pending.popleft() for _ in range(len(self._pending))])

    def _write_every_flush(self) -> None:
        while True:
            stopping = self._stopping.wait(FLUSH_S)
            pending = []
            while self._pending:
                pending.append(self._pending.popleft())
            if pending:
                _write(pending)
            if stopping:
                return


def _handlers_of(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `logger` reaches, as Logger.callHandlers walks them."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found
