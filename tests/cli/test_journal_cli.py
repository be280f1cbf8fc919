"""`clob journal ...` against the data directory of a real daemon run (and damaged copies of it).

One `clob serve` per module writes the journals: two accounts, a trade, an amend, an engine
reject and a cancel on BTCUSDT, one order on ETHUSDT. The commands then read its files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO

import lmdb
import msgspec
import pytest
from click.testing import CliRunner, Result

from cli.main import clob
from engine.messages import Trade
from gateway import protocol as p
from gateway.client import Client
from journal import decode, encode, key
from tests.e2e.conftest import ROOT, Daemon, interruptible, stopped

# What the fixture's orders put in the BTCUSDT journal, seq by seq.
BTC_RECORDS = 6
BTC_EVENTS = [1, 3, 1, 1, 1, 1]  # events per record: the trade record has Accepted, Trade, Filled


def place_orders(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as alice, Client(daemon.endpoint, timeout=10) as bob:
        alice.logon("alice")
        bob.logon("bob")
        sell = alice.new_order("BTCUSDT", "sell", "1.5", "100.00", client_order_id="a1")  # seq 1
        assert isinstance(sell, p.Ack)
        buy = bob.new_order("BTCUSDT", "buy", "1.0", "101.00", client_order_id="b1")  # seq 2: trade
        assert isinstance(buy, p.Ack)
        assert [type(e).__name__ for e in buy.events] == ["Accepted", "Trade", "Filled"]
        alice.amend("BTCUSDT", 1, qty="1.2")  # seq 3
        bob.cancel("BTCUSDT", 1)  # seq 4: NOT_ORDER_OWNER, an engine reject
        alice.new_order("BTCUSDT", "sell", "0.5", "105.50", client_order_id="a2")  # seq 5
        alice.cancel("BTCUSDT", client_order_id="a1")  # seq 6
        bob.new_order("ETHUSDT", "buy", "2", "200.00", client_order_id="e1")  # ETHUSDT seq 1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon that ran, took the orders above, and stopped cleanly."""
    d = Daemon(tmp_path_factory.mktemp("journal-cli"))
    d.start()
    try:
        place_orders(d)
    finally:
        assert d.stop() == 0, d.log()
    yield d


def run(daemon: Daemon, *args: str, data_dir: Path | None = None) -> Result:
    where = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return CliRunner().invoke(clob, ["journal", *args, "--config", str(daemon.config_path), *where])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def seqs(text: str) -> list[int]:
    return [int(line.split()[0]) for line in text.splitlines()]


# --- reading a good journal -------------------------------------------------------------


def test_stat(daemon: Daemon) -> None:
    docs = {d["symbol"]: d for d in json.loads(ok(run(daemon, "stat", "--json")))}
    assert set(docs) == {"BTCUSDT", "ETHUSDT"}
    btc = docs["BTCUSDT"]
    assert (btc["first_seq"], btc["last_seq"], btc["records"]) == (1, BTC_RECORDS, BTC_RECORDS)
    assert btc["archived_segments"] == []
    assert btc["file_bytes"] == os.stat(daemon.data_dir / "journal" / "BTCUSDT.lmdb").st_size
    assert btc["map_size"] >= btc["used_bytes"] > 0
    assert (docs["ETHUSDT"]["first_seq"], docs["ETHUSDT"]["last_seq"]) == (1, 1)

    text = ok(run(daemon, "stat", "BTCUSDT")).splitlines()
    assert text[0].split()[:4] == ["symbol", "first", "last", "records"]
    assert text[1].split()[:4] == ["BTCUSDT", "1", "6", "6"] and text[1].endswith("none")


