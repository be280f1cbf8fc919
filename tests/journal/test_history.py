"""journal/history.py: the order-history index's writes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from engine import Engine, Instrument
from engine.messages import NewOrder, Side
from journal.history import HistoryIndex
from journal.record import Record


def _records(n: int) -> list[Record]:
    engine = Engine(Instrument("BTC"))
    commands = [NewOrder(i + 1, i, "alice", f"c{i}", Side.BUY, 1, 100 + i) for i in range(n)]
    return [Record(c.seq, c.ts, c, engine.process(c)) for c in commands]


def test_every_commit_of_the_index_runs_inside_committing(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def committing() -> Iterator[None]:
        before = index.cursor("BTC")[0]  # not written yet: the commit is what comes next
        yield
        seen.append((before, index.cursor("BTC")[0]))

    records = _records(5)
    with HistoryIndex(tmp_path / "history.lmdb", committing=committing) as index:
        assert index.write("BTC", records[:3]) == 3
        assert index.write("BTC", records[3:]) == 2
        index.reset("BTC")
        assert seen == [(0, 3), (3, 5), (5, 0)]
        assert index.account_orders("alice") == []
