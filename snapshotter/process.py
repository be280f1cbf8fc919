"""The snapshotter process: shadow books that follow the journals, and the checkpoints.

It never pauses a matcher: it only reads the journals (read-only LMDB handles, short read
transactions; `Journal.read` holds none across a yield), so a matcher's commits are never
waited for. For each instrument it keeps a shadow `Engine`, started from the newest intact
checkpoint (restored, and its state hash checked) or empty, and applies every journaled
command with the same engine code. The events it produces must equal the journaled ones;
a difference is a *determinism alarm*: logged at ERROR with the symbol and seq, counted,
and that instrument is no longer checkpointed (its shadow cannot be trusted), while the
process and the other instruments carry on.

Every `snapshotter.checkpoint_interval_s`, and for one instrument after
`snapshotter.checkpoint_every_records` records (0 = off), each instrument whose shadow moved
since its last checkpoint gets a new one in `<data_dir>/checkpoints.lmdb`. SIGUSR1 asks for
that at once (`clob snapshot take`: the pid is in `<run_dir>/snapshotter.pid`);
SIGTERM/SIGINT catches up briefly, writes a final checkpoint of what moved, and exits 0.

Readiness (`READY=1`, `CHILD=snapshotter`) is reported right after start-up, before the
shadows caught up, so a long catch-up never delays the daemon; `caught_up` is logged per
instrument when its shadow first reaches the end of its journal.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from types import FrameType
from typing import TypeVar

import lmdb
import msgspec

from daemon import child, logs
from daemon.child import LockHeld, exclusive_lock
from daemon.config import Config
from daemon.logs import log
from daemon.notify import notify
from engine.engine import STATE_HASH_V2, Engine
from engine.instrument import Instrument
from engine.stepwise_checkpoint import EncodedState, LevelEncodings, encode_steps
from journal import CorruptRecord, Journal, JournalError, Record, history, journal_path
from journal.archive import ArchivedJournal
from journal.checkpoints import (
    STATE_IN_PIECES,
    CheckpointStore,
    CorruptSnapshot,
    Snapshot,
    Stored,
    checkpoints_path,
    new_snapshot,
)
from journal.lmdb_files import Committing
from snapshotter import scheduling

EXIT_OK = 0
EXIT_CANNOT_START = child.EXIT_CANNOT_START

PID_FILE = "snapshotter.pid"
# Records applied per instrument per loop turn, so one busy journal does not starve others
# (nor delay a SIGUSR1 / SIGTERM by more than one bounded turn).
MAX_RECORDS_PER_TURN = 5_000
READ_STEP = 64  # records per journal read within a turn (see `_apply`)
# A checkpoint, a turn and an order-history update work in slices of SLICE_S of CPU with
# PAUSE_S asleep after each (`Pacer`), so none holds a core and they take an eleventh of
# one at most: on this 2-core VM even idle-priority CPU shows in the matchers' ack p99 (a
# pure CPU burn standing in for checkpoints: x0.95 at 45 ms per 0.5 s, x1.29 at 150 ms). A
# checkpoint of 133,000 orders took about 0.5 s instead of 0.16 s at 1 ms slices; with
# checkpoints back to back, ack p99 x1.14-1.16 over none instead of x1.18-1.22 (three runs
# each). Slices of 0.5 ms rather than 1 (step 3 of bench/recovery.py, two runs a side,
# windows with host stalls left out): acks slower than 2 ms during a checkpoint's paced
# part 1.1% of them instead of 2.4-2.5%, in quiet windows 0.58-0.74% of all instead of
# 0.88-0.95%; a checkpoint takes about twice as long.
SLICE_S = 0.0005
PAUSE_S = 0.005
# At most this often per instrument, a checkpoint's encoding (which takes the runs the last
# one encoded as they were, where no order in them changed) is checked against the book
# encoded anew: the cost of one checkpoint of the whole book, once an hour.
VERIFY_EVERY_S = 3600.0
# The order-history index is written at most once per HISTORY_EVERY_S per instrument (or
# per MAX_RECORDS_PER_TURN records): each write is a synced commit, and one per poll (20 a
# second under load) cost the matchers' ack p99 about 15% on this VM (2.15 ms against
# 1.81 ms with the index not written, alternating windows in one run). The index is
# derived data: `clob` catches up from the journal whatever it does not hold yet.
HISTORY_EVERY_S = 1.0
# Old checkpoints are pruned once more than keep_checkpoints // PRUNE_SLACK_DIVISOR of them
# are beyond the kept ones (at the default 48: four at a time, so up to 51 are stored), not one after
# every write: deleting several checkpoints' chunks at once rewrites fewer of the store's
# pages per chunk (`CheckpointStore.put_steps`, `slack`). Small `keep`s prune every time.
PRUNE_SLACK_DIVISOR = 16
# On SIGTERM: how long to keep catching up before the final checkpoint.
FINAL_CATCH_UP_S = 2.0
# After a checkpoint write fails (full disk, unwritable store), the automatic triggers
# (record count, interval) wait this long before trying that instrument again: the record
# trigger would otherwise retry, encoding the whole book, on every turn. A requested
# checkpoint (SIGUSR1, `clob snapshot take`) and the one at stop are tried at once.
CHECKPOINT_RETRY_S = 5.0

T = TypeVar("T")


class CannotStart(Exception):
    """The snapshotter cannot run (store unusable, another snapshotter running ...)."""


class Signals:
    """What the signal handlers ask for; read by the loop between turns."""

    def __init__(self) -> None:
        self.stop: str | None = None
        self.take = False

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_take)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop = signal.Signals(signum).name

    def _on_take(self, _signum: int, _frame: FrameType | None) -> None:
        self.take = True


class Shadow:
    """One instrument's shadow book and where it stands in the journal."""

    __slots__ = ("broken", "caught_up", "checkpointed_seq", "encodings", "engine", "history_due",
                 "history_pending", "journal", "path", "retry_at", "seq", "since", "spec",
                 "symbol", "verified_at")  # fmt: skip

    def __init__(self, spec: Instrument, path: Path) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.path = path
        self.engine = Engine(spec)
        # The levels of its last checkpoint, encoded: the next one encodes only those that
        # changed (with checkpoints every few seconds, most of a deep book has not).
        self.encodings = LevelEncodings()
        self.verified_at = time.monotonic()  # when a checkpoint's encoding was last checked
        self.seq = 0  # last journal seq applied to `engine`
        self.checkpointed_seq = 0  # seq of the last checkpoint written (or restored)
        self.since = 0  # records applied since that checkpoint
        self.journal: Journal | None = None
        self.broken: str | None = None  # why this shadow is no longer followed/checkpointed
        self.caught_up = False
        self.retry_at = 0.0  # monotonic: no automatic checkpoint before this (after a failure)
        self.history_pending = history.Pending(self.symbol)  # applied, not yet in the order-history index
        self.history_due = 0.0  # monotonic: when they go there at the latest


