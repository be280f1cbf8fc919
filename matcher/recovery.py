"""Rebuild a book from its newest usable checkpoint and its journal, checking every record.

The journal holds each command *and* the events it produced when it was first processed.
Replaying the command into the engine must give the very same events; if it does not, the
code (or the file) is not what wrote the journal, and serving that book would show clients
a market that disagrees with their acks. That is a determinism alarm: stop.

A checkpoint (``journal.checkpoints``) is only an accelerator: the newest one at or below
the journal's last seq is restored, its state hash checked again, and only the records after
it are replayed. A damaged one (bad checksum, undecodable, a hash that does not match its
state, not restorable) is skipped with a warning for the next older one, and with none left
the whole journal is replayed from seq 1.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path

import lmdb

from daemon import logs
from daemon.logs import log
from engine.engine import Engine
from engine.instrument import Instrument
from journal import Journal, JournalError
from journal.checkpoints import CheckpointStore, CorruptSnapshot, Snapshot
from journal.record import DeterminismAlarm, replay_run

__all__ = ["DeterminismAlarm", "Recovered", "open_checkpoints", "rebuild", "restore_checkpoint"]


class Recovered:
    """A rebuilt engine and what it took."""

    __slots__ = ("checkpoint_id", "checkpoint_seq", "duration_ms", "engine", "records", "seq")

    def __init__(
        self,
        engine: Engine,
        seq: int,
        records: int,
        duration_ms: float,
        checkpoint_id: str | None = None,
        checkpoint_seq: int = 0,
    ) -> None:
        self.engine = engine
        self.seq = seq  # last journal seq applied (0 for an empty journal)
        self.records = records  # journal records replayed (after the checkpoint, if any)
        self.duration_ms = duration_ms
        self.checkpoint_id = checkpoint_id  # the checkpoint restored, None for a full replay
        self.checkpoint_seq = checkpoint_seq  # its journal seq (0 for a full replay)


def open_checkpoints(
    path: str | os.PathLike[str], logger: logging.Logger | None = None
) -> CheckpointStore | None:
    """The checkpoint store, read-only; None if there is none yet (or it cannot be opened:
    a checkpoint only saves time, so an unreadable store is a warning, never a refusal)."""
    if not Path(path).exists():
        return None
    try:
        return CheckpointStore(path, readonly=True)
    except FileNotFoundError:  # the file exists but holds no checkpoints yet
        return None
    except (OSError, lmdb.Error) as exc:
        log(logger or logs.get("recovery"), "checkpoints_unreadable", logging.WARNING,
            path=str(path), error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        return None


def restore_checkpoint(
    spec: Instrument,
    checkpoints: CheckpointStore,
    at_most_seq: int,
    logger: logging.Logger | None = None,
) -> tuple[Engine, Snapshot] | None:
    """An engine restored from the newest intact checkpoint of `spec.symbol` with seq <=
    `at_most_seq`, and that checkpoint; None if there is none. Damaged ones are logged."""
    logger = logger or logs.get(f"recovery.{spec.symbol}")

    def skipped(exc: CorruptSnapshot) -> None:
        log(logger, "checkpoint_skipped", logging.WARNING, symbol=exc.symbol, seq=exc.seq,
            reason=exc.reason)  # fmt: skip

    bound = at_most_seq
    while bound >= 0:
        try:
            snapshot = checkpoints.newest(spec.symbol, bound, on_corrupt=skipped)
        except lmdb.Error as exc:
            skipped(CorruptSnapshot(spec.symbol, bound, f"store unreadable: {exc}"))
            return None
        if snapshot is None:
            return None
        engine = Engine(spec)
        try:
            engine.restore(snapshot.state)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            skipped(CorruptSnapshot(spec.symbol, snapshot.seq, f"cannot be restored: {exc}"))
        else:
            if engine.state_hash_matches(snapshot.state_hash):
                return engine, snapshot
            reason = f"state hash {engine.state_hash()} differs from the recorded {snapshot.state_hash}"
            skipped(CorruptSnapshot(spec.symbol, snapshot.seq, reason))
        bound = snapshot.seq - 1
    return None


def _replay(journal: Journal, engine: Engine, start: int) -> tuple[int, int]:
    """Apply every record from `start` on, checking its events; (last seq, records applied).

    The collector is off meanwhile: a replay allocates millions of objects that all live (the
    book) or die by reference count, and full collections walking a growing book cost a
    third of the replay. The caller freezes what survives.
    """
    process = engine.process  # bound once: this loop runs once per record after the checkpoint
    seq = start - 1
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for first, values in journal.read_raw_chunks(start):
            replay_run(values, first, process)
            seq = first + len(values) - 1
    finally:
        if was_enabled:
            gc.enable()
    return seq, seq - start + 1


def rebuild(
    journal: Journal,
    spec: Instrument,
    checkpoints: CheckpointStore | None = None,
    logger: logging.Logger | None = None,
) -> Recovered:
    """Restore the newest usable checkpoint (if any), replay the journal after it, checking
    every record; raise ``DeterminismAlarm`` on a mismatch.

    A journal whose first records were archived away is rebuilt only if a checkpoint covers
    everything before its first record; otherwise ``JournalError`` rather than silently
    starting from the middle.
    """
    started = time.perf_counter()
    last = journal.last_seq()
    first = journal.first_seq()
    restored = None if checkpoints is None else restore_checkpoint(spec, checkpoints, last, logger)
    if restored is None:
        engine, snapshot = Engine(spec), None
    else:
        engine, snapshot = restored
    start = 1 if snapshot is None else snapshot.seq + 1
    if first > start:
        raise JournalError(
            f"{journal.path} starts at seq {first}: recovery needs a checkpoint at seq >= {first - 1}"
            + ("" if snapshot is None else f" (the newest usable one is at seq {snapshot.seq})")
        )
    seq, records = _replay(journal, engine, start)
    if seq < last:
        raise JournalError(f"{journal.path}: replay stopped at seq {seq}, journal ends at {last}")
    return Recovered(
        engine,
        seq,
        records,
        (time.perf_counter() - started) * 1000,
        None if snapshot is None else snapshot.snapshot_id,
        0 if snapshot is None else snapshot.seq,
    )
