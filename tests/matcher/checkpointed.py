"""A journal and a checkpoint store written directly (an Engine + Journal.append, no
processes), for the recovery and `clob snapshot` / `clob replay` tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lmdb

from engine.engine import Engine
from engine.instrument import Instrument
from engine.messages import Amend, Cancel, Command, NewOrder, Side
from journal import Journal, Record
from journal.checkpoints import CheckpointStore, Snapshot, new_snapshot

TS0 = 1_700_000_000_000_000_000
SPEC = Instrument("BTCUSDT", price_decimals=2, qty_decimals=4)


def command(seq: int) -> Command:
    """A deterministic flow around 100.00 with trades, amends and cancels."""
    ts = TS0 + seq * 1000
    account = "alice" if seq % 3 else "bob"
    if seq % 11 == 0:
        return Cancel(seq, ts, account, order_id=seq // 2)
    if seq % 13 == 0:
        return Amend(seq, ts, account, order_id=seq // 3, qty=5_000)
    side = Side.BUY if (seq * 7) % 5 < 2 else Side.SELL
    price = 10_000 + (seq * 13) % 21 - 10
    return NewOrder(seq, ts, account, f"o{seq}", side, 10_000 * (1 + seq % 4), price)


def build(
    journal_path: Path,
    checkpoints_path: Path | None,
    records: int,
    checkpoint_at: Iterable[int] = (),
    spec: Instrument = SPEC,
) -> tuple[dict[int, str], list[Snapshot]]:
    """Write `records` records; a checkpoint after each seq in `checkpoint_at`.

    Returns the engine's state hash after every seq (0 = empty) and the checkpoints written.
    """
    engine = Engine(spec)
    hashes = {0: engine.state_hash()}
    at = set(checkpoint_at)
    snapshots: list[Snapshot] = []
    store = CheckpointStore(checkpoints_path) if checkpoints_path is not None else None
    try:
        with Journal(journal_path) as journal:
            batch: list[Record] = []
            for seq in range(1, records + 1):
                cmd = command(seq)
                batch.append(Record(seq, cmd.ts, cmd, engine.process(cmd)))
                hashes[seq] = engine.state_hash()
                if seq in at:
                    journal.append(batch)
                    batch = []
                    snap = new_snapshot(spec.symbol, seq, TS0 + seq, engine.checkpoint(), hashes[seq])
                    snapshots.append(snap)
                    if store is not None:
                        store.put(snap)
            if batch:
                journal.append(batch)
    finally:
        if store is not None:
            store.close()
    return hashes, snapshots


def corrupt(checkpoints_path: Path, symbol: str, seq: int) -> None:
    """Flip a byte inside the stored value of `symbol`'s checkpoint at `seq`."""
    env = lmdb.open(str(checkpoints_path), subdir=False, max_dbs=2)
    try:
        db = env.open_db(b"checkpoints")
        with env.begin(db=db, write=True) as txn:
            key = symbol.encode() + b"\x00" + seq.to_bytes(8, "big")
            value = bytearray(txn.get(key))
            value[len(value) // 2] ^= 0xFF
            txn.put(key, bytes(value))
    finally:
        env.close()


def put(checkpoints_path: Path, snapshot: Snapshot) -> None:
    with CheckpointStore(checkpoints_path) as store:
        store.put(snapshot)
