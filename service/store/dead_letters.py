"""Prediction rows the database refused for good, kept for an operator to inspect and replay.

One JSON line per row, `{"error": ..., "row": {...}}`, appended to `dead-letter.jsonl` in the
spool's `dead-letter/` folder: the row as it would have been inserted, and the database's
reason. Each line is written with one `write` in append mode, so the workers sharing the folder
never interleave. `replay` renames the file before it inserts the rows again (after the operator
fixed the schema or the data): rows refused meanwhile land in a new file, and the rows the
database still refuses are appended back, so a replay never loses one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError


class DeadLetters:
    def __init__(self, spool_dir: Path):
        self.folder = Path(spool_dir) / "dead-letter"
        self.path = self.folder / "dead-letter.jsonl"

    def add(self, row: dict, error: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"error": error, "row": row}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def entries(self) -> Iterator[tuple[str, dict]]:
        """(error, row) of every dead-lettered row, oldest first."""
        if self.path.exists():
            yield from _read(self.path)

    def replay(self, insert: Callable[[dict], None]) -> tuple[int, int]:
        """Insert every row again, one at a time; (rows written, rows still refused)."""
        if not self.path.exists():
            return 0, 0
        taken = self.folder / f"replaying-{os.getpid()}.part"
        self.path.rename(taken)
        written = refused = 0
        for _, row in _read(taken):
            try:
                insert(row)
                written += 1
            except (SQLAlchemyError, OSError, TypeError, ValueError) as exc:  # refused, or down
                self.add(row, error_message(exc))
                refused += 1
        taken.unlink()
        return written, refused


def _read(path: Path) -> Iterator[tuple[str, dict]]:
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            yield entry["error"], entry["row"]


def error_message(exc: Exception) -> str:
    """The driver's own first line, without SQLAlchemy's statement and parameters."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return (lines[0] if lines else type(original).__name__)[:500]
