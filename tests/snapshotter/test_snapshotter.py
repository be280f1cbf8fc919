"""The snapshotter as a real process over real LMDB files: under the daemon, and on its own."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import msgspec
import pytest

from daemon.config import Config, InstrumentConfig
from engine.engine import Engine, checkpoint_hash_v1
from engine.instrument import Instrument
from engine.messages import NewOrder, Side, Trade
from gateway import protocol as p
from gateway.client import Client
from journal import Journal, Record, journal_path, key
from journal import encode as encode_record
from journal.checkpoints import CheckpointStore, Snapshot, new_snapshot
from tests.e2e.conftest import ROOT, Daemon

if TYPE_CHECKING:
    from journal.history import HistoryIndex
    from snapshotter import process

BTC = InstrumentConfig(symbol="BTCUSDT", price_decimals=2, qty_decimals=4, lot_size=1).spec()
ETH = InstrumentConfig(symbol="ETHUSDT", price_decimals=2, qty_decimals=4).spec()


def wait_until(what: str, check: Callable[[], object], timeout: float, log: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s\n{log()}")


def snapshots(data_dir: Path, symbol: str) -> list[Snapshot]:
    path = data_dir / "checkpoints.lmdb"
    if not path.exists():
        return []
    try:
        store = CheckpointStore(path, readonly=True)
    except FileNotFoundError:
        return []
    with store:
        out = [store.newest(symbol, info.seq) for info in store.infos(symbol)]
    return [s for s in out if s is not None]


def replayed_hash(journal_file: Path, spec: Instrument, to_seq: int) -> str:
    engine = Engine(spec)
    with Journal(journal_file, readonly=True) as journal:
        for record in journal.read(1, to_seq):
            engine.process(record.command)
    return engine.state_hash()


def restored_hash(snap: Snapshot, spec: Instrument) -> str:
    engine = Engine(spec)
    engine.restore(snap.state)
    return engine.state_hash()


def last_seq(journal_file: Path) -> int:
    with Journal(journal_file, readonly=True) as journal:
        return journal.last_seq()


# --- under the daemon -------------------------------------------------------------------------


def test_checkpoints_follow_the_journal_on_request_and_at_stop(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, extra_toml="[snapshotter]\ncheckpoint_every_records = 50\n")
    daemon.start()
    journal_file = journal_path(daemon.data_dir / "journal", "BTCUSDT")
    try:
        rng = random.Random(7)
        with Client(daemon.endpoint, timeout=10) as alice, Client(daemon.endpoint, timeout=10) as bob:
            alice.logon("alice")
            bob.logon("bob")

            def place(n: int, tag: str) -> None:
                for i in range(n):
                    who, side = (alice, "sell") if i % 2 else (bob, "buy")
                    price = f"{100 + rng.randint(-3, 3)}.00"
                    reply = who.new_order("BTCUSDT", side, f"{rng.randint(1, 5)}", price,
                                          client_order_id=f"{tag}{i}")  # fmt: skip
                    assert isinstance(reply, p.Ack)

            # A checkpoint after every 50 or more records. A turn applies all that is new, so
            # how many records one checkpoint covers depends on timing: wait for each round's.
            for round_ in range(1, 4):
                place(60, f"a{round_}-")

                def checkpointed(n: int = round_) -> bool:
                    return len(snapshots(daemon.data_dir, "BTCUSDT")) >= n

                wait_until(f"checkpoint {round_} after {60 * round_} records", checkpointed, 10, daemon.log)
            taken = snapshots(daemon.data_dir, "BTCUSDT")
            assert len(taken) == 3 and taken[0].seq >= 50
            assert all(b.seq - a.seq >= 50 for a, b in itertools.pairwise(taken))
            assert not snapshots(daemon.data_dir, "ETHUSDT")  # nothing moved there
            for snap in taken:
                assert restored_hash(snap, BTC) == snap.state_hash
                assert replayed_hash(journal_file, BTC, snap.seq) == snap.state_hash

            # SIGUSR1 (`clob snapshot take`): a checkpoint of what moved, promptly.
            place(30, "b")
            assert last_seq(journal_file) == 210
            pid = int((daemon.workdir / "run" / "snapshotter.pid").read_text())
            os.kill(pid, signal.SIGUSR1)
            # A liveness bound, not a speed test: the snapshotter runs under SCHED_IDLE, and CI is busy.
            wait_until("a checkpoint at 210 after SIGUSR1",
                       lambda: any(s.seq == 210 for s in snapshots(daemon.data_dir, "BTCUSDT")), 10,
                       daemon.log)  # fmt: skip

            place(5, "c")  # fewer than 50: only the stop writes these
        assert daemon.stop() == 0
        final = max(snapshots(daemon.data_dir, "BTCUSDT"), key=lambda s: s.seq)
        assert final.seq == last_seq(journal_file) == 215
        assert replayed_hash(journal_file, BTC, 215) == final.state_hash == restored_hash(final, BTC)
        log = daemon.log()
        assert "reason=stop" in log and "event=determinism_alarm" not in log
        assert "child=snapshotter" in log and "event=child_exited" not in log
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()


def test_a_killed_snapshotter_is_restarted_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, extra_toml="[snapshotter]\ncheckpoint_every_records = 20\n")
    daemon.start()
    journal_file = journal_path(daemon.data_dir / "journal", "ETHUSDT")
    pid_file = daemon.workdir / "run" / "snapshotter.pid"
    try:
        with Client(daemon.endpoint, timeout=10) as client:
            client.logon("carol")
            for i in range(30):
                assert isinstance(client.new_order("ETHUSDT", "buy", "1", f"{50 + i}.00"), p.Ack)
            wait_until("a checkpoint", lambda: snapshots(daemon.data_dir, "ETHUSDT"), 5, daemon.log)
            first_pid = int(pid_file.read_text())
            os.kill(first_pid, signal.SIGKILL)
            wait_until(
                "restarted", lambda: "child_restarting child=snapshotter" in daemon.log(), 5, daemon.log
            )
            for i in range(30):
                assert isinstance(client.new_order("ETHUSDT", "sell", "1", f"{200 + i}.00"), p.Ack)
            wait_until("a checkpoint past 50",
                       lambda: any(s.seq >= 50 for s in snapshots(daemon.data_dir, "ETHUSDT")), 5,
                       daemon.log)  # fmt: skip
        assert int(pid_file.read_text()) != first_pid
        assert "proc=snapshotter event=shadow_restored symbol=ETHUSDT" in daemon.log()
        assert daemon.stop() == 0
        final = max(snapshots(daemon.data_dir, "ETHUSDT"), key=lambda s: s.seq)
        assert final.seq == last_seq(journal_file) == 60
        assert final.state_hash == replayed_hash(journal_file, ETH, 60)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()


# --- on its own ---------------------------------------------------------------------------------


def write_journal(path: Path, spec: Instrument, n: int, seed: int) -> None:
    rng = random.Random(seed)
    engine = Engine(spec)
    records = []
    for seq in range(1, n + 1):
        ts = 1_700_000_000_000_000_000 + seq
        side = Side.BUY if seq % 2 else Side.SELL
        account = "bob" if side == Side.BUY else "alice"
        command = NewOrder(seq, ts, account, f"c{seq}", side, rng.randint(1, 5), 10_000 + rng.randint(-3, 3))
        records.append(Record(seq, ts, command, engine.process(command)))
    with Journal(path) as journal:
        journal.append(records)


def alter_events(path: Path, from_seq: int) -> int:
    """Change a trade price in the first record at or after `from_seq` that traded, keeping a
    valid checksum: only a re-execution can tell. Returns that record's seq."""
    with Journal(path, readonly=True) as journal:
        record = next(r for r in journal.read(from_seq) if any(isinstance(e, Trade) for e in r.events))
    i = next(i for i, e in enumerate(record.events) if isinstance(e, Trade))
    trade = record.events[i]
    assert isinstance(trade, Trade)
    events = [*record.events]
    events[i] = msgspec.structs.replace(trade, price=trade.price + 1)
    altered = msgspec.structs.replace(record, events=events)
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    try:
        with env.begin(db=env.open_db(b"records"), write=True) as txn:
            txn.put(key(record.seq), encode_record(altered))
    finally:
        env.close()
    return record.seq


