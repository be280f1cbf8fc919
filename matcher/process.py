"""The matcher process: one instrument's book, its journal, and the group-commit loop.

    recover (newest usable checkpoint + the journal after it, checking every record)
      -> MatcherReady -> loop:
      block in poll; drain every waiting frame (up to matcher.max_batch commands);
      run the commands through the engine; ONE synced journal commit for all of them;
      only then: one OutcomeBatch to the gateway, then market data, then queries.

Nothing is acknowledged or published before the commit that makes it durable returns. If
the commit fails, nothing of the batch is on disk but the engine has applied it, so every
command is refused and the engine is rebuilt from the journal: the book in memory never
differs from the book on disk for longer than one batch, and never in anything observable.

A resent ``NewOrder`` (same account and client order id as any journaled one, in this run
or an earlier one) is answered with the original outcome instead of being placed again;
the journal's ``client_ids`` index, committed with the records, makes that survive restarts.

Plain blocking ``zmq.Poller``, no asyncio: on this path asyncio costs several times the
throughput (docs/architecture.md). One line of log per significant event, never per order.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import zmq

from daemon import child, logs
from daemon.child import LockHeld, end_context, exclusive_lock
from daemon.config import Config
from daemon.logs import log
from daemon.notify import notify
from engine.engine import Engine
from engine.instrument import Instrument
from engine.messages import Checkpoint, Event, MassCancel, NewOrder, Rejected, RejectReason, Trade
from gateway.protocol import MarketData, orders_topic, trades_topic
from journal import Journal, JournalError, Record, encode, journal_path
from journal.archive import archived_record
from journal.checkpoints import checkpoints_path
from journal.store import client_id_key
from matcher import link
from matcher.link import (
    AdminAnswer,
    AdminQuery,
    BookAnswer,
    BookQuery,
    CommandBatch,
    Envelope,
    MatcherReady,
    Outcome,
    OutcomeBatch,
    Refusal,
    StatusAnswer,
    StatusQuery,
)
from matcher.recovery import DeterminismAlarm, open_checkpoints, rebuild

MAX_BOOK_DEPTH = 1000  # levels per side in one BookAnswer: bounds the reply, not the book
# Replies queue here while the gateway is slow or restarting; past this they are dropped
# (and counted) rather than block the loop: every dropped answer is durable in the journal,
# so a client that resends its order gets it back as a duplicate.
REPLY_HWM = 200_000
MARKET_DATA_HWM = 200_000
# How long closing waits for queued replies / market data to leave (shutdown bound).
REPLY_LINGER_MS = 2000
MARKET_DATA_LINGER_MS = 500
_CONTEXT_END_S = REPLY_LINGER_MS / 1000 + 1.0  # the longest linger, and a margin
WARN_INTERVAL_S = 5.0
# MatcherReady is repeated this often while idle, so a gateway that restarts (and so lost
# track of which matchers serve) learns it again within a second.
HEARTBEAT_S = 1.0

_encode_link = link.encoder.encode
_decode_link = link.to_matcher.decode
_encode_md = msgspec.msgpack.Encoder().encode
_STORAGE_FAILURE = int(RejectReason.STORAGE_FAILURE)

COMMIT_WINDOW = 1024  # commit durations kept for the admin endpoint's p50/p99

Query = StatusQuery | BookQuery | AdminQuery


class StopSignal:
    """SIGTERM/SIGINT set ``requested`` and wake the poll at once (through the wakeup fd).

    Installed before recovery, so a stop during start-up is a clean exit too.
    """

    def __init__(self) -> None:
        self.requested = ""
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.requested = signal.Signals(signum).name

    def fileno(self) -> int:
        return self._reader.fileno()

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass


class _Throttled:
    """A warning that may repeat at high rate: one line per interval, with the count."""

    def __init__(self, logger: logging.Logger, event: str) -> None:
        self._logger = logger
        self._event = event
        self._count = 0
        self._last = 0.0

    def note(self, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= WARN_INTERVAL_S:
            log(self._logger, self._event, logging.WARNING, count=self._count, **fields)
            self._count, self._last = 0, now


class _Batch:
    """One group commit in the making: what to write, and what to say once it is written."""

    __slots__ = ("first_seq", "ids", "outcomes", "payloads", "records")

    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self.payloads: list[bytes] = []
        self.ids: list[tuple[bytes, int]] = []  # client_ids index entries, same txn
        self.records: list[Record] = []  # journaled, for market data
        self.outcomes: list[Outcome] = []  # one per command, in arrival order

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.payloads) - 1


class Matcher:
    """Serves one instrument: ``open()`` the sockets, ``announce()``, ``serve()``, ``close()``."""

    def __init__(
        self, config: Config, spec: Instrument, journal: Journal, engine: Engine, stop: StopSignal
    ) -> None:
        self.config = config
        self.symbol = spec.symbol
        self.spec = spec
        self.journal = journal
        self.engine = engine
        self.stop = stop
        self.log = logs.get(f"matcher.{spec.symbol}")
        self.max_batch = config.matcher.max_batch
        self._orders_topic = orders_topic(config.env, spec.symbol)
        self._trades_topic = trades_topic(config.env, spec.symbol)
        self._dropped_replies = _Throttled(self.log, "replies_dropped")
        self._bad_frames = _Throttled(self.log, "bad_frame_dropped")
        # (journal seq, engine state equal to the journal at that seq), kept while commits fail.
        self._clean: tuple[int, Checkpoint] | None = None
        # (monotonic time of the first failed commit, commands refused) while commits fail.
        self._outage: tuple[float, int] | None = None
        self.stats = {"batches": 0, "commands": 0, "duplicates": 0, "refused": 0, "queries": 0}
        self.last_batch = 0  # commands in the latest group commit
        # Durations (ns) of the latest journal commits: a ring buffer, read only by `clob status`.
        self.commit_ns: deque[int] = deque(maxlen=COMMIT_WINDOW)
        self.ctx = zmq.Context(io_threads=1)
        self.pull = self.ctx.socket(zmq.PULL)
        self.push = self.ctx.socket(zmq.PUSH)
        self.pub = self.ctx.socket(zmq.PUB)

    def open(self) -> None:
        self.pull.linger = 0  # unread commands were never journaled: nothing to keep
        self.push.linger = REPLY_LINGER_MS
        self.push.sndhwm = REPLY_HWM
        self.pub.linger = MARKET_DATA_LINGER_MS
        self.pub.sndhwm = MARKET_DATA_HWM
        endpoint = self.config.matcher_endpoint(self.symbol)
        _prepare_ipc(endpoint)
        self.pull.bind(endpoint)
        self.push.connect(self.config.replies_endpoint())
        self.pub.connect(self.config.market_data_endpoint())

    def close(self) -> None:
        # Each socket keeps its own linger: queued replies get up to REPLY_LINGER_MS to leave.
        if not end_context(self.ctx, None, _CONTEXT_END_S):
            log(self.log, "context_end_timeout", logging.WARNING, waited_s=_CONTEXT_END_S)

    def announce(self) -> None:
        seq = self.journal.last_seq()
        self._send(MatcherReady(self.symbol, seq, os.getpid()))
        notify(f"READY=1\nCHILD=matcher-{self.symbol}\nSEQ={seq}")

    # --- the loop -----------------------------------------------------------------------

    def serve(self) -> None:
        """Until SIGTERM/SIGINT. A batch in progress always completes (commit + replies)."""
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.stop, zmq.POLLIN)
        last_beat = time.monotonic()
        while not self.stop.requested:
            if poller.poll(int(HEARTBEAT_S * 1000)):
                self.serve_once()
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                self._send(MatcherReady(self.symbol, self.journal.last_seq(), os.getpid()))
                last_beat = now
        self.stop.drain()

    def serve_once(self) -> None:
        envelopes, queries = self._drain()
        if envelopes:
            self._run_batch(envelopes)
        for query in queries:
            self._answer(query)

    def _drain(self) -> tuple[list[Envelope], list[Query]]:
        envelopes: list[Envelope] = []
        queries: list[Query] = []
        recv = self.pull.recv
        while len(envelopes) + len(queries) < self.max_batch:
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = _decode_link(frame)
            except msgspec.DecodeError as exc:  # the gateway is trusted, but never crash
                self._bad_frames.note(error=str(exc)[:200], size=len(frame))
                continue
            if isinstance(message, CommandBatch):
                envelopes += message.items
            else:
                queries.append(message)
        return envelopes, queries

    # --- commands -----------------------------------------------------------------------

    def _run_batch(self, envelopes: list[Envelope]) -> None:
        batch = self._apply(envelopes)
        if batch.payloads:
            if not self._commit(batch):
                return
            self._clean = None  # the journal moved on: that state is no longer the journal's
            if self._outage is not None:
                self._resumed(self._outage)
        self._send(OutcomeBatch(self.symbol, batch.outcomes, []))
        self._publish(batch.records)
        stats = self.stats
        stats["batches"] += 1
        stats["commands"] += len(batch.payloads)
        if batch.payloads:
            self.last_batch = len(batch.payloads)
        stats["duplicates"] += len(envelopes) - len(batch.payloads)
        # Resting orders live long, and a full collection walks every tracked object: 17 ms
        # at 100k orders, 190 ms at 800k, a stall of the whole order path. Freezing after
        # each batch (O(1)) moves the batch's survivors where no collection looks; they are
        # still freed by reference counting, and the book breaks its own cycles (an order's
        # links are cleared when it leaves its level), so nothing that matters is left to
        # the collector. Young garbage is still collected by the cheap gen-0 passes.
        gc.freeze()

    def _apply(self, envelopes: list[Envelope]) -> _Batch:
        """Run the batch through the engine, encode each record once; nothing written yet."""
        batch = _Batch(self.journal.last_seq() + 1)
        keys = [_client_key(envelope.command) for envelope in envelopes]
        # One read txn for the batch; the common case (a fresh id) is one LMDB miss, ~0.3 µs.
        known = self.journal.client_id_seqs([k for k in keys if k is not None])
        seen: dict[bytes, Outcome] = {}  # this batch's, and journal originals already read
        process = self.engine.process
        seq = batch.first_seq
        for envelope, k in zip(envelopes, keys, strict=True):
            if k is not None and (k in seen or k in known):
                original = seen.get(k) or self._journaled_outcome(known[k])
                seen[k] = original
                batch.outcomes.append(_again(envelope, original))
                continue
            command = envelope.command
            events = process(command)
            record = Record(seq, command.ts, command, events)
            batch.payloads.append(encode(record))
            batch.records.append(record)
            outcome = Outcome(envelope.conn, envelope.req_id, command.account, _coid(command), seq, events)
            batch.outcomes.append(outcome)
            if k is not None:
                seen[k] = outcome
                batch.ids.append((k, seq))
            seq += 1
        return batch

    def _journaled_outcome(self, seq: int) -> Outcome:
        record = self.journal.get(seq)  # rare: a resend; read the original's events back
        if record is None:
            try:  # archived (`clob journal archive`): the segment still holds it
                record = archived_record(self.journal.path, seq)
            except (JournalError, OSError) as exc:
                log(self.log, "archived_record_unreadable", logging.WARNING, seq=seq, error=str(exc))
        if record is None or type(record.command) is not NewOrder:
            return Outcome(b"", 0, "", "", seq, [])  # gone or unreadable: known, but not its events
        command = record.command
        return Outcome(b"", 0, command.account, command.client_order_id, seq, record.events)

    def _commit(self, batch: _Batch) -> bool:
        """One synced commit for the whole batch; on failure refuse it and roll the engine back."""
        started = time.perf_counter_ns()
        try:
            self.journal.append_encoded(batch.first_seq, batch.payloads, batch.ids)
            self.commit_ns.append(time.perf_counter_ns() - started)
        except JournalError as exc:
            if self.journal.last_seq() >= batch.last_seq:
                # LMDB reported a failure after the commit reached the file: it is durable.
                log(self.log, "commit_error_after_commit", logging.WARNING, error=str(exc))
                return True
            self._refuse(batch, exc)
            return False
        return True

    def _refuse(self, batch: _Batch, exc: JournalError) -> None:
        text = f"journal commit failed, nothing happened: {exc}"
        # Answers from records committed earlier (resends) are still true; the rest is refused.
        kept = [o for o in batch.outcomes if o.seq < batch.first_seq]
        refusals = [
            Refusal(o.conn, o.req_id, o.client_order_id, _STORAGE_FAILURE, text)
            for o in batch.outcomes
            if o.seq >= batch.first_seq
        ]
        self._send(OutcomeBatch(self.symbol, kept, refusals))
        self.stats["refused"] += len(refusals)
        since, refused = self._outage or (time.monotonic(), 0)
        self._outage = (since, refused + len(refusals))
        started = time.perf_counter()
        how = self._roll_back()
        log(
            self.log,
            "commit_failed",
            logging.ERROR,
            error=str(exc),
            error_type=type(exc).__name__,
            refused=len(refusals),
            seq=self.journal.last_seq(),
            rollback=how,
            rollback_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _resumed(self, outage: tuple[float, int]) -> None:
        """The first commit after failed ones: say so, so the operator knows it is over."""
        self._outage = None
        since, refused = outage
        log(self.log, "commit_resumed", logging.WARNING, seq=self.journal.last_seq(), refused=refused,
            outage_s=round(time.monotonic() - since, 1))  # fmt: skip

    def _roll_back(self) -> str:
        """Make the engine equal the journal again, after it applied a batch the journal lacks.

        The first failure replays the journal (O(records)) and keeps a checkpoint of the result;
        while commits keep failing, later ones restore that checkpoint (O(resting orders)), so a
        full disk does not cost a full replay per batch. A successful commit drops it.
        DeterminismAlarm propagates: the process must stop rather than serve this book.
        """
        seq = self.journal.last_seq()
        if self._clean is not None and self._clean[0] == seq:
            self.engine.restore(self._clean[1])
            how = "checkpoint"
        else:
            # The newest checkpoint (if the snapshotter has written any) and the journal after it.
            checkpoints = open_checkpoints(checkpoints_path(self.config.data_path), self.log)
            try:
                recovered = rebuild(self.journal, self.spec, checkpoints, self.log)
            finally:
                if checkpoints is not None:
                    checkpoints.close()
            self.engine = recovered.engine
            self._clean = (seq, self.engine.checkpoint())
            how = "replay" if recovered.checkpoint_id is None else "stored_checkpoint+replay"
        gc.unfreeze()  # the old book was frozen, and its linked lists are cycles: collect it
        gc.collect()
        gc.freeze()
        return how

    # --- output -------------------------------------------------------------------------

    def _send(self, message: link.ToGateway) -> None:
        try:
            self.push.send(_encode_link(message), zmq.NOBLOCK)
        except zmq.Again:
            self._dropped_replies.note(kind=type(message).__name__)

    def _publish(self, records: list[Record]) -> None:
        # Two frames (topic, payload) per message; PUB drops rather than blocks when full.
        send = self.pub.send
        more = zmq.SNDMORE
        symbol = self.symbol
        orders, trades_topic = self._orders_topic, self._trades_topic
        for record in records:
            events = _public(record.events)
            send(orders, more)
            send(_encode_md(MarketData(symbol, record.seq, record.ts, events)))
            if len(events) > 1:  # a trade comes with at least the taker's Accepted
                trades: list[Event] = [event for event in events if type(event) is Trade]
                if trades:
                    send(trades_topic, more)
                    send(_encode_md(MarketData(symbol, record.seq, record.ts, trades)))

    # --- queries ------------------------------------------------------------------------

    def _answer(self, query: Query) -> None:
        self.stats["queries"] += 1
        if isinstance(query, BookQuery):
            bids, asks = self.engine.depth(max(0, min(query.depth, MAX_BOOK_DEPTH)))
            seq = self.journal.last_seq()
            self._send(BookAnswer(self.symbol, query.conn, query.req_id, seq, bids, asks))
        elif isinstance(query, AdminQuery):
            self._send(self._admin(query))
        else:
            self._send(self._status(query))

    def _admin(self, query: AdminQuery) -> AdminAnswer:
        durations = sorted(self.commit_ns)
        engine = self.engine
        bids, asks = engine.depth(max(0, min(query.depth, MAX_BOOK_DEPTH)))
        return AdminAnswer(
            self.symbol,
            query.conn,
            query.req_id,
            self.journal.last_seq(),
            os.getpid(),
            engine.order_count(),
            engine.best_bid(),
            engine.best_ask(),
            self.stats["batches"],
            self.stats["commands"],
            self.last_batch,
            _percentile_us(durations, 0.50),
            _percentile_us(durations, 0.99),
            engine.state_hash() if query.state_hash else "",
            bids,
            asks,
        )

    def _status(self, query: StatusQuery) -> StatusAnswer:
        """Only the asking account's own resting order is ever described."""
        order_id = query.order_id
        if not order_id and query.orig_client_order_id:
            resting = self.engine.accounts.get(query.account, {}).get(query.orig_client_order_id)
            order_id = 0 if resting is None else resting.order_id
        order = self.engine.order(order_id) if order_id else None
        if order is None or order.account != query.account:
            return StatusAnswer(self.symbol, query.conn, query.req_id, False)
        return StatusAnswer(
            self.symbol,
            query.conn,
            query.req_id,
            True,
            order.order_id,
            order.client_order_id,
            int(order.side),
            order.price,
            order.qty,
            order.remaining,
        )


