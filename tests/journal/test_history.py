"""journal/history.py: the order-history index's writes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from engine import Engine, Instrument
from engine.messages import Cancel, NewOrder, Side, TimeInForce
from journal import Journal
from journal.history import Entries, HistoryIndex, Pending, follow
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


def _trading(n: int) -> list[Record]:
    """`n` records of two accounts: resting orders, crossing IOCs that fill them, cancels:
    every kind of entry the index holds."""
    engine = Engine(Instrument("BTC"))
    records = []
    for seq in range(1, n + 1):
        account = "alice" if seq % 2 else "bob"
        if seq % 7 == 0:
            command: NewOrder | Cancel = Cancel(seq, seq, "alice", seq - 3, "")
        elif seq % 5 == 0:
            side, price = (Side.BUY, 200) if seq % 2 else (Side.SELL, 1)
            command = NewOrder(seq, seq, account, f"x{seq}", side, 3, price, tif=TimeInForce.IOC)
        else:
            side, price = (Side.BUY, 100 - seq % 4) if seq % 2 else (Side.SELL, 101 + seq % 4)
            command = NewOrder(seq, seq, account, f"c{seq}", side, 2, price)
        records.append(Record(seq, seq, command, engine.process(command)))
    return records


def _contents(index: HistoryIndex) -> dict[str, list[tuple[bytes, bytes]]]:
    with index.read_txn() as txn:
        return {name: list(txn.cursor(db)) for name, db in
                [("by_account", index.by_account), ("by_order", index.by_order), ("fills", index.fills),
                 ("cursor", index.cursors)]}  # fmt: skip


def test_pending_records_go_in_as_their_entries_built_on_arrival(tmp_path: Path) -> None:
    """`Pending` builds each record's entries as it is added; `follow` writes them in one
    transaction, and the index is what indexing the records themselves makes."""
    records = _trading(60)
    assert any(r.command.__class__ is Cancel for r in records)
    with Journal(tmp_path / "j.lmdb") as journal:
        journal.append(records)
        with HistoryIndex(tmp_path / "reference.lmdb") as reference:
            assert reference.write("BTC", records[:25]) == 25
            assert reference.write("BTC", records[25:]) == 35
            expected = _contents(reference)
        assert expected["fills"] and expected["by_order"] and expected["by_account"]
        with HistoryIndex(tmp_path / "history.lmdb") as index:
            for part in (records[:25], records[25:]):
                pending = Pending("BTC")
                for record in part:
                    pending.add(record)
                assert len(pending) == len(part)
                assert follow(index, journal, pending, 1_000) == len(part)
            assert _contents(index) == expected


def test_entries_built_beforehand_are_used_only_if_no_record_is_skipped(tmp_path: Path) -> None:
    """Records another writer indexed meanwhile (a CLI command catching up) are skipped; the
    entries built beforehand cover all of them, so they are then built again from the rest."""
    records = _trading(20)
    marked = Entries()
    marked.fills.append(b"mark")  # an entry no record makes: shows whether these were used
    with HistoryIndex(tmp_path / "history.lmdb") as index:
        assert index.write("BTC", records[:5]) == 5  # the other writer
        assert index.write("BTC", records[:10], entries=marked) == 5
        assert b"mark" not in dict(_contents(index)["fills"])
        assert index.write("BTC", records[10:], entries=marked) == 10
        assert b"mark" in dict(_contents(index)["fills"])