class Standalone:
    """`python -m snapshotter --config FILE` without a supervisor (no NOTIFY_SOCKET)."""

    def __init__(self, workdir: Path, snapshotter_toml: str = "") -> None:
        self.data_dir = workdir / "data"
        self.config = workdir / "clobd.toml"
        self.config.write_text(f"""
env = "test"
data_dir = "{self.data_dir}"
run_dir = "{workdir / "run"}"

[snapshotter]
checkpoint_every_records = 50
{snapshotter_toml}

[[instruments]]
symbol = "BTCUSDT"
price_decimals = 2
qty_decimals = 4
lot_size = 1

[[instruments]]
symbol = "ETHUSDT"
price_decimals = 2
qty_decimals = 4
""")
        self.log_path = workdir / "snapshotter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "snapshotter", "--config", str(self.config)],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def standalone(tmp_path: Path) -> Standalone:
    return Standalone(tmp_path)


def test_a_determinism_alarm_stops_checkpointing_that_instrument_only(
    tmp_path: Path, standalone: Standalone
) -> None:
    original = tmp_path / "original"
    write_journal(journal_path(original, "BTCUSDT"), BTC, 300, seed=1)
    write_journal(journal_path(original, "ETHUSDT"), ETH, 120, seed=2)
    shutil.copytree(original, standalone.data_dir / "journal")  # the copy gets the damage
    bad_seq = alter_events(journal_path(standalone.data_dir / "journal", "BTCUSDT"), 120)

    standalone.start()
    try:
        wait_until("the alarm", lambda: "event=determinism_alarm" in standalone.log(), 10, standalone.log)
        wait_until("ETH checkpoint", lambda: snapshots(standalone.data_dir, "ETHUSDT"), 5, standalone.log)
        time.sleep(0.3)  # a few more turns
        assert standalone.proc is not None and standalone.proc.poll() is None  # alive
        alarm = next(line for line in standalone.log().splitlines() if "event=determinism_alarm" in line)
        assert "level=error" in alarm and "symbol=BTCUSDT" in alarm and f"seq={bad_seq} " in alarm
        assert all(s.seq < bad_seq for s in snapshots(standalone.data_dir, "BTCUSDT"))
        assert standalone.stop() == 0
    finally:
        if standalone.proc is not None and standalone.proc.poll() is None:
            standalone.proc.kill()
    assert all(s.seq < bad_seq for s in snapshots(standalone.data_dir, "BTCUSDT"))
    eth = max(snapshots(standalone.data_dir, "ETHUSDT"), key=lambda s: s.seq)
    assert eth.seq == 120  # the intact instrument: up to its end, final checkpoint at stop
    assert eth.state_hash == replayed_hash(journal_path(original, "ETHUSDT"), ETH, 120)
    assert "determinism_alarms=1" in standalone.log()


