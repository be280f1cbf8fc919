"""Rebuild a book from its journal, checking every record's events on the way.

The journal holds each command *and* the events it produced when it was first processed.
Replaying the command into a fresh engine must give the very same events; if it does not,
the code (or the file) is not what wrote the journal, and serving that book would show
clients a market that disagrees with their acks. That is a determinism alarm: stop.
"""

from __future__ import annotations

import time

from engine.engine import Engine
from engine.instrument import Instrument
from journal import Journal, JournalError


class DeterminismAlarm(Exception):
    """Replaying a journaled command produced other events than the journal recorded."""

    def __init__(self, seq: int, journaled: object, replayed: object) -> None:
        super().__init__(f"journal seq {seq}: replay gave {replayed!r}, journal holds {journaled!r}")
        self.seq = seq


class Recovered:
    """A rebuilt engine and what it took."""

    __slots__ = ("duration_ms", "engine", "records", "seq")

    def __init__(self, engine: Engine, seq: int, records: int, duration_ms: float) -> None:
        self.engine = engine
        self.seq = seq  # last journal seq applied (0 for an empty journal)
        self.records = records
        self.duration_ms = duration_ms


def rebuild(journal: Journal, spec: Instrument) -> Recovered:
    """Replay every journal record into a fresh engine; raise ``DeterminismAlarm`` on a mismatch.

    There are no checkpoints yet, so a journal whose first records were archived away cannot
    be rebuilt (``JournalError``) rather than silently starting from the middle.
    """
    started = time.perf_counter()
    first = journal.first_seq()
    if first > 1:
        raise JournalError(f"{journal.path} starts at seq {first}: recovery needs a checkpoint")
    engine = Engine(spec)
    process = engine.process  # bound once: this loop runs once per record ever written
    seq = records = 0
    for record in journal.read():
        events = process(record.command)
        if events != record.events:
            raise DeterminismAlarm(record.seq, record.events, events)
        seq = record.seq
        records += 1
    return Recovered(engine, seq, records, (time.perf_counter() - started) * 1000)
