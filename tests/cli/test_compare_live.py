"""`clob replay --compare-live`'s verdict, on a live answer that disagrees with the replay.

The agreeing case runs against a real daemon in tests/e2e/test_admin.py; a daemon whose
book differs from its own journal cannot be made honestly, so the comparison itself is
checked here on a doctored live answer.
"""

from __future__ import annotations

from cli.output import Units
from cli.snapshots import _comparison_lines, compare
from engine.engine import Engine
from engine.instrument import Instrument
from engine.messages import NewOrder, Side
from gateway import admin


def _engine() -> Engine:
    engine = Engine(Instrument("BTCUSDT", price_decimals=0, qty_decimals=0))
    for seq, (side, price, qty) in enumerate([(Side.BUY, 100, 5), (Side.BUY, 99, 2), (Side.SELL, 103, 4)], 1):
        engine.process(NewOrder(seq, seq, "alice", f"c{seq}", side, qty, price))
    return engine


def _live(engine: Engine, **changes: object) -> admin.InstrumentStatus:
    bids, asks = engine.depth(10)
    row = admin.InstrumentStatus("BTCUSDT", 0, 0, True, 0, answered=True, matcher_pid=7, seq=3,
                                 state_hash=engine.state_hash(), bids=bids, asks=asks)  # fmt: skip
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def test_equal_books_are_identical() -> None:
    engine = _engine()
    result = compare(_live(engine), engine, Units(None))
    assert result["identical"] and result["level_differences"] == []
    assert "replay is IDENTICAL to the live book" in _comparison_lines(result)


def test_a_different_live_book_is_reported_level_by_level() -> None:
    engine = _engine()
    live = _live(engine, state_hash="0" * 64, bids=[(100, 5), (98, 1)], asks=[(103, 3)])
    result = compare(live, engine, Units(None))
    assert not result["identical"]
    assert result["level_differences"] == [
        {"side": "bid", "price": "98", "replayed_qty": None, "live_qty": "1"},
        {"side": "bid", "price": "99", "replayed_qty": "2", "live_qty": None},
        {"side": "ask", "price": "103", "replayed_qty": "4", "live_qty": "3"},
    ]
    lines = _comparison_lines(result)
    assert "replay is DIFFERENT from the live book" in lines
    assert "  ask 103: replayed 4, live 3" in lines


def test_same_levels_but_another_hash_still_differs() -> None:
    engine = _engine()
    result = compare(_live(engine, state_hash="f" * 64), engine, Units(None))
    assert not result["identical"] and result["level_differences"] == []
    assert any("the difference is in queue order" in line for line in _comparison_lines(result))