def test_restarts_from_its_checkpoint_and_follows_a_growing_journal(standalone: Standalone) -> None:
    path = journal_path(standalone.data_dir / "journal", "ETHUSDT")
    standalone.start()  # before any journal exists: it waits for them
    try:
        time.sleep(0.5)
        assert standalone.proc is not None and standalone.proc.poll() is None
        write_journal(path, ETH, 80, seed=3)
        wait_until("checkpoint at 50", lambda: snapshots(standalone.data_dir, "ETHUSDT"), 5, standalone.log)
        assert standalone.stop() == 0
        assert max(s.seq for s in snapshots(standalone.data_dir, "ETHUSDT")) == 80

        # Grow the journal while it is down, restart: it restores at 80 and replays only the tail.
        full = path.with_name("full.lmdb")
        write_journal(full, ETH, 200, seed=3)  # the same commands: the first 80 are identical
        with Journal(full, readonly=True) as src, Journal(path) as dst:
            dst.append(list(src.read(81)))
        standalone.start()
        caught_up = "event=caught_up symbol=ETHUSDT seq=200"
        wait_until("caught up at 200", lambda: caught_up in standalone.log(), 5, standalone.log)
        assert "event=shadow_restored symbol=ETHUSDT seq=80" in standalone.log()
        assert standalone.stop() == 0
    finally:
        if standalone.proc is not None and standalone.proc.poll() is None:
            standalone.proc.kill()
    final = max(snapshots(standalone.data_dir, "ETHUSDT"), key=lambda s: s.seq)
    assert final.seq == 200 and final.state_hash == replayed_hash(path, ETH, 200)


