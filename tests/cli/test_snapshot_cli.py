"""`clob snapshot list|show` and `clob replay` against a journal and checkpoint store written
directly in tmp (an Engine + Journal.append; no daemon)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import snapshots
from cli.main import clob
from daemon.config import load
from engine.engine import Engine
from engine.messages import Trade
from journal import Journal, journal_path
from journal.checkpoints import Snapshot, checkpoints_path
from tests.cli.clob_runner import ClobOn
from tests.matcher.checkpointed import build, command, corrupt
from tests.matcher.harness import SYMBOL, write_config

RECORDS = 400
CHECKPOINTS = (100, 200, 300)


class Data(ClobOn):
    def __init__(self, root: Path) -> None:
        self.config_path = write_config(root, Path(tempfile.gettempdir()))
        config = load(self.config_path)
        self.spec = config.instrument(SYMBOL).spec()
        self.journal = journal_path(config.journal_dir(), SYMBOL)
        self.journal.parent.mkdir(parents=True)
        self.store = checkpoints_path(config.data_path)
        self.hashes, self.snaps = build(self.journal, self.store, RECORDS, CHECKPOINTS, spec=self.spec)



@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data(tmp_path)


def _price(units: int) -> str:
    return str(Decimal(units).scaleb(-2))


def _qty(units: int) -> str:
    return str(Decimal(units).scaleb(-4))


def _engine_at(data: Data, seq: int) -> Engine:
    engine = Engine(data.spec)
    for s in range(1, seq + 1):
        engine.process(command(s))
    return engine


def _trades(data: Data, after: int, upto: int) -> list[Trade]:
    with Journal(data.journal, readonly=True) as journal:
        return [e for r in journal.read(after + 1, upto) for e in r.events if isinstance(e, Trade)]


def test_list_shows_every_intact_checkpoint(data: Data) -> None:
    docs = data.json("snapshot", "list")
    assert [(d["snapshot_id"], d["symbol"], d["seq"]) for d in docs] == [
        (s.snapshot_id, SYMBOL, s.seq) for s in data.snaps
    ]
    for doc, snap in zip(docs, data.snaps, strict=True):
        assert doc["resting_orders"] == len(snap.state.bids) + len(snap.state.asks) > 0
        assert doc["taken_at"].startswith("2023-11-14T22:13:20.") and doc["taken_at"].endswith("Z")
        assert doc["size_bytes"] > 0 and doc["state_hash"] == snap.state_hash
    text = data.ok("snapshot", "list", SYMBOL)
    lines = text.splitlines()
    assert len(lines) == 1 + len(CHECKPOINTS)
    for line, snap in zip(lines[1:], data.snaps, strict=True):
        fields = line.split()
        assert fields[:3] == [snap.snapshot_id, SYMBOL, str(snap.seq)]
        assert fields[4] == str(len(snap.state.bids) + len(snap.state.asks))
    assert data.json("snapshot", "list", "ETHUSDT") == []
    corrupt(data.store, SYMBOL, 200)
    assert [d["seq"] for d in data.json("snapshot", "list")] == [100, 300]


def test_list_without_a_store(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, Path(tempfile.gettempdir()))
    result = CliRunner().invoke(clob, ["snapshot", "list", "--config", str(config_path)])
    assert result.exit_code == 0 and "no checkpoints" in result.stdout


def test_show_gives_the_levels_in_decimals(data: Data) -> None:
    snap = data.snaps[1]
    doc = data.json("snapshot", "show", snap.snapshot_id, "--depth", "3")
    bids, asks = _engine_at(data, snap.seq).depth(3)
    assert [level[:2] for level in doc["bids"]] == [[_price(p), _qty(q)] for p, q in bids]
    assert [level[:2] for level in doc["asks"]] == [[_price(p), _qty(q)] for p, q in asks]
    assert len(doc["bids"]) == 3 and "." in doc["bids"][0][0]
    assert doc["seq"] == 200 and doc["state_hash"] == data.hashes[200] == snap.state_hash
    assert doc["last_trade_price"] == _price(snap.state.last_trade_price)
    assert doc["resting_orders"] == _engine_at(data, 200).order_count()
    # Orders per level add up to the resting orders when every level is shown.
    full = data.json("snapshot", "show", snap.snapshot_id, "--depth", "1000")
    assert sum(level[2] for level in full["bids"] + full["asks"]) == doc["resting_orders"]
    text = data.ok("snapshot", "show", snap.snapshot_id, "--depth", "3")
    assert snap.state_hash in text and "journal seq       200" in text
    best_bid = f"bid  {_price(bids[0][0])}"
    assert any(line.startswith(best_bid) and line.endswith(_qty(bids[0][1])) for line in text.splitlines())


def test_show_an_unknown_id_fails(data: Data) -> None:
    result = data.run("snapshot", "show", "no-such-id")
    assert result.exit_code == 1 and "no intact checkpoint" in result.output


def _replay(data: Data, *args: str) -> Any:
    return data.json("replay", SYMBOL, *args)


def test_two_replays_of_the_same_range_are_bit_identical(data: Data) -> None:
    snap = data.snaps[0]
    first = _replay(data, "--snapshot", snap.snapshot_id, "--to-seq", "350")
    second = _replay(data, "--snapshot", snap.snapshot_id, "--to-seq", "350")
    assert first == second
    assert first["state_hash"] == data.hashes[350]
    assert (first["from_seq"], first["last_seq"], first["records"]) == (100, 350, 250)
    trades = _trades(data, 100, 350)
    assert trades and first["trade_count"] == len(trades)
    volume = sum(t.qty for t in trades)
    assert first["traded_volume"] == _qty(volume)
    vwap = (Decimal(sum(t.price * t.qty for t in trades)) / volume).scaleb(-2)
    assert Decimal(first["vwap"]) == vwap.quantize(Decimal("1e-8"))
    # The text form says the same.
    text = data.ok("replay", SYMBOL, "--snapshot", snap.snapshot_id, "--to-seq", "350")
    assert f"state hash        {data.hashes[350]}" in text
    assert f"vwap              {first['vwap']}" in text and f"trade count       {len(trades)}" in text


def test_replay_stops_at_to_seq(data: Data) -> None:
    for to_seq in (150, 201, 300):
        doc = _replay(data, "--snapshot", data.snaps[0].snapshot_id, "--to-seq", str(to_seq))
        engine = _engine_at(data, to_seq)
        assert doc["last_seq"] == to_seq and doc["state_hash"] == engine.state_hash()
        assert doc["resting_orders"] == engine.order_count()
        bids, asks = engine.depth(5)
        assert [lv[:2] for lv in doc["bids"]] == [[_price(p), _qty(q)] for p, q in bids]
        assert [lv[:2] for lv in doc["asks"]] == [[_price(p), _qty(q)] for p, q in asks]


def test_replay_from_a_checkpoint_equals_replay_from_scratch(data: Data) -> None:
    for end in ("300", "400"):
        scratch = _replay(data, "--to-seq", end)
        none = _replay(data, "--snapshot", "none", "--to-seq", end)
        assert scratch == none and scratch["from_snapshot"] is None and scratch["records"] == int(end)
        for snap in data.snaps:
            fast = _replay(data, "--snapshot", snap.snapshot_id, "--to-seq", end)
            assert fast["state_hash"] == scratch["state_hash"] == data.hashes[int(end)]
            assert fast["bids"] == scratch["bids"] and fast["asks"] == scratch["asks"]
            assert fast["records"] == int(end) - snap.seq
    # Without --to-seq: to the end of the journal.
    assert _replay(data, "--snapshot", data.snaps[2].snapshot_id)["last_seq"] == RECORDS


def test_replay_writes_nothing(data: Data) -> None:
    def digest() -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in (data.journal, data.store)]

    before = digest()
    _replay(data, "--snapshot", data.snaps[1].snapshot_id)
    _replay(data)
    assert digest() == before


def test_replay_refuses_what_it_cannot_do(data: Data) -> None:
    snap: Snapshot = data.snaps[1]
    result = data.run("replay", SYMBOL, "--snapshot", snap.snapshot_id, "--to-seq", "150")
    assert result.exit_code == 2 and "before the checkpoint" in result.output
    result = data.run("replay", SYMBOL, "--to-seq", "401")
    assert result.exit_code == 2 and "ends at seq 400" in result.output
    result = data.run("replay", "ETHUSDT")
    assert result.exit_code == 1 and "not in the config" in result.output
    result = data.run("replay", SYMBOL, "--snapshot", "nope")
    assert result.exit_code == 1 and "no intact checkpoint" in result.output


def test_long_replays_show_progress_on_stderr(data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "PROGRESS_MIN", 10)
    result = data.run("replay", SYMBOL, "--json")
    assert result.exit_code == 0, result.output
    assert "replaying BTCUSDT" in result.stderr
    assert json.loads(result.stdout)["state_hash"] == data.hashes[RECORDS]