def test_tail_prints_the_last_records_in_order(daemon: Daemon) -> None:
    out = ok(run(daemon, "tail", "BTCUSDT", "-n", "3"))
    lines = out.splitlines()
    assert seqs(out) == [4, 5, 6]
    assert "bob" in lines[0] and "cancel order 1" in lines[0] and "rejected NOT_ORDER_OWNER" in lines[0]
    assert "new sell 0.5000 @ 105.50 limit gtc coid=a2" in lines[1] and "accepted #3" in lines[1]
    assert "cancel coid=a1" in lines[2] and "cancelled #1 (user)" in lines[2]
    assert lines[2].split()[1].endswith("Z") and lines[2].split()[1][:2] == "20"  # UTC ISO time
    assert seqs(ok(run(daemon, "tail", "BTCUSDT"))) == list(range(1, 7))  # default 10: all of them

    # Every journal, merged by time: the ETHUSDT order was the last one placed.
    merged = ok(run(daemon, "tail", "-n", "2")).splitlines()
    assert merged[0].startswith("BTCUSDT ") and merged[1].startswith("ETHUSDT ")
    assert "new buy 2.0000 @ 200.00" in merged[1]


def test_show_the_trade_record_in_decimals(daemon: Daemon) -> None:
    out = ok(run(daemon, "show", "BTCUSDT", "2"))
    assert out.startswith("BTCUSDT seq 2  20")
    assert "command: new_order  (new buy 1.0000 @ 101.00 limit gtc coid=b1)" in out
    assert "account                'bob'" in out
    assert "events: 3" in out
    assert "[2] trade 1    1.0000 @ 100.00, aggressor buy; maker order 1 (0.5000 left)" in out
    assert "price                100.00  (10000 units)" in out  # the trade's own price field
    assert "maker_account        'alice'" in out  # the journal keeps what market data blanks

    doc = json.loads(ok(run(daemon, "show", "BTCUSDT", "2", "--json")))
    trade = doc["events"][1]
    assert trade["type"] == "trade" and trade["price"] == 10000 and trade["price_decimal"] == "100.00"
    assert trade["qty_decimal"] == "1.0000" and trade["aggressor"] == "buy"

    missing = run(daemon, "show", "BTCUSDT", "99")
    assert missing.exit_code == 1 and "no record with seq 99" in missing.output


def test_range_filters(daemon: Daemon) -> None:
    def listed(*filters: str) -> list[int]:
        return seqs(ok(run(daemon, "range", "BTCUSDT", "1", "6", *filters)))

    assert listed() == [1, 2, 3, 4, 5, 6]
    assert seqs(ok(run(daemon, "range", "BTCUSDT", "2", "3"))) == [2, 3]
    assert listed("--account", "bob") == [2, 4]  # bob's buy (and its trade), bob's refused cancel
    assert listed("--account", "alice") == [1, 2, 3, 5, 6]  # seq 2: alice is the trade's maker
    assert listed("--event", "trade") == [2]
    assert listed("--event", "rejected") == [4]
    assert listed("--event", "amended") == [3]
    assert listed("--order-id", "1") == [1, 2, 3, 4, 6]
    assert listed("--account", "bob", "--event", "rejected") == [4]
    lines = [
        json.loads(line)
        for line in ok(run(daemon, "range", "BTCUSDT", "1", "6", "--event", "filled", "--json")).splitlines()
    ]
    assert [d["seq"] for d in lines] == [2]


def test_export_jsonl(daemon: Daemon, tmp_path: Path) -> None:
    docs = [
        json.loads(line) for line in ok(run(daemon, "export", "BTCUSDT", "--format", "jsonl")).splitlines()
    ]
    assert [d["seq"] for d in docs] == list(range(1, BTC_RECORDS + 1))
    assert [len(d["events"]) for d in docs] == BTC_EVENTS
    assert docs[0]["command"]["type"] == "new_order" and docs[0]["command"]["price_decimal"] == "100.00"
    assert docs[0]["command"]["side"] == "sell" and docs[0]["command"]["account"] == "alice"
    assert [e["type"] for e in docs[1]["events"]] == ["accepted", "trade", "filled"]
    assert docs[1]["events"][1]["price_decimal"] == "100.00" and docs[1]["events"][1]["qty"] == 10000
    assert docs[2]["command"]["type"] == "amend" and docs[3]["events"][0]["reason"] == "not_order_owner"
    assert all(d["time"].endswith("Z") and isinstance(d["ts"], int) for d in docs)

    target = tmp_path / "out.jsonl"
    ok(run(daemon, "export", "BTCUSDT", "--format", "jsonl", "--from", "2", "--to", "3", "-o", str(target)))
    assert [json.loads(line)["seq"] for line in target.read_text().splitlines()] == [2, 3]