def _resting_orders(engine: Engine, first_seq: int, n: int, price: Callable[[int], int]) -> list[Record]:
    records = []
    for seq in range(first_seq, first_seq + n):
        ts = 1_700_000_000_000_000_000 + seq
        command = NewOrder(seq, ts, "bob", f"c{seq}", Side.BUY, 1, price(seq))
        records.append(Record(seq, ts, command, engine.process(command)))
    return records


@pytest.mark.parametrize("hash_version", [2, 1])
def test_the_checkpoint_it_starts_from_is_stored_again_in_its_own_pieces(
    standalone: Standalone, hash_version: int
) -> None:
    # A book of 4,000 orders on 20 levels, checkpointed as `put` stores a whole snapshot (in
    # 64 KiB chunks, none of which a stepwise encoding makes again); with a state hash of
    # this version, or of version 1 (a checkpoint stored before state hashes had versions).
    path = journal_path(standalone.data_dir / "journal", "ETHUSDT")
    engine = Engine(ETH)
    with Journal(path) as journal:
        journal.append(_resting_orders(engine, 1, 4_000, lambda seq: 9_980 + seq % 20))
    state_hash = engine.state_hash() if hash_version == 2 else checkpoint_hash_v1(engine.checkpoint())
    original = new_snapshot("ETHUSDT", 4_000, 0, engine.checkpoint(), state_hash)
    with CheckpointStore(standalone.data_dir / "checkpoints.lmdb") as store:
        store.put(original)
    standalone.start()
    try:
        adopted = "event=checkpoint_adopted symbol=ETHUSDT seq=4000"
        wait_until("adopted", lambda: adopted in standalone.log(), 10, standalone.log)
        with Journal(path) as journal:  # 60 orders at one new level (checkpoint_every_records = 50)
            journal.append(_resting_orders(engine, 4_001, 60, lambda seq: 9_970))
        written = "event=checkpoint_written symbol=ETHUSDT seq=4060"
        wait_until("checkpoint at 4060", lambda: written in standalone.log(), 10, standalone.log)
        assert standalone.stop() == 0
    finally:
        if standalone.proc is not None and standalone.proc.poll() is None:
            standalone.proc.kill()
    line = next(line for line in standalone.log().splitlines() if written in line)
    fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    assert int(fields["written"]) < int(fields["bytes"]) / 10  # the new level, and the list
    assert int(fields["commits"]) >= 1 and 0 < float(fields["commit_ms"]) <= float(fields["duration_ms"])
    with CheckpointStore(standalone.data_dir / "checkpoints.lmdb", readonly=True) as store:
        assert store.by_id(original.snapshot_id) == original  # re-cut, the same checkpoint
        newest = store.newest("ETHUSDT")
        assert newest is not None and newest.seq == 4_060 and newest.state == engine.checkpoint()


def test_keeps_the_newest_checkpoints_and_deletes_older_ones(tmp_path: Path) -> None:
    standalone = Standalone(tmp_path, "keep_checkpoints = 2")
    path = journal_path(standalone.data_dir / "journal", "ETHUSDT")
    full = tmp_path / "full.lmdb"
    write_journal(full, ETH, 300, seed=5)
    standalone.start()
    try:
        with Journal(full, readonly=True) as src:
            for first, last in ((1, 60), (61, 120), (121, 180), (181, 240), (241, 300)):
                with Journal(path) as dst:
                    dst.append(list(src.read(first, last)))

                def checkpointed(seq: int = last) -> bool:
                    return any(s.seq == seq for s in snapshots(standalone.data_dir, "ETHUSDT"))

                wait_until(f"a checkpoint at {last}", checkpointed, 10, standalone.log)

        def pruned() -> bool:  # in the newest write's transaction
            return [s.seq for s in snapshots(standalone.data_dir, "ETHUSDT")] == [240, 300]

        wait_until("older checkpoints pruned", pruned, 10, standalone.log)
        assert "event=checkpoints_pruned symbol=ETHUSDT deleted=1 kept=2" in standalone.log()
        assert standalone.stop() == 0
    finally:
        if standalone.proc is not None and standalone.proc.poll() is None:
            standalone.proc.kill()


