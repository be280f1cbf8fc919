"""The checkpoint store: newest-at-or-before lookups, damage skipped for an older one."""

from __future__ import annotations

from pathlib import Path

import lmdb
import msgspec
import pytest

from engine import Engine, Instrument
from engine.messages import NewOrder, Side
from engine.stepwise_checkpoint import encode_steps, run_to_end
from journal.checkpoints import (
    PART_BYTES,
    STATE_IN_PIECES,
    CheckpointStore,
    CorruptSnapshot,
    encode,
    new_snapshot,
)


def _snapshot(symbol: str, seq: int, orders: int):
    engine = Engine(Instrument(symbol))
    for i in range(orders):
        engine.process(NewOrder(i + 1, i, "a", f"c{i}", Side.BUY, 1, 100 + i))
    return new_snapshot(symbol, seq, 0, engine.checkpoint(), engine.state_hash())


def test_newest_at_or_before_a_sequence_per_symbol(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        for seq in (10, 20, 30):
            store.put(_snapshot("BTC", seq, seq // 10))
        store.put(_snapshot("ETH", 25, 1))
        assert store.newest("BTC").seq == 30
        assert store.newest("BTC", at_most_seq=29).seq == 20
        assert store.newest("BTC", at_most_seq=20).seq == 20
        assert store.newest("BTC", at_most_seq=9) is None
        assert store.newest("ETH").seq == 25 and store.newest("XRP") is None
        assert [i.seq for i in store.infos("BTC")] == [10, 20, 30]
        wanted = store.infos("ETH")[0]
        assert store.by_id(wanted.snapshot_id).seq == 25 and wanted.resting_orders == 1


def test_a_damaged_checkpoint_is_skipped_for_the_next_older(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    with CheckpointStore(path) as store:
        for seq in (10, 20):
            store.put(_snapshot("BTC", seq, 2))
    env = lmdb.open(str(path), subdir=False, max_dbs=2)
    db = env.open_db(b"checkpoints")
    with env.begin(db=db, write=True) as txn:
        key = next(k for k, _ in txn.cursor() if k.endswith((20).to_bytes(8, "big")))
        value = bytearray(txn.get(key))
        value[-3] ^= 0xFF
        txn.put(key, bytes(value))
    env.close()
    seen: list[CorruptSnapshot] = []
    with CheckpointStore(path, readonly=True) as store:
        newest = store.newest("BTC", on_corrupt=seen.append)
    assert newest is not None and newest.seq == 10
    assert [(e.symbol, e.seq) for e in seen] == [("BTC", 20)]
    restored = Engine(Instrument("BTC"))
    restored.restore(newest.state)
    assert restored.state_hash() == newest.state_hash


def test_a_state_encoded_in_steps_is_stored_as_the_same_checkpoint(tmp_path: Path) -> None:
    engine = Engine(Instrument("BTC"))
    for i in range(40):
        side, price = (Side.BUY, 100 - i) if i % 2 else (Side.SELL, 200 + i)
        engine.process(NewOrder(i + 1, i, "a", f"c{i}", side, 1 + i, price))
    encoded = run_to_end(encode_steps(engine, 3))
    stepwise = new_snapshot("BTC", 40, 0, msgspec.Raw(encoded.state), encoded.state_hash)
    one_shot = msgspec.structs.replace(stepwise, state=engine.checkpoint())
    assert encode(stepwise) == encode(one_shot)
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(stepwise)
        stored = store.newest("BTC")
    assert stored == one_shot and stored.state.bids and stored.state.asks


def test_a_big_checkpoint_is_stored_in_synced_parts_and_read_back_whole(tmp_path: Path) -> None:
    big = _snapshot("BTC", 30, 40_000)
    raw = encode(big)
    parts = -(-len(raw) // PART_BYTES)
    assert parts >= 3  # else this test would not cross a part boundary
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(_snapshot("BTC", 10, 3))
        steps = store.put_steps(big)
        pauses = 0
        while True:
            try:
                next(steps)
            except StopIteration as done:
                assert done.value == len(raw)
                break
            pauses += 1
            assert store.newest("BTC").seq == 10  # not there until its first part is
        assert pauses >= parts - 1  # at least between every two parts
        assert store.newest("BTC") == big and store.by_id(big.snapshot_id) == big
        assert [i.size_bytes for i in store.infos("BTC")][-1] == len(raw)
        # Written again at the same key (a retried checkpoint), shorter: no stale parts.
        small = msgspec.structs.replace(_snapshot("BTC", 30, 2), snapshot_id=big.snapshot_id)
        store.put(small)
        assert store.newest("BTC") == small


def test_a_checkpoint_cut_short_between_parts_is_not_there(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    with CheckpointStore(path) as store:
        store.put(_snapshot("BTC", 10, 3))
        steps = store.put_steps(_snapshot("BTC", 20, 40_000))
        next(steps)  # one part synced, then the "crash"
    with CheckpointStore(path, readonly=True) as store:
        assert store.newest("BTC").seq == 10 and [i.seq for i in store.infos("BTC")] == [10]


def test_prune_keeps_the_newest_of_one_symbol_and_their_parts_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    with CheckpointStore(path) as store:
        for seq in (10, 20, 30, 40):
            store.put(_snapshot("BTC", seq, 20_000 if seq == 20 else 2))  # seq 20 has parts
        store.put(_snapshot("BTCUSDT", 5, 2))  # a symbol that starts like the other
        assert len(encode(_snapshot("BTC", 20, 20_000))) > PART_BYTES  # so it has a part
        assert store.prune("BTC", 2) == 2
        assert [i.seq for i in store.infos("BTC")] == [30, 40]
        assert [i.seq for i in store.infos("BTCUSDT")] == [5]
        assert store.prune("BTC", 2) == 0 and store.prune("XRP", 2) == 0
    env = lmdb.open(str(path), subdir=False, max_dbs=3, readonly=True)
    try:
        with env.begin(db=env.open_db(b"checkpoint_parts")) as txn:
            assert txn.stat(env.open_db(b"checkpoint_parts"))["entries"] == 0  # seq 20's went too
    finally:
        env.close()


def _stored_size(engine: Engine) -> int:
    return len(encode(new_snapshot("BTC", 1, 0, engine.checkpoint(), engine.state_hash())))


def _sized_engine(size: int) -> tuple[Engine, int]:
    """An engine whose stored checkpoint is `size` bytes, if msgpack's string headers allow:
    resting orders to near the size, then one whose account name pads it to the byte."""
    base = Engine(Instrument("BTC"))
    for i in range(max(0, size - 300) // 26):  # about 25 bytes an order
        base.process(NewOrder(i + 1, i, "a", f"c{i:07}", Side.SELL, 1, 1000 + i))
    state = base.checkpoint()

    def padded(pad: int) -> tuple[Engine, int]:
        engine = Engine(Instrument("BTC"))
        engine.restore(state)
        engine.process(NewOrder(10**9, 0, "b" * pad, "x", Side.BUY, 1, 1))
        return engine, _stored_size(engine)

    pad = 1 + size - padded(1)[1]  # one byte a character, give or take a string header
    for candidate in (pad, pad - 1, pad - 2, pad + 1):
        engine, stored = padded(max(1, candidate))
        if stored == size:
            return engine, stored
    return engine, stored


EDGES = [200, PART_BYTES - 1, PART_BYTES, PART_BYTES + 1, 2 * PART_BYTES, 2 * PART_BYTES + 5]


@pytest.mark.parametrize("target", EDGES)
def test_a_state_in_pieces_is_stored_as_the_one_shot_checkpoint_at_every_part_edge(
    tmp_path: Path, target: int
) -> None:
    engine, size = _sized_engine(target)
    assert size == target  # the edge really is exercised
    encoded = run_to_end(encode_steps(engine, 7))
    pieced = new_snapshot("BTC", 1, 0, STATE_IN_PIECES, encoded.state_hash)
    one_shot = msgspec.structs.replace(pieced, state=engine.checkpoint())
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(_snapshot("BTC", 1, 20_000))  # a longer one at the same key: no stale parts
        steps = store.put_steps(pieced, encoded.pieces)
        pauses = 0
        while True:
            try:
                next(steps)
            except StopIteration as done:
                assert done.value == size
                break
            pauses += 1
        assert pauses == -(-size // PART_BYTES) - 1  # one after every part but the first
        assert store.newest("BTC") == one_shot
        assert [i.size_bytes for i in store.infos("BTC")] == [size]


def test_a_snapshot_in_pieces_cannot_be_encoded_whole() -> None:
    snap = new_snapshot("BTC", 1, 0, STATE_IN_PIECES, "h")
    with pytest.raises(ValueError, match="pieces"):
        encode(snap)


def test_a_snapshot_in_pieces_cannot_be_stored_without_its_pieces(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(_snapshot("BTC", 5, 3))
        with pytest.raises(ValueError, match="pieces"):
            store.put(new_snapshot("BTC", 5, 0, STATE_IN_PIECES, "h"))
        assert store.newest("BTC") is not None  # the good one at that key is still there
