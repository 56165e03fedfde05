"""Random ids without a system call each (service/ids.py): uuid4's form, unique, one read of
the kernel's random source per 256 ids, and a forked child that does not repeat its parent's."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from service import ids


@pytest.fixture
def reads(monkeypatch):
    """Counts the reads of the kernel's random source, from an empty buffer."""
    calls = []

    def urandom(size: int) -> bytes:
        calls.append(size)
        return real(size)

    real = os.urandom
    ids._forget_after_fork()
    monkeypatch.setattr(ids.os, "urandom", urandom)
    return calls


def test_ids_are_version_4_uuids_in_hex():
    for _ in range(600):  # across buffer refills
        given = ids.new_id()
        assert re.fullmatch(r"[0-9a-f]{32}", given)
        parsed = uuid.UUID(hex=given)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ids_are_unique():
    made = [ids.new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)


def test_one_read_of_the_random_source_makes_256_ids(reads):
    for _ in range(1000):
        ids.new_id()
    assert reads == [4096] * 4  # uuid.uuid4() would have read 16 bytes 1000 times


def test_a_forked_child_does_not_hand_out_its_parents_next_ids():
    ids.new_id()  # the buffer holds unused bytes now
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's side
        os.write(writer, ids.new_id().encode())
        os._exit(0)
    os.close(writer)
    childs = os.read(reader, 64).decode()
    os.waitpid(child, 0)
    os.close(reader)
    assert re.fullmatch(r"[0-9a-f]{32}", childs)
    assert childs != ids.new_id()