def standalone_btc(tmp_path: Path) -> tuple[Config, Callable[[int], None]]:
    """A standalone snapshotter's configuration, and `append(n)`: `append_bids` to its
    BTCUSDT journal in another process (LMDB allows one handle per file per process)."""
    from daemon import config as daemon_config

    config = daemon_config.load(Standalone(tmp_path).config)
    path = journal_path(config.journal_dir(), "BTCUSDT")
    path.parent.mkdir(parents=True, exist_ok=True)

    def append(n: int) -> None:
        writer = multiprocessing.get_context("spawn").Process(target=append_bids, args=(path, n))
        writer.start()
        writer.join(60)
        assert writer.exitcode == 0

    return config, append


def append_bids(path: Path, n: int) -> None:
    """`n` more resting bids at the end of the journal at `path` (its records' events too)."""
    engine = Engine(BTC)
    with Journal(path) as journal:
        for record in journal.read(1, journal.last_seq()):
            engine.process(record.command)
        first = engine.last_seq + 1
        commands = [NewOrder(s, s, "bob", f"c{s}", Side.BUY, 1, 10_000) for s in range(first, first + n)]
        journal.append([Record(c.seq, c.ts, c, engine.process(c)) for c in commands])


@contextlib.contextmanager
def indexing_snapshotter(config: Config) -> Iterator[tuple[process.Snapshotter, HistoryIndex]]:
    """An initialised standalone snapshotter that keeps the order-history index, and the index."""
    from journal.history import HistoryIndex
    from snapshotter import process

    with (
        CheckpointStore(config.data_path / "checkpoints.lmdb") as store,
        HistoryIndex.in_data_dir(config.data_path) as index,
    ):
        snapshotter = process.Snapshotter(config, store, logging.getLogger("test"), index)
        snapshotter.initialise()
        yield snapshotter, index


def test_the_order_history_index_is_written_in_batches_not_every_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held back until HISTORY_EVERY_S has passed (here: never) or MAX_RECORDS_PER_TURN
    records wait (here: 60), and written at close. The time-driven write is what the
    daemon's test of the index (tests/cli/test_history_cli.py) waits for."""
    from snapshotter import process

    monkeypatch.setattr(process, "HISTORY_EVERY_S", 3600.0)
    monkeypatch.setattr(process, "MAX_RECORDS_PER_TURN", 60)
    config, append = standalone_btc(tmp_path)
    append(30)
    with indexing_snapshotter(config) as (snapshotter, index):
        snapshotter.turn()
        assert index.cursor("BTCUSDT")[0] == 30  # the first turn writes at once
        append(50)
        snapshotter.turn()
        assert snapshotter.shadows[0].seq == 80
        assert index.cursor("BTCUSDT")[0] == 30  # applied, held back
        append(20)
        snapshotter.turn()
        assert index.cursor("BTCUSDT")[0] == 100  # 70 waiting: enough
        append(10)
        snapshotter.turn()
        assert index.cursor("BTCUSDT")[0] == 100
        snapshotter.close()  # what is held back goes in at the end
        assert snapshotter.shadows[0].seq == 110
        assert index.cursor("BTCUSDT")[0] == 110


def test_a_paced_turn_sleeps_between_its_units_of_work_and_applies_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following the journal and updating the order-history index are paced as a
    checkpoint is (`Pacer`): with SLICE_S at 0 every record and every slice of puts is
    followed by the pause, and the shadow and the index end up where an unpaced turn
    leaves them. The daemon's turns are paced; the catch-up at stop is not."""
    from journal import history
    from snapshotter import process

    monkeypatch.setattr(process, "SLICE_S", 0.0)
    monkeypatch.setattr(history, "PUT_SLICE", 10)
    config, append = standalone_btc(tmp_path)
    append(40)
    with indexing_snapshotter(config) as (snapshotter, index):
        started = time.monotonic()
        snapshotter.turn(0.01)
        took = time.monotonic() - started
        assert snapshotter.shadows[0].seq == 40
        assert index.cursor("BTCUSDT")[0] == 40
        assert index.order_seqs("BTCUSDT", 40) == [40]
        # 40 records, then 40 by_account and 40 by_order keys in slices of 10: 48 pauses
        assert took >= 48 * 0.01
        append(40)
        snapshotter.turn()  # unpaced: what the catch-up at stop does
        assert snapshotter.shadows[0].seq == 80