def test_export_csv(daemon: Daemon) -> None:
    rows = list(csv.DictReader(io.StringIO(ok(run(daemon, "export", "BTCUSDT", "--format", "csv")))))
    assert len(rows) == sum(BTC_EVENTS)  # one row per event
    header = ok(run(daemon, "export", "BTCUSDT", "--format", "csv")).splitlines()[0]
    assert header.startswith("symbol,seq,ts,time,command,command_account,event_no,event,order_id,account")
    trade = next(r for r in rows if r["event"] == "trade")
    assert (trade["seq"], trade["price"], trade["qty"], trade["aggressor"]) == (
        "2",
        "100.00",
        "1.0000",
        "buy",
    )
    assert (trade["maker_account"], trade["taker_account"], trade["command_account"]) == (
        "alice",
        "bob",
        "bob",
    )
    assert [r["event"] for r in rows if r["seq"] == "2"] == ["accepted", "trade", "filled"]
    rejected = next(r for r in rows if r["event"] == "rejected")
    assert rejected["reason"] == "not_order_owner" and rejected["command"] == "cancel"


def test_verify_passes_on_the_daemons_journal(daemon: Daemon) -> None:
    out = ok(run(daemon, "verify"))
    assert "BTCUSDT: 6 records checked (seq 1..6), 6 re-executed; OK" in out
    assert "ETHUSDT: 1 records checked (seq 1..1), 1 re-executed; OK" in out
    docs = json.loads(ok(run(daemon, "verify", "BTCUSDT", "--json")))
    assert docs[0]["ok"] is True and docs[0]["problems"] == 0
    assert docs[0]["state_hash"].startswith("v2:") and len(docs[0]["state_hash"]) == 3 + 64


# --- damaged copies ---------------------------------------------------------------------


def damaged_copy(daemon: Daemon, tmp_path: Path, seq: int, change: str) -> Path:
    """A copy of the data dir whose BTCUSDT record `seq` was rewritten behind the journal's back."""
    copy = tmp_path / "data"
    shutil.copytree(daemon.data_dir, copy)
    env = lmdb.open(str(copy / "journal" / "BTCUSDT.lmdb"), subdir=False, max_dbs=4)
    try:
        db = env.open_db(b"records", create=False)
        with env.begin(db=db, write=True) as txn:
            stored = txn.get(key(seq))
            assert stored is not None
            raw = bytes(stored)
            if change == "flip":  # one payload byte, the stored CRC kept
                value = raw[:-1] + bytes([raw[-1] ^ 0x01])
            else:  # a consistent-looking record: Trade qty altered, CRC recomputed
                record = decode(raw)
                events = [
                    msgspec.structs.replace(e, qty=e.qty - 100) if isinstance(e, Trade) else e
                    for e in record.events
                ]
                value = encode(msgspec.structs.replace(record, events=events))
            txn.put(key(seq), value)
    finally:
        env.close()
    return copy