def _percentile_us(ordered_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond durations, in microseconds (0 if none)."""
    if not ordered_ns:
        return 0.0
    rank = max(0, math.ceil(q * len(ordered_ns)) - 1)
    return round(ordered_ns[rank] / 1000, 1)


def _public(events: list[Event]) -> list[Event]:
    """The events as anyone may see them: no account names, no client order ids.

    Market data is public; who traded is not. Rejections change nothing and stay private.
    """
    out: list[Event] = []
    for event in events:
        kind = type(event)
        if kind is Trade:
            out.append(msgspec.structs.replace(event, maker_account="", taker_account=""))
        elif kind is not Rejected:
            out.append(msgspec.structs.replace(event, account="", client_order_id=""))
    return out


def _client_key(command: Any) -> bytes | None:
    """The idempotency key of a NewOrder; None for other commands and for an empty id.

    An empty id is not indexed: the engine rejects it, and every such order would otherwise
    become a "duplicate" of the first one.
    """
    if type(command) is NewOrder and command.client_order_id:
        return client_id_key(command.account, command.client_order_id)
    return None


def _coid(command: Any) -> str:
    kind = type(command)
    if kind is NewOrder:
        return str(command.client_order_id)
    if kind is MassCancel:
        return ""
    return str(command.orig_client_order_id)  # Cancel, Amend


def _again(envelope: Envelope, original: Outcome) -> Outcome:
    """A resend, answered with what the original caused (its seq and events)."""
    return Outcome(
        envelope.conn,
        envelope.req_id,
        original.account,
        original.client_order_id,
        original.seq,
        original.events,
        duplicate=True,
    )


def _prepare_ipc(endpoint: str) -> None:
    if not endpoint.startswith("ipc://"):
        return
    path = Path(endpoint.removeprefix("ipc://"))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    # Left behind by a matcher that was killed. The caller holds the instrument's lock, so
    # no live matcher owns it; a stale file would make bind() fail or shadow ours.
    path.unlink(missing_ok=True)


# --- the process ----------------------------------------------------------------------------

EXIT_OK = 0
EXIT_CANNOT_START = child.EXIT_CANNOT_START
EXIT_DETERMINISM_ALARM = 3


class CannotStart(Exception):
    """The matcher cannot serve (unknown symbol, journal locked or unreadable, socket ...)."""


def run(config: Config, symbol: str) -> int:
    """Recover, serve until SIGTERM/SIGINT, close; the process exit code."""
    logger = logs.get(f"matcher.{symbol}")
    stop = StopSignal()
    lock = -1
    try:
        spec = _spec(config, symbol)
        lock = _claim(config, symbol)
        with _open_journal(config, symbol) as journal:
            return _recover_and_serve(config, spec, journal, stop, logger)
    except CannotStart as exc:
        log(logger, "cannot_start", logging.ERROR, reason=str(exc))
        return EXIT_CANNOT_START
    except DeterminismAlarm as exc:
        log(logger, "determinism_alarm", logging.ERROR, seq=exc.seq, detail=str(exc)[:2000])
        return EXIT_DETERMINISM_ALARM
    finally:
        if lock >= 0:
            os.close(lock)


def _recover_and_serve(
    config: Config, spec: Instrument, journal: Journal, stop: StopSignal, logger: logging.Logger
) -> int:
    # Read-only, and only for recovery: the snapshotter is the store's one writer.
    checkpoints = open_checkpoints(checkpoints_path(config.data_path), logger)
    try:
        recovered = rebuild(journal, spec, checkpoints, logger)
    except JournalError as exc:  # a damaged record: never guess past it
        raise CannotStart(f"journal {journal.path}: {exc}") from exc
    finally:
        if checkpoints is not None:
            checkpoints.close()
    log(
        logger,
        "recovered",
        seq=recovered.seq,
        records=recovered.records,
        from_checkpoint=recovered.checkpoint_id or "none",
        checkpoint_seq=recovered.checkpoint_seq,
        duration_ms=round(recovered.duration_ms, 1),
        resting_orders=recovered.engine.order_count(),
    )
    if stop.requested:
        return EXIT_OK
    gc.collect()
    gc.freeze()  # the rebuilt book and start-up objects: out of every later collection's way
    matcher = Matcher(config, spec, journal, recovered.engine, stop)
    try:
        matcher.open()  # after recovery: nothing can reach a book that is not rebuilt yet
    except (zmq.ZMQError, OSError) as exc:
        matcher.close()
        raise CannotStart(f"sockets: {exc}") from exc
    try:
        matcher.announce()
        log(logger, "serving", seq=journal.last_seq(), endpoint=config.matcher_endpoint(spec.symbol))
        matcher.serve()
    finally:
        matcher.close()
        log(logger, "stopped", signal=stop.requested or "-", seq=journal.last_seq(), **matcher.stats)
    return EXIT_OK


def _spec(config: Config, symbol: str) -> Instrument:
    try:
        return config.instrument(symbol).spec()
    except KeyError:
        raise CannotStart(f"symbol {symbol!r} is not among the configured instruments") from None


def _claim(config: Config, symbol: str) -> int:
    """One matcher per journal: an exclusive flock beside it, which the kernel releases
    when the process dies, however it dies (so a SIGKILLed matcher never blocks its restart)."""
    try:
        return exclusive_lock(journal_path(config.journal_dir(), symbol).with_name(f"{symbol}.matcher-lock"))
    except LockHeld as exc:
        raise CannotStart(f"another matcher holds {exc}") from exc
    except (OSError, ValueError) as exc:
        raise CannotStart(f"lock file: {exc}") from exc


def _open_journal(config: Config, symbol: str) -> Journal:
    mib = 1 << 20
    try:
        return Journal(
            journal_path(config.journal_dir(), symbol),
            map_size=config.matcher.map_size_mb * mib,
            max_map_size=config.matcher.max_map_size_mb * mib,
        )
    except (OSError, ValueError, lmdb.Error, JournalError) as exc:
        raise CannotStart(f"journal: {type(exc).__name__}: {exc}") from exc