def test_serve_paces_its_turns_but_not_after_a_backlog_nor_once_asked_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SLICE_S at 0 a paced turn sleeps PAUSE_S per record. A turn that applied its
    limit (a backlog) is followed by unpaced ones: 200 records are followed long before
    200 pauses could pass. Once a stop is asked for, a paced turn stops sleeping: the
    300 records of a turn that would sleep for 6 s are applied and the loop returns well
    before. (Sleeps are lower bounds; the margins are seconds.)"""
    import threading

    from snapshotter import process

    monkeypatch.setattr(process, "SLICE_S", 0.0)
    monkeypatch.setattr(process, "PAUSE_S", 0.02)
    monkeypatch.setattr(process, "MAX_RECORDS_PER_TURN", 40)
    config, append = standalone_btc(tmp_path)
    append(200)
    signals = process.Signals()
    with CheckpointStore(config.data_path / "checkpoints.lmdb") as store:
        snapshotter = process.Snapshotter(config, store, logging.getLogger("test"))
        snapshotter.initialise()
        shadow = snapshotter.shadows[0]
        loop = threading.Thread(target=snapshotter.serve, args=(signals,), daemon=True)
        started = time.monotonic()
        loop.start()
        try:
            while shadow.seq < 200 and time.monotonic() - started < 30:
                time.sleep(0.01)
            assert shadow.seq == 200
            assert time.monotonic() - started < 200 * 0.02  # every turn paced: 4 s at least
            monkeypatch.setattr(process, "MAX_RECORDS_PER_TURN", 1_000)
            append(300)  # one paced turn: 6 s of pauses
            while shadow.seq == 200 and time.monotonic() - started < 60:
                time.sleep(0.01)
            asked = time.monotonic()
            signals.stop = "SIGTERM"
            loop.join(30)
            assert not loop.is_alive()
            assert time.monotonic() - asked < 300 * 0.02 / 2
            assert shadow.seq == 500
        finally:
            signals.stop = "SIGTERM"
            loop.join(30)


@pytest.mark.parametrize("uncounted", [False, True], ids=["every change counted", "a change not counted"])
def test_a_checkpoint_is_checked_against_the_book_encoded_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, uncounted: bool
) -> None:
    """What a checkpoint takes as it was from the last one rests on every change being
    counted (`Level.version`, `Order.stamp`): once per VERIFY_EVERY_S (here: every time) it is
    checked, and an order changed behind the level's back is caught and not stored."""
    from snapshotter import process

    monkeypatch.setattr(process, "VERIFY_EVERY_S", 0.0)
    config, append = standalone_btc(tmp_path)
    append(300)  # one level of about five runs
    with CheckpointStore(config.data_path / "checkpoints.lmdb") as store:
        snapshotter = process.Snapshotter(config, store, logging.getLogger("test"))
        snapshotter.initialise()
        snapshotter.turn()
        shadow = snapshotter.shadows[0]
        snapshotter.checkpoint(shadow, "requested")
        if uncounted:  # as a bug in the engine would: no version bumped, no stamp
            level = shadow.engine.bids.levels[10_000]
            assert level.head is not None
            level.head.remaining += 5
            level.total += 5
        append(10)
        snapshotter.turn()
        snapshotter.checkpoint(shadow, "requested")
        mismatches = [r for r in caplog.records if r.getMessage() == "checkpoint_encoding_mismatch"]
        assert len(mismatches) == snapshotter.alarms == (1 if uncounted else 0)
        newest = store.newest("BTCUSDT")
        assert newest is not None and newest.seq == 310
        assert newest.state == shadow.engine.checkpoint()
        assert newest.state_hash == shadow.engine.state_hash()
