"""Storage faults on the real daemon: a journal that cannot grow, a full disk, a journal made
read-only, a damaged checkpoint.

For each: nothing is acked that is not in the journal, nothing refused is in it, the client's
reject says why, the operator gets a log line, the other instrument keeps trading, and
trading resumes once the cause is gone (space freed, map raised, file writable again).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import msgspec
import pytest

from engine.engine import Engine
from engine.instrument import Instrument
from engine.messages import NewOrder, RejectReason, Side
from gateway import protocol as p
from gateway.client import Client
from journal import Journal, JournalWriteError, Record
from journal.checkpoints import CheckpointStore, checkpoints_path, encode, new_snapshot
from tests.faults.conftest import Daemon

ROOT = Path(__file__).resolve().parents[2]
STORAGE_FAILURE = int(RejectReason.STORAGE_FAILURE)
CHUNK = 100  # orders per client batch
TIMEOUT = 10.0


class Ledger:
    """What the client was told: coid -> (symbol, seq) of its Ack, or (symbol, code, text) of its Reject."""

    def __init__(self) -> None:
        self.acked: dict[str, tuple[str, int]] = {}
        self.refused: dict[str, tuple[str, int, str]] = {}
        self.n = 0

    def send(self, client: Client, symbol: str, count: int, prefix: str) -> list[p.Ack | p.Reject]:
        """`count` resting orders (a spread of bids and asks that never cross) on `symbol`."""
        orders = []
        for _ in range(count):
            self.n += 1
            side, price = ("buy", 9_000 + self.n % 50) if self.n % 2 else ("sell", 11_000 + self.n % 50)
            orders.append(
                client.make_order(symbol, side, qty_units=1 + self.n % 7, price_units=price,
                                  client_order_id=f"{prefix}{self.n}")
            )  # fmt: skip
        replies = client.send_batch(orders, timeout=TIMEOUT)
        for order, reply in zip(orders, replies, strict=True):
            if isinstance(reply, p.Ack):
                assert not reply.duplicate
                self.acked[order.client_order_id] = (symbol, reply.seq)
            else:
                self.refused[order.client_order_id] = (symbol, reply.code, reply.text)
        return replies

    def fill_until_refused(
        self, client: Client, symbol: str, prefix: str, limit: int = 300
    ) -> list[p.Reject]:
        for _ in range(limit):
            rejects = [r for r in self.send(client, symbol, CHUNK, prefix) if isinstance(r, p.Reject)]
            if rejects:
                return rejects
        raise AssertionError(f"{symbol}: never refused after {limit * CHUNK} orders")

    def check(self, daemon: Daemon) -> dict[str, list[int]]:
        """Every ack is in the journal at its seq; nothing refused is; seqs are contiguous."""
        seqs: dict[str, list[int]] = {}
        journaled: dict[str, tuple[str, int]] = {}
        for symbol in ("BTCUSDT", "ETHUSDT"):
            path = daemon.data_dir / "journal" / f"{symbol}.lmdb"
            if not path.exists():
                continue
            with Journal(path, readonly=True) as journal:
                records = list(journal.read())
            seqs[symbol] = [r.seq for r in records]
            assert seqs[symbol] == list(range(1, len(records) + 1)), symbol
            for r in records:
                coid = r.command.client_order_id  # type: ignore[union-attr]
                assert coid not in journaled, f"{coid} journaled twice"
                journaled[coid] = (symbol, r.seq)
        for coid, where in self.acked.items():
            assert journaled.get(coid) == where, f"acked {coid} at {where}, journal has {journaled.get(coid)}"
        for coid in self.refused:
            assert coid not in journaled, f"refused {coid} is in the journal at {journaled[coid]}"
        return seqs


def _cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(daemon.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def client(daemon: Daemon, account: str = "alice") -> Client:
    c = Client(daemon.endpoint, timeout=TIMEOUT)
    c.logon(account)
    return c


def log_mark(daemon: Daemon) -> int:
    return daemon.log_path.stat().st_size if daemon.log_path.exists() else 0


def wait_log(daemon: Daemon, text: str, timeout: float = 10.0, since: int = 0) -> str:
    """The first log line after byte `since` that contains `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with daemon.log_path.open("rb") as f:
            f.seek(since)
            full = f.read().decode(errors="replace")
        if text in full:
            return next(line for line in full.splitlines() if text in line)
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the daemon log:\n{daemon.log()}")


def full_log(daemon: Daemon) -> str:
    return daemon.log_path.read_text(errors="replace")


def assert_storage_rejects(rejects: list[p.Reject], *why: str) -> None:
    assert rejects
    for r in rejects:
        assert r.code == STORAGE_FAILURE, r
        assert "journal" in r.text and any(w in r.text for w in why), r.text


def still_trades(daemon: Daemon, ledger: Ledger, symbol: str, prefix: str) -> None:
    with client(daemon, "bob") as c:
        replies = ledger.send(c, symbol, 20, prefix)
    assert all(isinstance(r, p.Ack) for r in replies), replies


def assert_live_matches_journal(daemon: Daemon, symbol: str, seq: int | None = None) -> None:
    """`clob replay --snapshot none --compare-live`: the live book's state hash equals a
    replay of the whole journal to the live seq."""
    out = _cli(daemon, "replay", symbol, "--snapshot", "none", "--compare-live", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    live = json.loads(out.stdout)["live"]
    assert live["identical"] and not live["level_differences"], live
    if seq is not None:
        assert live["seq"] == seq


def pids(daemon: Daemon) -> dict[str, list[int]]:
    return {name: sorted(daemon.child_pids(name)) for name in ("BTCUSDT", "ETHUSDT", "snapshotter")}


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


# --- 1. a journal that may not grow any further ---------------------------------------------


def test_tiny_map_refuses_with_journal_full_then_a_larger_map_trades_again(tmp_path: Path) -> None:
    small = "[matcher]\nmap_size_mb = 1\nmax_map_size_mb = 1\n"
    daemon = Daemon(tmp_path, small)
    ledger = Ledger()
    with running(daemon):
        before = pids(daemon)
        with client(daemon) as c:
            rejects = ledger.fill_until_refused(c, "BTCUSDT", "m")
            assert_storage_rejects(rejects, "journal full")
            line = wait_log(daemon, "event=commit_failed")
            assert "error_type=JournalFull" in line and "proc=matcher.BTCUSDT" in line
            # Still full: refused again, and the matcher did not restart. (A few more small
            # commits may fit first: pages an old read transaction pinned are freed once the
            # snapshotter's reader moves on.)
            again = ledger.fill_until_refused(c, "BTCUSDT", "m", limit=20)
            assert_storage_rejects(again, "journal full")
        still_trades(daemon, ledger, "ETHUSDT", "e")
        assert pids(daemon) == before
        ledger.check(daemon)
        assert_live_matches_journal(daemon, "BTCUSDT")
        assert daemon.stop() == 0

    # The operator raises the maximum and restarts: the same instrument trades again.
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace("max_map_size_mb = 1\n", "max_map_size_mb = 64\n")
    )
    with running(daemon):
        with client(daemon) as c:
            refused_before = len(ledger.refused)
            replies = ledger.send(c, "BTCUSDT", 5 * CHUNK, "n")
            assert all(isinstance(r, p.Ack) for r in replies)
            assert len(ledger.refused) == refused_before
        seqs = ledger.check(daemon)
        assert len(seqs["BTCUSDT"]) == sum(1 for s, _ in ledger.acked.values() if s == "BTCUSDT")
        assert daemon.stop() == 0


# --- 2. a real full disk ----------------------------------------------------------------------


def _fill(filler: Path, leave: int) -> None:
    """Append to `filler` until at most `leave` bytes are free on its filesystem."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            free = os.statvfs(filler.parent)
            room = free.f_bavail * free.f_frsize - leave
            if room <= 0:
                return
            try:
                os.write(fd, b"\0" * min(room, 1 << 20))
            except OSError:  # ENOSPC: full
                return
    finally:
        os.close(fd)


def test_full_disk_refuses_with_enospc_and_recovers_when_space_returns(tmp_path: Path) -> None:
    # A 1 MiB map that must grow on the way (LMDB without writemap extends the file by
    # pwrite, never through the map, so growth on a full disk is an error, not a SIGBUS).
    daemon = Daemon(tmp_path, "[matcher]\nmap_size_mb = 1\nmax_map_size_mb = 64\n")
    ledger = Ledger()
    journal = daemon.data_dir / "journal" / "BTCUSDT.lmdb"
    with tmpfs(daemon.data_dir, "6m"), running(daemon):
        before = pids(daemon)
        with client(daemon) as c:
            ledger.send(c, "ETHUSDT", CHUNK, "d")
            while journal.stat().st_size <= 1 << 20:
                assert all(isinstance(r, p.Ack) for r in ledger.send(c, "BTCUSDT", 5 * CHUNK, "d"))
            # Leave less room than one batch needs: the disk fills in the middle of a write.
            filler = daemon.data_dir / "filler"
            _fill(filler, leave=16 * 1024)
            rejects = ledger.fill_until_refused(c, "BTCUSDT", "d")
            assert_storage_rejects(rejects, "No space left on device")
            line = wait_log(daemon, "event=commit_failed")
            assert "proc=matcher.BTCUSDT" in line and "No space left on device" in line
            # Fill the very last bytes too: the other instrument is refused cleanly as well.
            _fill(filler, leave=0)
            eth = ledger.fill_until_refused(c, "ETHUSDT", "d", limit=20)
            assert_storage_rejects(eth, "No space left on device")
            ledger.check(daemon)
            assert_live_matches_journal(daemon, "BTCUSDT")
            assert pids(daemon) == before, "a child died on the full disk (SIGBUS?)"

            # Space returns: both instruments are acked again, no restart.
            filler.unlink()
            for symbol in ("BTCUSDT", "ETHUSDT"):
                replies = ledger.send(c, symbol, CHUNK, "r")
                assert all(isinstance(r, p.Ack) for r in replies), [
                    r for r in replies if isinstance(r, p.Reject)
                ][:1]
        assert pids(daemon) == before
        ledger.check(daemon)
        for symbol in ("BTCUSDT", "ETHUSDT"):  # the operator hears that it is over
            resumed = wait_log(daemon, f"proc=matcher.{symbol} event=commit_resumed")
            refused = sum(1 for s, _, _ in ledger.refused.values() if s == symbol)
            assert f" refused={refused} " in resumed, resumed
        with Journal(journal, readonly=True) as j:
            map_size = j.stat()["map_size"]
        assert isinstance(map_size, int) and map_size > 1 << 20  # it did grow
        assert_live_matches_journal(daemon, "BTCUSDT")
        assert daemon.stop() == 0


def test_a_disk_that_fills_mid_write_is_reported_as_no_space_left(tmp_path: Path) -> None:
    # Regression: LMDB reports a short write (the disk filled part-way through a page
    # write) as EIO, "Input/output error", which reads like a failing disk.
    with tmpfs(tmp_path / "fs", "1m") as fs:
        journal = Journal(fs / "J.lmdb")
        try:
            order = NewOrder(1, 1, "acct", "x" * 200, Side.BUY, 1, 100)
            batch = [Record(seq, seq, msgspec.structs.replace(order, seq=seq), []) for seq in range(1, 201)]
            _fill(fs / "filler", leave=16 * 1024)
            with pytest.raises(JournalWriteError) as failed:
                journal.append(batch)
            assert "No space left on device" in str(failed.value)
            assert journal.last_seq() == 0
            (fs / "filler").unlink()
            journal.append(batch)  # the same batch, once space returns
            assert [r.seq for r in journal.read()] == list(range(1, 201))
        finally:
            journal.close()


def test_start_on_a_full_disk_without_lock_files_says_why_and_starts_once_freed(tmp_path: Path) -> None:
    # Regression: LMDB creates a missing lock file sparse and writes it through a shared
    # mapping; on a full disk that write is a SIGBUS (the matcher died with code -7 and
    # no reason), not an error. A data directory restored from a file copy or `mdb_copy`
    # has no lock files, and a restore is exactly when a disk may be full.
    daemon = Daemon(tmp_path)
    ledger = Ledger()
    with tmpfs(daemon.data_dir, "2m"):
        with running(daemon):
            with client(daemon) as c:
                for symbol in ("BTCUSDT", "ETHUSDT"):
                    assert all(isinstance(r, p.Ack) for r in ledger.send(c, symbol, CHUNK, "s"))
            assert daemon.stop() == 0
        for lock in daemon.data_dir.rglob("*-lock"):
            lock.unlink()
        filler = daemon.data_dir / "filler"
        _fill(filler, leave=0)
        mark = log_mark(daemon)
        with pytest.raises(AssertionError, match="daemon exited with 1"):
            daemon.start()
        daemon.kill_all()  # closes the notify socket; the tree is gone already
        line = wait_log(daemon, "event=cannot_start", since=mark)
        assert "No space left on device" in line, line
        assert "code=-7" not in full_log(daemon)[mark:], "a child died of SIGBUS"

        filler.unlink()
        with running(daemon):
            ledger.check(daemon)
            with client(daemon) as c:
                assert all(isinstance(r, p.Ack) for r in ledger.send(c, "BTCUSDT", CHUNK, "t"))
            ledger.check(daemon)
            assert daemon.stop() == 0


# --- 3. a journal file made read-only -------------------------------------------------------


def _chattr(flag: str, path: Path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(
            f"chattr {flag} is not available here (needs root on ext4/xfs/tmpfs): {done.stderr.strip()}"
        )


def test_read_only_journal_refuses_with_the_reason_and_recovers(tmp_path: Path) -> None:
    # Root ignores file modes (chmod 0444 would not stop a write), so the file is made
    # immutable: the kernel then refuses writes even through the matcher's open descriptor.
    daemon = Daemon(tmp_path)
    ledger = Ledger()
    journal = daemon.data_dir / "journal" / "BTCUSDT.lmdb"
    try:
        with running(daemon):
            before = pids(daemon)
            with client(daemon) as c:
                ledger.send(c, "BTCUSDT", CHUNK, "w")
                _chattr("+i", journal)
                rejects = [r for r in ledger.send(c, "BTCUSDT", CHUNK, "w") if isinstance(r, p.Reject)]
                assert len(rejects) == CHUNK
                assert_storage_rejects(rejects, "Operation not permitted", "Permission denied")
                line = wait_log(daemon, "event=commit_failed")
                assert "proc=matcher.BTCUSDT" in line and "JournalWriteError" in line
                still_trades(daemon, ledger, "ETHUSDT", "e")
                ledger.check(daemon)
                assert_live_matches_journal(daemon, "BTCUSDT", CHUNK)
                _chattr("-i", journal)
                replies = ledger.send(c, "BTCUSDT", CHUNK, "w")
                assert all(isinstance(r, p.Ack) for r in replies)
                resumed = wait_log(daemon, "proc=matcher.BTCUSDT event=commit_resumed")
                assert f"seq={2 * CHUNK} refused={CHUNK} " in resumed, resumed
            assert pids(daemon) == before
            ledger.check(daemon)
            assert daemon.stop() == 0
    finally:
        subprocess.run(["chattr", "-i", str(journal)], capture_output=True, check=False)


def test_start_with_a_read_only_journal_names_the_file_and_the_reason(tmp_path: Path) -> None:
    # At start-up a matcher that cannot open its journal for writing does not come up, and
    # a daemon that cannot bring up every matcher exits 1 (docs/runbook.md): it must say why.
    daemon = Daemon(tmp_path)
    journal = daemon.data_dir / "journal" / "BTCUSDT.lmdb"
    ledger = Ledger()
    try:
        with running(daemon):
            with client(daemon) as c:
                ledger.send(c, "BTCUSDT", 10, "o")
            assert daemon.stop() == 0
        _chattr("+i", journal)
        mark = log_mark(daemon)
        with pytest.raises(AssertionError, match="daemon exited with 1"):
            daemon.start()
        daemon.kill_all()
        line = wait_log(daemon, "proc=matcher.BTCUSDT event=cannot_start", since=mark)
        assert str(journal) in line and "Operation not permitted" in line, line
        _chattr("-i", journal)
        with running(daemon):
            ledger.check(daemon)
            with client(daemon) as c:
                assert all(isinstance(r, p.Ack) for r in ledger.send(c, "BTCUSDT", 10, "o"))
            assert daemon.stop() == 0
    finally:
        subprocess.run(["chattr", "-i", str(journal)], capture_output=True, check=False)


def test_a_truncated_journal_is_refused_with_the_reason_not_a_sigbus(tmp_path: Path) -> None:
    # Regression: LMDB trusts its meta page and reads pages past the end of a file cut
    # short through its map: the matcher died of SIGBUS (code -7) with no word of why.
    daemon = Daemon(tmp_path)
    with running(daemon):
        with client(daemon) as c:
            ledger = Ledger()
            for _ in range(5):
                ledger.send(c, "BTCUSDT", CHUNK, "t")
        assert daemon.stop() == 0
    journal = daemon.data_dir / "journal" / "BTCUSDT.lmdb"
    os.truncate(journal, journal.stat().st_size // 2)
    mark = log_mark(daemon)
    with pytest.raises(AssertionError, match="daemon exited with 1"):
        daemon.start()
    daemon.kill_all()
    line = wait_log(daemon, "proc=matcher.BTCUSDT event=cannot_start", since=mark)
    assert str(journal) in line and "is truncated" in line, line
    assert "code=-7" not in full_log(daemon)[mark:], "a child died of SIGBUS"


# --- 4. a damaged checkpoint ----------------------------------------------------------------

CHECKPOINTS = """
[snapshotter]
checkpoint_interval_s = 3600
checkpoint_every_records = 0
poll_interval_s = 0.02
"""


def _take_checkpoint(daemon: Daemon, symbol: str, seq: int) -> None:
    out = _cli(daemon, "snapshot", "take")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_log(daemon, f"event=checkpoint_written symbol={symbol} seq={seq}")


def _damage(daemon: Daemon, symbol: str, how: str) -> int:
    """Truncate or bit-flip the newest checkpoint of `symbol` in place; its seq."""
    with lmdb.open(str(checkpoints_path(daemon.data_dir)), subdir=False, max_dbs=2) as env:
        db = env.open_db(b"checkpoints")
        with env.begin(db=db, write=True) as txn:
            prefix = symbol.encode() + b"\0"
            keys = [bytes(k) for k, _ in txn.cursor() if bytes(k).startswith(prefix)]
            newest = keys[-1]
            stored = txn.get(newest)
            assert stored is not None
            raw = bytearray(stored)
            if how == "truncate":
                raw = raw[: len(raw) // 2]
            else:
                raw[len(raw) // 2] ^= 0x10
            txn.put(newest, bytes(raw))
    return int.from_bytes(newest[-8:], "big")


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_damaged_checkpoint_is_skipped_and_the_book_matches_the_journal(tmp_path: Path, how: str) -> None:
    daemon = Daemon(tmp_path, CHECKPOINTS)
    ledger = Ledger()
    with running(daemon):
        with client(daemon) as c:
            ledger.send(c, "BTCUSDT", CHUNK, "a")
            _take_checkpoint(daemon, "BTCUSDT", CHUNK)
            ledger.send(c, "BTCUSDT", 50, "b")
        assert daemon.stop() == 0  # the snapshotter writes one more at the stop
    wait_log(daemon, f"event=checkpoint_written symbol=BTCUSDT seq={CHUNK + 50} reason=stop")

    damaged = _damage(daemon, "BTCUSDT", how)
    assert damaged == CHUNK + 50
    mark = log_mark(daemon)
    with running(daemon):
        line = wait_log(daemon, "event=checkpoint_skipped", since=mark)
        assert f"symbol=BTCUSDT seq={damaged}" in line and "checksum mismatch" in line
        recovered = wait_log(daemon, "proc=matcher.BTCUSDT event=recovered", since=mark)
        assert f"checkpoint_seq={CHUNK} " in recovered and "records=50 " in recovered
        with client(daemon) as c:
            live = c.book("BTCUSDT", depth=100)
            assert live.seq == CHUNK + 50
            assert live.bids and live.asks
        assert_live_matches_journal(daemon, "BTCUSDT", CHUNK + 50)
        with client(daemon) as c:
            # And it trades on from there.
            assert all(isinstance(r, p.Ack) for r in ledger.send(c, "BTCUSDT", 10, "d"))
        ledger.check(daemon)
        assert daemon.stop() == 0


def test_truncated_checkpoint_file_is_set_aside_and_recovery_replays_the_journal(tmp_path: Path) -> None:
    # Regression: a checkpoints.lmdb cut short (a bad copy, a damaged filesystem) made every
    # matcher die of SIGBUS in recovery (LMDB read pages past the end of the mapped file),
    # so the daemon could not start at all over what is only an accelerator.
    daemon = Daemon(tmp_path, CHECKPOINTS)
    ledger = Ledger()
    with running(daemon):
        with client(daemon) as c:
            for prefix in ("a", "b"):
                ledger.send(c, "BTCUSDT", CHUNK, prefix)
                _take_checkpoint(daemon, "BTCUSDT", len(ledger.acked))
        assert daemon.stop() == 0
    store = checkpoints_path(daemon.data_dir)
    os.truncate(store, store.stat().st_size // 2)

    mark = log_mark(daemon)
    with running(daemon):
        line = wait_log(daemon, "proc=matcher.BTCUSDT event=checkpoints_unreadable", since=mark)
        assert "truncated" in line, line
        recovered = wait_log(daemon, "proc=matcher.BTCUSDT event=recovered", since=mark)
        assert "from_checkpoint=none" in recovered and f"records={2 * CHUNK} " in recovered
        aside = wait_log(daemon, "proc=snapshotter event=checkpoint_store_damaged", since=mark)
        assert "truncated" in aside and "moved_to=" in aside
        assert "code=-7" not in full_log(daemon)[mark:], "a child died of SIGBUS"
        assert_live_matches_journal(daemon, "BTCUSDT", 2 * CHUNK)
        # The snapshotter writes to a fresh store, and the next start recovers from it.
        with client(daemon) as c:
            ledger.send(c, "BTCUSDT", 10, "d")
        _take_checkpoint(daemon, "BTCUSDT", 2 * CHUNK + 10)
        ledger.check(daemon)
        assert daemon.stop() == 0
    assert list(store.parent.glob(f"{store.name}.damaged-*"))
    mark = log_mark(daemon)
    with running(daemon):
        recovered = wait_log(daemon, "proc=matcher.BTCUSDT event=recovered", since=mark)
        assert f"checkpoint_seq={2 * CHUNK + 10} " in recovered and "records=0 " in recovered
        assert_live_matches_journal(daemon, "BTCUSDT", 2 * CHUNK + 10)
        assert daemon.stop() == 0


def test_a_damaged_checkpoint_key_is_skipped_not_raised(tmp_path: Path) -> None:
    # Regression: a bit flip in a node header lengthens a key; its symbol part then held
    # bytes that are not UTF-8 and the store raised UnicodeDecodeError out of `newest`
    # (a matcher's recovery: the daemon could not start) and `infos` (`clob snapshot list`).
    path = tmp_path / "checkpoints.lmdb"
    engine = Engine(Instrument(symbol="BTCUSDT"))
    with CheckpointStore(path, map_size=1 << 24) as store:
        for seq in (100, 150):
            store.put(new_snapshot("BTCUSDT", seq, 0, engine.checkpoint(), engine.state_hash()))
    with lmdb.open(str(path), subdir=False, max_dbs=2) as env, env.begin(write=True) as txn:
        db = env.open_db(b"checkpoints", txn=txn)
        damaged_key = b"BTCUSDT\x00" + (150).to_bytes(8, "big") + b"\x00" * 9  # 0x96: not UTF-8
        txn.put(damaged_key, b"\x00" * 40, db=db)
        # An intact value under a damaged key: a book at seq 500, past the journal's end.
        ahead = new_snapshot("BTCUSDT", 500, 0, engine.checkpoint(), engine.state_hash())
        txn.put(b"BTCUSDT\x00" + (160).to_bytes(8, "big"), encode(ahead), db=db)
    skipped: list[str] = []
    with CheckpointStore(path, readonly=True) as store:
        newest = store.newest("BTCUSDT", 200, on_corrupt=lambda exc: skipped.append(exc.reason))
        assert newest is not None and newest.seq == 150
        assert skipped == [
            "stored under its key but says BTCUSDT@500",
            "checksum mismatch (corrupted or truncated)",
        ]
        assert [i.seq for i in store.infos("BTCUSDT")] == [100, 150]


def test_a_checkpoint_store_that_cannot_be_written_is_retried_calmly(tmp_path: Path) -> None:
    # Regression: once an instrument was due a checkpoint by record count, a failing write
    # was retried on every snapshotter turn (each poll_interval_s): a full checkpoint
    # encoded and an ERROR line 50 times a second for as long as the disk stayed full.
    daemon = Daemon(
        tmp_path, CHECKPOINTS.replace("checkpoint_every_records = 0", "checkpoint_every_records = 50")
    )
    store = checkpoints_path(daemon.data_dir)
    ledger = Ledger()
    try:
        with running(daemon):
            with client(daemon) as c:
                ledger.send(c, "BTCUSDT", CHUNK, "a")
                wait_log(daemon, f"event=checkpoint_written symbol=BTCUSDT seq={CHUNK} reason=records")
                _chattr("+i", store)
                mark = log_mark(daemon)
                ledger.send(c, "BTCUSDT", CHUNK, "b")  # journaled: only the checkpoint fails
                line = wait_log(daemon, "event=checkpoint_failed", since=mark)
                assert "symbol=BTCUSDT" in line and "Operation not permitted" in line, line
                time.sleep(1.0)  # 50 turns of the snapshotter
                failures = full_log(daemon)[mark:].count("event=checkpoint_failed")
                assert failures <= 2, f"{failures} checkpoint_failed lines in 1 s"
                _chattr("-i", store)
                _take_checkpoint(daemon, "BTCUSDT", 2 * CHUNK)  # asked for: tried at once
            ledger.check(daemon)
            assert daemon.stop() == 0
    finally:
        subprocess.run(["chattr", "-i", str(store)], capture_output=True, check=False)