def test_verify_reports_a_flipped_byte_as_a_checksum_failure(daemon: Daemon, tmp_path: Path) -> None:
    copy = damaged_copy(daemon, tmp_path, 3, "flip")
    result = run(daemon, "verify", "BTCUSDT", data_dir=copy)
    assert result.exit_code == 1, result.output
    assert "FAILED: 1 problem(s); first at seq 3: checksum failure: checksum mismatch" in result.stdout
    assert "6 records checked (seq 1..6), 2 re-executed" in result.stdout  # replay stops at the damage
    assert "state hash: n/a" in result.stdout
    assert (
        json.loads(run(daemon, "verify", "BTCUSDT", "--json", data_dir=copy).stdout)[0]["first_problem"][
            "seq"
        ]
        == 3
    )
    # The other commands show it rather than stop at it, and the good journal is untouched.
    assert "3  CORRUPT: checksum mismatch" in run(daemon, "range", "BTCUSDT", "1", "6", data_dir=copy).stdout
    assert run(daemon, "show", "BTCUSDT", "3", data_dir=copy).exit_code == 1
    assert ok(run(daemon, "verify", "ETHUSDT", data_dir=copy))
    assert ok(run(daemon, "verify", "BTCUSDT"))


def test_verify_reports_an_altered_event_as_a_determinism_mismatch(daemon: Daemon, tmp_path: Path) -> None:
    copy = damaged_copy(daemon, tmp_path, 2, "rewrite")
    # The checksum is valid, so reading is happy ...
    assert "trade 1 0.9900 @ 100.00" in ok(run(daemon, "tail", "BTCUSDT", data_dir=copy))
    # ... but re-execution disagrees.
    result = run(daemon, "verify", "BTCUSDT", data_dir=copy)
    assert result.exit_code == 1, result.output
    first = result.stdout.splitlines()[0]
    assert "first at seq 2: determinism mismatch: event 2: journal has [trade 1    0.9900 @ 100.00" in first
    assert "re-execution gives [trade 1    1.0000 @ 100.00" in first
    # `clob replay` makes the same check, through the same code as restart recovery.
    args = ["replay", "BTCUSDT", "--config", str(daemon.config_path), "--data-dir", str(copy)]
    replayed = CliRunner().invoke(clob, args)
    assert replayed.exit_code == 1, replayed.output
    assert "determinism mismatch at seq 2" in replayed.output
    assert ok(CliRunner().invoke(clob, [*args, "--to-seq", "1"])).count("records replayed  1") == 1


# --- a live daemon ----------------------------------------------------------------------


def test_tail_follow_on_a_live_daemon(daemon: Daemon, tmp_path: Path) -> None:
    live = Daemon(tmp_path)  # its own copy of the data, so the other tests' numbers hold
    shutil.copytree(daemon.data_dir, live.data_dir)
    live.start()
    follower = None
    try:
        follower = subprocess.Popen(
            [sys.executable, "-m", "cli", "journal", "tail", "BTCUSDT", "-n", "1", "-f",
             "--config", str(live.config_path)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
        )  # fmt: skip
        assert follower.stdout is not None
        assert seqs(read_line(follower.stdout, 10)) == [6]  # the last record, then it follows
        with Client(live.endpoint, timeout=10) as carol:
            carol.logon("carol")
            carol.new_order("BTCUSDT", "buy", Decimal("0.25"), Decimal("99.50"), client_order_id="c1")
        line = read_line(follower.stdout, 5)
        assert seqs(line) == [7] and "carol" in line and "new buy 0.2500 @ 99.50" in line
    finally:
        try:
            if follower is not None:
                follower.send_signal(signal.SIGINT)
                _, err = stopped(follower, 5)
                assert follower.returncode == 0, err
        finally:  # even when the follower would not stop: no daemon left running
            assert live.stop() == 0, live.log()


def read_line(stream: IO[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if ready:
            return stream.readline()
    raise AssertionError(f"no line within {timeout}s")


def test_verify_progress_bar_goes_to_stderr(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cli.journal.PROGRESS_MIN", 1)  # as if the journal were long
    result = run(daemon, "verify", "BTCUSDT")
    assert result.exit_code == 0
    assert "verifying BTCUSDT" in result.stderr and "verifying" not in result.stdout
    assert result.stdout.startswith("BTCUSDT: 6 records checked")