class Snapshotter:
    def __init__(
        self,
        config: Config,
        store: CheckpointStore,
        logger: logging.Logger,
        history_index: history.HistoryIndex | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.history = history_index  # order-history index kept current here (None: not kept)
        self.logger = logger
        journals = config.journal_dir()
        self.shadows = [Shadow(i.spec(), journal_path(journals, i.symbol)) for i in config.instruments]
        self.alarms = 0
        self.checkpoints = 0
        self.records = 0
        # True once a stop was asked for (`serve`): pacing stops sleeping, so a paced turn
        # or checkpoint in progress does not eat the supervisor's stop timeout.
        self.stopping: Callable[[], bool] = _never

    # --- start-up -----------------------------------------------------------------------

    def initialise(self) -> None:
        for shadow in self.shadows:
            snap = self._from_checkpoint(shadow, None)
            if snap is not None:
                self._adopt(shadow, snap)

    def _from_checkpoint(self, shadow: Shadow, at_most_seq: int | None) -> Snapshot | None:
        """Restore `shadow` from the newest intact checkpoint (<= at_most_seq), else empty;
        the checkpoint it was restored from."""
        while True:
            snap = self.store.newest(shadow.symbol, at_most_seq, on_corrupt=self._on_corrupt)
            if snap is None:
                self._reset(shadow, Engine(shadow.spec), 0)
                return None
            engine = Engine(shadow.spec)
            try:
                engine.restore(snap.state)
                problem = "" if engine.state_hash_matches(snap.state_hash) else "state hash mismatch"
            except (ValueError, KeyError) as exc:
                problem = f"cannot restore: {exc}"
            if not problem:
                self._reset(shadow, engine, snap.seq)
                log(self.logger, "shadow_restored", symbol=shadow.symbol, seq=snap.seq,
                    snapshot_id=snap.snapshot_id, resting_orders=engine.order_count())  # fmt: skip
                return snap
            log(self.logger, "checkpoint_skipped", logging.WARNING, symbol=shadow.symbol, seq=snap.seq,
                snapshot_id=snap.snapshot_id, reason=problem)  # fmt: skip
            if snap.seq <= 0:
                self._reset(shadow, Engine(shadow.spec), 0)
                return None
            at_most_seq = snap.seq - 1

    def _adopt(self, shadow: Shadow, snap: Snapshot) -> None:
        """Store `snap`, which `shadow` was just restored from, again (the same snapshot id,
        the same bytes) in the pieces this process cuts its book into: the first checkpoint
        under load then writes only what changed since, like every later one, instead of
        the whole book (6 MiB for 100,000 orders). At a daemon's start this is before it
        reports READY; a restarted snapshotter does it beside serving matchers. Either way
        it is paced like any checkpoint. Every chunk it finds stored is read back: a damaged one is
        written again (and so mended for every checkpoint that lists it)."""
        started = time.perf_counter()
        pacer = self._pacer(PAUSE_S)
        encoded = _paced(encode_steps(shadow.engine, reuse=shadow.encodings), pacer)
        # Restore checked the state against the checkpoint's hash, of whichever version it
        # has; a hash of this version must be the one just taken (else: cannot happen).
        if snap.state_hash.startswith(STATE_HASH_V2) and encoded.state_hash != snap.state_hash:
            shadow.encodings = LevelEncodings()
            return
        again = msgspec.structs.replace(snap, state=STATE_IN_PIECES)
        try:
            again_steps = self.store.put_steps(again, encoded.pieces, encoded.digests, scrub_every=1)
            stored = _paced(again_steps, pacer)
        except lmdb.Error as exc:
            log(self.logger, "checkpoint_adopt_failed", logging.WARNING, symbol=shadow.symbol, seq=snap.seq,
                error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return
        self._log_repaired(shadow.symbol, stored)
        log(self.logger, "checkpoint_adopted", symbol=shadow.symbol, seq=snap.seq,
            snapshot_id=snap.snapshot_id, written=stored.written,
            duration_ms=round((time.perf_counter() - started) * 1000, 1))  # fmt: skip

    def _log_repaired(self, symbol: str, stored: Stored) -> None:
        if stored.repaired:
            log(self.logger, "checkpoint_chunks_repaired", logging.WARNING, symbol=symbol,
                chunks=stored.repaired)  # fmt: skip

    def _on_corrupt(self, exc: CorruptSnapshot) -> None:
        log(self.logger, "checkpoint_skipped", logging.WARNING, symbol=exc.symbol, seq=exc.seq,
            reason=exc.reason)  # fmt: skip

    @staticmethod
    def _reset(shadow: Shadow, engine: Engine, seq: int) -> None:
        shadow.engine = engine
        shadow.encodings = LevelEncodings()
        shadow.seq = shadow.checkpointed_seq = seq
        shadow.since = 0
        shadow.caught_up = False
        shadow.history_pending = history.Pending(shadow.symbol)  # records of the book left behind

    # --- following the journals -----------------------------------------------------------

    def turn(self, pause: float = 0.0) -> bool:
        """Apply up to MAX_RECORDS_PER_TURN new records of each journal; True if some journal
        may hold more right now (so the caller should not sleep). `pause`: paced as a
        checkpoint is (`Pacer`), the order-history update included; 0 at stop and in tests."""
        more = False
        pacer = self._pacer(pause)
        for shadow in self.shadows:
            if shadow.broken is not None:
                continue
            if shadow.journal is None and not self._open(shadow):
                continue
            indexing = shadow.history_pending if self.history is not None else None
            applied = self._apply(shadow, MAX_RECORDS_PER_TURN, indexing, pacer)
            pending = len(shadow.history_pending)
            if pending >= MAX_RECORDS_PER_TURN or (pending and time.monotonic() >= shadow.history_due):
                self._update_history(shadow, pacer)
            if applied >= MAX_RECORDS_PER_TURN:
                more = True
            elif not shadow.caught_up and shadow.broken is None:
                shadow.caught_up = True
                log(self.logger, "caught_up", symbol=shadow.symbol, seq=shadow.seq)
        return more

    def _open(self, shadow: Shadow) -> bool:
        """Open the journal read-only once the matcher created it; False until then."""
        if not shadow.path.exists():
            return False
        try:
            # Segments too: a shadow (or the order-history index) rebuilt from scratch after
            # `clob journal archive` starts below LMDB's first record.
            journal = ArchivedJournal(shadow.path, readonly=True)
        except (OSError, JournalError, lmdb.Error):
            return False  # created but not initialised yet: next turn
        try:
            last, first = journal.last_seq(), journal.first_seq()
        except lmdb.Error:
            journal.close()
            return False
        if shadow.seq > last:
            # A checkpoint ahead of its journal: the journal was replaced. Use an older one.
            log(self.logger, "checkpoint_ahead_of_journal", logging.WARNING, symbol=shadow.symbol,
                checkpoint_seq=shadow.seq, journal_last_seq=last)  # fmt: skip
            self._from_checkpoint(shadow, last)
        if first > shadow.seq + 1:
            journal.close()
            self._break(shadow, f"journal starts at seq {first}, shadow at {shadow.seq}: needs a checkpoint")
            return False
        shadow.journal = journal
        log(self.logger, "following", symbol=shadow.symbol, from_seq=shadow.seq + 1, journal_last_seq=last)
        return True

    def _apply(self, shadow: Shadow, limit: int, pending: history.Pending | None, pacer: Pacer) -> int:
        journal = shadow.journal
        assert journal is not None
        applied = 0
        try:
            while applied < limit and shadow.broken is None:
                # READ_STEP records per read: `Journal.read` checks and decodes the range it
                # reads before its first yield, a burst the pacing could not split.
                last = shadow.seq + min(READ_STEP, limit - applied)
                applied += self._apply_range(shadow, journal.read(shadow.seq + 1, last), pending, pacer)
                if shadow.seq < last:
                    break  # the journal ends here (or the shadow broke)
        except CorruptRecord as exc:
            self._break(shadow, f"damaged journal record: {exc}")
        except (JournalError, lmdb.Error) as exc:
            # Transient (e.g. the map was resized under us): reopen on a later turn.
            log(self.logger, "journal_read_failed", logging.WARNING, symbol=shadow.symbol, error=str(exc))
            journal.close()
            shadow.journal = None
        shadow.since += applied
        self.records += applied
        return applied

    def _apply_range(
        self, shadow: Shadow, records: Iterable[Record], pending: history.Pending | None, pacer: Pacer
    ) -> int:
        process = shadow.engine.process
        applied = 0
        for record in records:
            if record.seq != shadow.seq + 1:
                self._break(shadow, f"gap in journal: expected seq {shadow.seq + 1}, found {record.seq}")
                break
            events = process(record.command)
            if events != record.events:
                self.alarms += 1
                log(self.logger, "determinism_alarm", logging.ERROR, symbol=shadow.symbol, seq=record.seq,
                    detail=f"replay gave {events!r}, journal holds {record.events!r}"[:2000])  # fmt: skip
                self._break(shadow, f"determinism alarm at seq {record.seq}")
                break
            shadow.seq = record.seq
            applied += 1
            if pending is not None:
                pending.add(record)
            pacer.step()  # between records only: `Journal.read` holds no txn across a yield
        return applied

    def _pacer(self, pause: float) -> Pacer:
        return Pacer(pause, self.stopping)

    def _update_history(self, shadow: Shadow, pacer: Pacer) -> None:
        """The order-history index (`journal.history`): the records applied since its last
        update, in one write txn. A failure is logged and never stops the shadows: the index
        is derived data, and the CLI catches it up from the journal on its own."""
        pending, shadow.history_pending = shadow.history_pending, history.Pending(shadow.symbol)
        shadow.history_due = time.monotonic() + HISTORY_EVERY_S
        if self.history is None or shadow.journal is None or not pending:
            return
        try:
            history.follow(self.history, shadow.journal, pending, MAX_RECORDS_PER_TURN, pacer.step)
        except (history.HistoryError, JournalError, lmdb.Error, OSError) as exc:
            log(self.logger, "history_index_failed", logging.WARNING, symbol=shadow.symbol,
                error=f"{type(exc).__name__}: {exc}")  # fmt: skip

    def _break(self, shadow: Shadow, reason: str) -> None:
        """Stop following and checkpointing `shadow`: it can no longer be trusted."""
        shadow.broken = reason
        shadow.history_pending = history.Pending(shadow.symbol)
        log(self.logger, "shadow_stopped", logging.ERROR, symbol=shadow.symbol, seq=shadow.seq, reason=reason)
        if shadow.journal is not None:
            shadow.journal.close()
            shadow.journal = None
        shadow.engine = Engine(shadow.spec)
        shadow.encodings = LevelEncodings()
        gc.unfreeze()  # the dropped book was frozen, and its linked lists are cycles
        gc.collect()
        gc.freeze()

    # --- checkpoints ----------------------------------------------------------------------

    def checkpoint_due(self) -> None:
        every = self.config.snapshotter.checkpoint_every_records
        if every > 0:
            for shadow in self.shadows:
                if shadow.since >= every:
                    self.checkpoint(shadow, "records")

    def checkpoint_all(self, reason: str) -> None:
        for shadow in self.shadows:
            self.checkpoint(shadow, reason)

    def checkpoint(self, shadow: Shadow, reason: str) -> None:
        """Write `shadow`'s state as a checkpoint if it moved since its last one."""
        if shadow.broken is not None or shadow.seq == shadow.checkpointed_seq:
            return
        if reason in ("records", "interval") and time.monotonic() < shadow.retry_at:
            return
        started, cpu = time.perf_counter(), time.thread_time()
        commits, commit_s = self.store.commits, self.store.commit_seconds
        pacer = self._pacer(0.0 if reason == "stop" else PAUSE_S)  # at stop the order path has stopped
        encoded = _paced(encode_steps(shadow.engine, reuse=shadow.encodings), pacer)
        if time.monotonic() - shadow.verified_at >= VERIFY_EVERY_S:
            encoded = self._verified(shadow, encoded, pacer)
        snap = new_snapshot(shadow.symbol, shadow.seq, time.time_ns(), STATE_IN_PIECES, encoded.state_hash)
        try:
            keep = self.config.snapshotter.keep_checkpoints or None  # 0: keep them all
            slack = 0 if keep is None else keep // PRUNE_SLACK_DIVISOR
            steps = self.store.put_steps(snap, encoded.pieces, encoded.digests, keep=keep, slack=slack)
            stored = _paced(steps, pacer)
        except lmdb.Error as exc:
            shadow.retry_at = time.monotonic() + CHECKPOINT_RETRY_S
            log(self.logger, "checkpoint_failed", logging.ERROR, symbol=shadow.symbol, seq=shadow.seq,
                reason=reason, error=f"{type(exc).__name__}: {exc}",
                retry_in_s=CHECKPOINT_RETRY_S)  # fmt: skip
            return
        self._log_repaired(shadow.symbol, stored)
        shadow.retry_at = 0.0
        shadow.checkpointed_seq = shadow.seq
        shadow.since = 0
        self.checkpoints += 1
        log(self.logger, "checkpoint_written", symbol=shadow.symbol, seq=shadow.seq, reason=reason,
            snapshot_id=snap.snapshot_id, resting_orders=encoded.resting_orders,
            bytes=stored.size, written=stored.written,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            cpu_ms=round((time.thread_time() - cpu) * 1000, 1), commits=self.store.commits - commits,
            commit_ms=round((self.store.commit_seconds - commit_s) * 1000, 1))  # fmt: skip
        if stored.pruned:
            log(self.logger, "checkpoints_pruned", symbol=shadow.symbol, deleted=stored.pruned, kept=keep)

    def _verified(self, shadow: Shadow, encoded: EncodedState, pacer: Pacer) -> EncodedState:
        """`encoded`, checked against the book encoded anew: what it took as it was from the
        last checkpoint rests on every change to a level being counted (`Level.version`,
        `Order.stamp`), and a change that is not would be written into every checkpoint
        after it, hash and all, unseen until a replay from one trades differently. On a
        mismatch the new encoding is the one stored, and reused from then on."""
        fresh_levels = LevelEncodings()
        fresh = _paced(encode_steps(shadow.engine, reuse=fresh_levels), pacer)
        shadow.verified_at = time.monotonic()
        if fresh.state_hash == encoded.state_hash:
            return encoded
        self.alarms += 1
        log(self.logger, "checkpoint_encoding_mismatch", logging.ERROR, symbol=shadow.symbol, seq=shadow.seq,
            reused_hash=encoded.state_hash, fresh_hash=fresh.state_hash)  # fmt: skip
        shadow.encodings = fresh_levels
        return fresh

    # --- the loop -------------------------------------------------------------------------

    def serve(self, signals: Signals) -> None:
        cfg = self.config.snapshotter
        next_interval = time.monotonic() + cfg.checkpoint_interval_s
        self.stopping = lambda: signals.stop is not None
        more = False
        while signals.stop is None:
            # Paced while the shadows keep up; after a turn that applied its limit of records
            # (a backlog), the next is not, so a load beyond what paced turns follow leaves
            # them at most about one turn's limit behind.
            more = self.turn(0.0 if more else PAUSE_S)
            self.checkpoint_due()
            if signals.take:
                signals.take = False
                self.checkpoint_all("requested")
            if time.monotonic() >= next_interval:
                self.checkpoint_all("interval")
                next_interval = time.monotonic() + cfg.checkpoint_interval_s
            gc.freeze()  # the shadow books only grow old: keep them out of every collection
            if not more and signals.stop is None:
                time.sleep(cfg.poll_interval_s)
        deadline = time.monotonic() + FINAL_CATCH_UP_S
        while self.turn() and time.monotonic() < deadline:
            pass
        self.checkpoint_all("stop")

    def close(self) -> None:
        for shadow in self.shadows:
            self._update_history(shadow, Pacer(0.0))  # the order path has stopped
            if shadow.journal is not None:
                shadow.journal.close()
                shadow.journal = None


def run(config: Config) -> int:
    """Start, follow and checkpoint until SIGTERM/SIGINT; the process exit code."""
    logger = logs.get("snapshotter")
    committing = scheduling.run_in_background(logger)
    signals = Signals()
    signals.install()
    pid_path = config.run_path / PID_FILE
    try:
        lock = _claim(pid_path)
    except CannotStart as exc:
        log(logger, "cannot_start", logging.ERROR, reason=str(exc))
        return EXIT_CANNOT_START
    try:
        try:
            store = _open_store(config, logger, committing)
        except (OSError, lmdb.Error) as exc:
            reason = f"checkpoint store: {type(exc).__name__}: {exc}"
            log(logger, "cannot_start", logging.ERROR, reason=reason)
            return EXIT_CANNOT_START
        history_index = _open_history(config, logger, committing)
        with store:
            snapshotter = Snapshotter(config, store, logger, history_index)
            try:
                snapshotter.initialise()
                gc.collect()
                gc.freeze()  # restored books and start-up objects: out of every later collection
                notify("READY=1\nCHILD=snapshotter")
                log(logger, "started", pid=os.getpid(), instruments=len(snapshotter.shadows),
                    store=str(store.path))  # fmt: skip
                snapshotter.serve(signals)
            finally:
                snapshotter.close()
                if history_index is not None:
                    history_index.close()
                log(logger, "stopped", signal=signals.stop or "-", records=snapshotter.records,
                    checkpoints=snapshotter.checkpoints, determinism_alarms=snapshotter.alarms)  # fmt: skip
        return EXIT_OK
    finally:
        pid_path.unlink(missing_ok=True)
        os.close(lock)


def _never() -> bool:
    return False


class Pacer:
    """Sleeps `pause` after every SLICE_S of work (never if 0, nor once `hurry()`): `step()`
    between units of it.

    A sleep, not a lower priority, is what keeps the snapshotter off the order path: while
    we sleep our CPU is idle, so a matcher or gateway thread that woke up runs at once instead
    of waiting for the scheduler to preempt us (see engine/stepwise_checkpoint.py); and
    between two synced transactions of the store write, the matchers' own fsyncs get the disk.
    """

    __slots__ = ("_ends", "_hurry", "_pause")

    def __init__(self, pause: float, hurry: Callable[[], bool] = _never) -> None:
        self._pause = pause
        self._hurry = hurry
        self._ends = time.perf_counter() + SLICE_S

    def step(self) -> None:
        if self._pause and time.perf_counter() >= self._ends and not self._hurry():
            time.sleep(self._pause)
            self._ends = time.perf_counter() + SLICE_S


def _paced(steps: Generator[None, None, T], pacer: Pacer) -> T:
    """Run `steps` to the end, paced by `pacer` between them."""
    step = pacer.step
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        step()


# A store LMDB cannot read at all (cut short, not an LMDB file any more, a broken tree);
# damaged checkpoint *values* are skipped one by one instead (CheckpointStore.newest).
_DAMAGED_STORE = (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError)


def _open_store(config: Config, logger: logging.Logger, committing: Committing) -> CheckpointStore:
    """The checkpoint store; a damaged one is moved aside (kept for inspection) for a new one.

    Checkpoints only save recovery time: refusing to start over one would stop the whole
    daemon for nothing. The shadows then start empty and replay the journals from seq 1.
    """
    path = checkpoints_path(config.data_path)
    try:
        return CheckpointStore(path, committing=committing)
    except _DAMAGED_STORE as exc:
        aside = path.with_name(f"{path.name}.damaged-{time.time_ns()}")
        os.replace(path, aside)
        log(logger, "checkpoint_store_damaged", logging.ERROR, path=str(path), moved_to=str(aside),
            error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        return CheckpointStore(path, committing=committing)


def _open_history(
    config: Config, logger: logging.Logger, committing: Committing
) -> history.HistoryIndex | None:
    """The order-history index in the data dir; None (logged) if it cannot be opened."""
    try:
        return history.HistoryIndex.in_data_dir(config.data_path, committing=committing)
    except (OSError, lmdb.Error) as exc:
        log(logger, "history_index_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
        return None


def _claim(path: Path) -> int:
    """One snapshotter per daemon: an exclusive flock on the pid file (released by the kernel
    however the process dies), which also tells `clob snapshot take` whom to signal."""
    try:
        fd = exclusive_lock(path)
    except LockHeld as exc:
        raise CannotStart(f"another snapshotter holds {exc}") from exc
    except OSError as exc:
        raise CannotStart(f"pid file {path}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
