"""`clob orders`, `clob fills`, `clob order-history`: answered from the history index.

Journals written directly in tmp (an Engine + Journal.append; no daemon) for the command
output; one real daemon at the end shows the snapshotter keeps the index current.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load
from engine.engine import Engine
from engine.messages import Amend, Cancel, Command, NewOrder, Side
from gateway.client import Client
from journal import Journal, Record, journal_path
from journal.history import HistoryIndex, catch_up, history_path
from tests.cli.clob_runner import ClobOn
from tests.e2e.conftest import Daemon

T0 = 1_700_000_000_000_000_000

CONFIG = """
env = "test"
data_dir = "{data}"
run_dir = "{run}"

[[instruments]]
symbol = "BTCUSDT"
price_decimals = 2
qty_decimals = 4
lot_size = 1

[[instruments]]
symbol = "ETHUSDT"
price_decimals = 2
qty_decimals = 4
"""


def _btc(seq: int) -> Command:
    ts = T0 + seq
    return [
        NewOrder(seq, ts, "alice", "a1", Side.SELL, 15_000, 10_000),  # 1: order 1
        NewOrder(seq, ts, "bob", "b1", Side.BUY, 10_000, 10_100),  # 2: order 2, trade 1 with order 1
        Amend(seq, ts, "alice", order_id=1, qty=12_000),  # 3: order 1 total 1.2 (0.2 open)
        Cancel(seq, ts, "bob", order_id=1),  # 4: NOT_ORDER_OWNER
        NewOrder(seq, ts, "alice", "a2", Side.SELL, 5_000, 10_550),  # 5: order 3
        NewOrder(seq, ts, "carol", "c1", Side.BUY, 3_000, 10_000),  # 6: order 4, trade 2: order 1 filled
        Cancel(seq, ts, "alice", order_id=3),  # 7
        NewOrder(seq, ts, "dave", "d1", Side.BUY, 1_000, 9_000),  # 8: order 5, stays open
    ][seq - 1]


BTC_RECORDS = 8


class Data(ClobOn):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "clobd.toml"
        self.config_path.write_text(CONFIG.format(data=root / "data", run=root / "run"))
        config = load(self.config_path)
        self.data_dir = config.data_path
        for symbol, commands in (
            ("BTCUSDT", [_btc(s) for s in range(1, BTC_RECORDS + 1)]),
            ("ETHUSDT", [NewOrder(1, T0 + 100, "bob", "e1", Side.BUY, 20_000, 20_000)]),
        ):
            engine = Engine(config.instrument(symbol).spec())
            path = journal_path(config.journal_dir(), symbol)
            with Journal(path) as journal:
                journal.append([Record(c.seq, c.ts, c, engine.process(c)) for c in commands])



@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data(tmp_path)


def test_orders_of_an_account(data: Data) -> None:
    docs = data.json("orders", "--account", "alice")
    got = [(d["symbol"], d["order_id"], d["side"], d["price"], d["qty"], d["filled"], d["remaining"],
            d["status"]) for d in docs]  # fmt: skip
    assert got == [
        ("BTCUSDT", 1, "sell", "100.00", "1.2000", "1.2000", "0.0000", "filled"),
        ("BTCUSDT", 3, "sell", "105.50", "0.5000", "0.0000", "0.0000", "cancelled"),
    ]
    assert docs[0]["accepted_seq"] == 1 and docs[0]["client_order_id"] == "a1"

    bob = data.json("orders", "--account", "bob")
    assert [(d["symbol"], d["order_id"], d["status"]) for d in bob] == [
        ("BTCUSDT", 2, "filled"),
        ("ETHUSDT", 1, "open"),
    ]
    eth = data.json("orders", "--account", "bob", "--symbol", "ETHUSDT")
    assert [d["symbol"] for d in eth] == ["ETHUSDT"]
    dave = data.json("orders", "--account", "dave")
    assert [(d["order_id"], d["status"], d["remaining"], d["price"]) for d in dave] == [
        (5, "open", "0.1000", "90.00")
    ]

    text = data.ok("orders", "--account", "carol").splitlines()
    assert text[0].split()[:8] == ["order", "symbol", "side", "price", "qty", "filled", "open", "status"]
    assert text[1].split()[:8] == ["4", "BTCUSDT", "buy", "100.00", "0.3000", "0.2000", "0.1000", "open"]
    assert data.ok("orders", "--account", "nobody").strip() == "no orders of nobody"


def test_fills_of_an_account(data: Data) -> None:
    alice = data.json("fills", "--account", "alice")
    assert [(d["seq"], d["order_id"], d["side"], d["price"], d["qty"], d["liquidity"], d["trade_id"])
            for d in alice] == [(2, 1, "sell", "100.00", "1.0000", "maker", 1),
                                (6, 1, "sell", "100.00", "0.2000", "maker", 2)]  # fmt: skip
    assert alice[0]["time"].startswith("2023-11-14T22:13:20.000000002")
    bob = data.json("fills", "--account", "bob", "--symbol", "BTCUSDT")
    got = [(d["order_id"], d["side"], d["liquidity"], d["qty"]) for d in bob]
    assert got == [(2, "buy", "taker", "1.0000")]
    text = data.ok("fills", "--account", "carol").splitlines()
    assert text[0].split() == ["time", "symbol", "order", "side", "price", "qty", "liquidity", "trade", "seq"]
    assert text[1].split()[1:] == ["BTCUSDT", "4", "buy", "100.00", "0.2000", "taker", "2", "6"]
    assert data.json("fills", "--account", "dave") == []


def test_order_history_tells_the_whole_life(data: Data) -> None:
    doc = data.json("order-history", "1", "--symbol", "BTCUSDT")
    assert (doc["status"], doc["account"], doc["filled"]) == ("filled", "alice", "1.2000")
    assert [(e["seq"], e["event"]) for e in doc["events"]] == [
        (1, "accepted"),
        (2, "fill"),
        (3, "amended"),
        (4, "rejected"),
        (6, "fill"),
        (6, "filled"),
    ]
    assert doc["events"][2]["qty"] == "1.2000" and doc["events"][2]["priority_kept"] is True
    assert doc["events"][3]["reason"] == "NOT_ORDER_OWNER" and doc["events"][3]["account"] == "bob"

    text = data.ok("order-history", "3", "--symbol", "BTCUSDT").splitlines()
    assert text[0].startswith("BTCUSDT order 3  alice sell coid=a2: cancelled")
    assert "accepted" in text[2] and "sell 0.5000 @ 105.50 limit gtc coid=a2" in text[2]
    assert "cancelled" in text[3] and "user, 0.5000 cancelled" in text[3]
    missing = data.run("order-history", "99", "--symbol", "BTCUSDT")
    assert missing.exit_code == 1 and "has no order 99" in missing.output


def test_a_lookup_reads_only_the_records_the_index_points_at(
    data: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HistoryIndex.in_data_dir(data.data_dir) as index:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            with Journal(journal_path(data.data_dir / "journal", symbol), readonly=True) as journal:
                assert catch_up(index, journal, symbol) > 0
        assert index.cursor("BTCUSDT")[0] == BTC_RECORDS
        assert [oid for _s, oid, _seq in index.account_orders("alice", "BTCUSDT")] == [1, 3]
        wanted = sorted({*index.order_seqs("BTCUSDT", 1), *index.order_seqs("BTCUSDT", 3)})
    assert wanted == [1, 2, 3, 4, 5, 6, 7]  # alice's two orders; not seq 8 (dave)

    scanned: list[int] = []
    got: list[int] = []
    real_read, real_get = Journal.read, Journal.get

    def read(self: Journal, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Record]:
        for record in real_read(self, from_seq, to_seq):
            scanned.append(record.seq)
            yield record

    def get(self: Journal, seq: int) -> Record | None:
        got.append(seq)
        return real_get(self, seq)

    monkeypatch.setattr(Journal, "read", read)
    monkeypatch.setattr(Journal, "get", get)
    data.json("orders", "--account", "alice", "--symbol", "BTCUSDT")
    assert scanned == []  # nothing to catch up: no journal scan
    # The records of alice's orders, each once, plus the cursor's record (the fingerprint check).
    assert sorted(got) == sorted([*wanted, BTC_RECORDS])


def test_a_deleted_index_is_rebuilt_with_the_same_answers(data: Data) -> None:
    queries = [
        ("orders", "--account", "alice"),
        ("orders", "--account", "bob"),
        ("fills", "--account", "carol"),
        ("order-history", "1", "--symbol", "BTCUSDT"),
    ]
    before = [data.ok(*q) for q in queries] + [data.ok(*q, "--json") for q in queries]
    path = history_path(data.data_dir)
    assert path.is_file()
    path.unlink()
    Path(f"{path}-lock").unlink(missing_ok=True)
    assert [data.ok(*q) for q in queries] + [data.ok(*q, "--json") for q in queries] == before
    assert path.is_file()


def test_new_records_are_indexed_on_the_next_command(data: Data) -> None:
    assert [d["status"] for d in data.json("orders", "--account", "dave")] == ["open"]
    config = load(data.config_path)
    engine = Engine(config.instrument("BTCUSDT").spec())
    with Journal(journal_path(config.journal_dir(), "BTCUSDT")) as journal:
        for record in journal.read():
            engine.process(record.command)
        cancel = Cancel(BTC_RECORDS + 1, T0 + 50, "dave", order_id=5)
        journal.append([Record(cancel.seq, cancel.ts, cancel, engine.process(cancel))])
    assert [d["status"] for d in data.json("orders", "--account", "dave")] == ["cancelled"]


# --- the daemon's snapshotter keeps it current ------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("history-daemon"))
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            assert d.stop() == 0, d.log()


def test_the_snapshotter_keeps_the_index_current(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as alice, Client(daemon.endpoint, timeout=10) as bob:
        alice.logon("alice")
        bob.logon("bob")
        alice.new_order("BTCUSDT", "sell", "1.5", "100.00", client_order_id="a1")
        bob.new_order("BTCUSDT", "buy", "1.0", "101.00", client_order_id="b1")
        alice.new_order("BTCUSDT", "sell", "0.5", "105.50", client_order_id="a2")
    path = history_path(daemon.data_dir)
    with Journal(journal_path(daemon.data_dir / "journal", "BTCUSDT"), readonly=True) as journal:
        last = journal.last_seq()
    assert last == 3
    deadline = time.monotonic() + 5
    cursor = 0
    while time.monotonic() < deadline:
        if path.is_file():
            with HistoryIndex(path) as index:
                cursor = index.cursor("BTCUSDT")[0]
                orders = index.account_orders("alice", "BTCUSDT")
            if cursor == last:
                break
        time.sleep(0.1)
    assert cursor == last, daemon.log()
    assert [oid for _s, oid, _seq in orders] == [1, 3]
