"""The checkpoint store: newest-at-or-before lookups, damage skipped for an older one, each
piece stored once and only the new ones written."""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import lmdb
import msgspec
import pytest

from engine import Engine, Instrument
from engine.messages import Cancel, NewOrder, Side
from engine.stepwise_checkpoint import LevelEncodings, encode_steps, run_to_end
from journal import checkpoints
from journal.checkpoints import (
    CHUNK_BYTES,
    GROUP_BITS,
    GROUP_BYTES,
    INLINE_BYTES,
    PART_BYTES,
    STATE_IN_PIECES,
    CheckpointStore,
    CorruptSnapshot,
    Stored,
    _batches,
    _stored_as,
    _stored_pieces,
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


def _drive(
    steps: Generator[None, None, Stored], between: Callable[[], None] = lambda: None
) -> tuple[Stored, int]:
    """Run a put to its end, calling `between` at every pause; what it stored, and the pauses."""
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, pauses
        between()
        pauses += 1


def test_a_big_checkpoint_is_stored_in_synced_steps_and_read_back_whole(tmp_path: Path) -> None:
    big = _snapshot("BTC", 30, 40_000)
    raw = encode(big)
    assert len(raw) > 3 * PART_BYTES  # else this test would not cross a transaction's size
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(_snapshot("BTC", 10, 3))

        def not_there_yet() -> None:
            assert store.newest("BTC").seq == 10  # not there until its last step

        stored, pauses = _drive(store.put_steps(big), not_there_yet)
        assert stored.size == len(raw) and stored.written > len(raw)  # every chunk is new
        assert pauses >= len(raw) // PART_BYTES  # a pause after every transaction of chunks
        assert store.newest("BTC") == big and store.by_id(big.snapshot_id) == big
        assert [i.size_bytes for i in store.infos("BTC")][-1] == len(raw)
        # Written again at the same key (a retried checkpoint), shorter: nothing of it stays.
        small = msgspec.structs.replace(_snapshot("BTC", 30, 2), snapshot_id=big.snapshot_id)
        store.put(small)
        assert store.newest("BTC") == small


def test_a_checkpoint_cut_short_between_steps_is_not_there(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    with CheckpointStore(path) as store:
        store.put(_snapshot("BTC", 10, 3))
        steps = store.put_steps(_snapshot("BTC", 20, 40_000))
        before = _chunk_count(store)
        while _chunk_count(store) == before:
            next(steps)  # until some of its chunks are synced, then the "crash"
    with CheckpointStore(path, readonly=True) as store:
        assert store.newest("BTC").seq == 10 and [i.seq for i in store.infos("BTC")] == [10]


def _chunk_count(store: CheckpointStore) -> int:
    with store._env.begin() as txn:
        return txn.stat(store._chunks)["entries"]


def _book(levels: int, per_level: int) -> Engine:
    engine = Engine(Instrument("BTC"))
    for i in range(levels * per_level):
        engine.process(NewOrder(i + 1, i, "a", f"c{i}", Side.BUY, 1 + i % 7, 1000 - i % levels))
    return engine


def _put_engine(
    store: CheckpointStore,
    engine: Engine,
    seq: int,
    reuse: LevelEncodings,
    keep: int | None = None,
    slack: int = 0,
) -> Stored:
    encoded = run_to_end(encode_steps(engine, reuse=reuse))
    snap = new_snapshot("BTC", seq, 0, STATE_IN_PIECES, encoded.state_hash)
    stored, _ = _drive(store.put_steps(snap, encoded.pieces, encoded.digests, keep=keep, slack=slack))
    return stored


# A prune on its own (`prune`), or in the put's last transaction (`put_steps(keep=...)`, as
# the snapshotter does): the same checkpoints and chunks deleted, the same counts kept.
PRUNES = ["after the put", "in the put"]


def _put_and_prune(
    store: CheckpointStore, engine: Engine, seq: int, reuse: LevelEncodings, keep: int, how: str
) -> int:
    """A checkpoint of `engine`, then all but the newest `keep` deleted; how many were."""
    if how == "in the put":
        return _put_engine(store, engine, seq, reuse, keep=keep).pruned
    _put_engine(store, engine, seq, reuse)
    return store.prune("BTC", keep)


def test_a_checkpoint_writes_only_the_pieces_the_store_does_not_hold(tmp_path: Path) -> None:
    engine = _book(levels=40, per_level=100)
    reuse = LevelEncodings()
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        first = _put_engine(store, engine, 1, reuse)
        for i in range(10):  # ten orders at one level: one level changed of forty
            engine.process(NewOrder(10_000 + i, 0, "b", f"d{i}", Side.BUY, 1, 999))
        second = _put_engine(store, engine, 2, reuse)
        assert first.written > first.size and second.size > first.size
        assert second.written < second.size / 10
        # The same book again, encoded afresh (a snapshotter that restarted): every piece of
        # it is one the store holds, or inline.
        again = _put_engine(store, engine, 3, LevelEncodings())
        assert again.written < again.size / 5
        one_shot = engine.checkpoint()
        for seq in (2, 3):
            newest = store.newest("BTC", seq)
            assert newest is not None and newest.state == one_shot
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:  # another process, later
        reopened = _put_engine(store, engine, 4, LevelEncodings())
        assert reopened.written < reopened.size / 5  # it finds what the store holds
        assert [i.seq for i in store.infos("BTC")] == [1, 2, 3, 4]


def test_prune_keeps_the_newest_of_one_symbol_and_the_chunks_they_use(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    engine = _book(levels=10, per_level=200)
    reuse = LevelEncodings()
    with CheckpointStore(path) as store:
        store.put(_snapshot("BTC", 10, 20_000))  # chunks no later checkpoint uses
        _put_engine(store, engine, 20, reuse)
        steps = store.put_steps(_snapshot("BTC", 25, 30_000))
        before = _chunk_count(store)
        while _chunk_count(store) == before:
            next(steps)  # a checkpoint cut short: its chunks are used by none
        for seq in (30, 40):
            engine.process(NewOrder(10_000 + seq, 0, "b", f"d{seq}", Side.BUY, 1, 1000))
            _put_engine(store, engine, seq, reuse)
        store.put(_snapshot("BTCUSDT", 5, 20_000))  # a symbol that starts like the other
        others = _chunk_count(store)
        assert store.prune("BTC", 2) == 2
        assert [i.seq for i in store.infos("BTC")] == [30, 40]
        assert [i.seq for i in store.infos("BTCUSDT")] == [5]
        assert store.newest("BTC").state == engine.checkpoint()
        for _ in range(10):  # nothing more to delete but what the first left (PART_BYTES a prune)
            assert store.prune("BTC", 2) == 0 and store.prune("XRP", 2) == 0
        left = _chunk_count(store)
        assert left < others
        assert_every_chunk_is_used(store)


def test_a_put_with_slack_prunes_only_once_more_than_slack_are_beyond_keep(tmp_path: Path) -> None:
    engine = _book(levels=10, per_level=50)
    reuse = LevelEncodings()
    pruned, stored = [], []
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        for seq in range(1, 11):
            engine.process(NewOrder(10_000 + seq, 0, "b", f"d{seq}", Side.BUY, 1, 1000 - seq % 10))
            pruned.append(_put_engine(store, engine, seq, reuse, keep=3, slack=2).pruned)
            stored.append(len(store.infos("BTC")))
        assert pruned == [0, 0, 0, 0, 0, 3, 0, 0, 3, 0]  # three at a time, once three are beyond 3
        assert stored == [1, 2, 3, 4, 5, 3, 4, 5, 3, 4]
        assert [i.seq for i in store.infos("BTC")] == [7, 8, 9, 10]
        assert store.newest("BTC").state == engine.checkpoint()
        assert_every_chunk_is_used(store)


def test_the_store_counts_its_commits_and_their_time(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(_snapshot("BTC", 10, 2_000))
        assert store.commits == 1 and store.commit_seconds > 0
        store.put(_snapshot("BTC", 20, 2_000))
        assert store.prune("BTC", 1) == 1
        assert store.commits == 3


def assert_every_chunk_is_used(store: CheckpointStore) -> None:
    """Every chunk stored is used by a checkpoint, and every one used is there."""
    with store._env.begin() as txn:
        used = set()
        for key, value in txn.cursor(db=store._db):
            pieces = _stored_pieces(value)
            assert pieces is not None
            used |= {bytes(key)[:-8] + chunk_id.to_bytes(8, "big") for chunk_id in pieces.chunks}
        stored = {bytes(k) for k, _ in txn.cursor(db=store._chunks)}
    assert stored == used


@pytest.mark.parametrize("how", PRUNES)
def test_prunes_after_the_first_count_the_chunks_of_what_they_delete(tmp_path: Path, how: str) -> None:
    path = tmp_path / "checkpoints.lmdb"
    engine = _book(levels=10, per_level=200)
    reuse = LevelEncodings()
    with CheckpointStore(path) as store:
        full_counts: list[int] = []  # how many kept checkpoints each full count read
        count_uses = store._count_uses

        def counting(txn: lmdb.Transaction, kept: list[bytes]) -> Generator[None, None, Counter[int]]:
            full_counts.append(len(kept))
            return (yield from count_uses(txn, kept))

        store._count_uses = counting  # type: ignore[method-assign]
        for n in range(1, 13):
            seq = engine.last_seq
            for i in range(1, 40, 3):  # cancels across the book: runs change, old chunks fall out of use
                engine.process(Cancel(seq + i, 0, "a", (n * 97 + i * 31) % 2_000 + 1))
                engine.process(NewOrder(seq + i + 1, 0, "b", f"n{n}-{i}", Side.BUY, 2, 1000 - i % 10))
            if n == 7:  # stored twice, the second encoded afresh: what it replaced is counted no more
                _put_engine(store, engine, n * 10, reuse)
            encodings = LevelEncodings() if n == 7 else reuse
            assert _put_and_prune(store, engine, n * 10, encodings, 3, how) == (1 if n > 3 else 0)
            assert_every_chunk_is_used(store)
            assert store.newest("BTC").state == engine.checkpoint()
        assert full_counts == [3, 3]  # the first prune, and the one after the replacement
        with store._env.begin() as txn:  # the counts kept are the ones a full count finds
            lists = [_stored_pieces(value) for _, value in txn.cursor(db=store._db)]
        assert store._uses[b"BTC\x00"] == Counter(i for pieces in lists if pieces for i in pieces.chunks)


def _chunk_bytes(store: CheckpointStore) -> int:
    """Bytes of chunks stored, as a reader sees them."""
    with store._env.begin(buffers=True) as txn:
        return sum(len(value) for _, value in txn.cursor(db=store._chunks))


def _orphaning_store(store: CheckpointStore, engine: Engine) -> None:
    """A store whose oldest checkpoint, written whole, holds about 1 MiB of chunks that no
    later one uses (the snapshotter stores its own checkpoints in pieces)."""
    store.put(_snapshot("BTC", 10, 60_000))
    reuse = LevelEncodings()
    for seq in (20, 30):
        _put_engine(store, engine, seq, reuse)


def _prune_until_clean(store: CheckpointStore, engine: Engine, seq: int, how: str = PRUNES[0]) -> list[int]:
    """Checkpoints of `engine` (no new chunks) from `seq` on, each with a prune that keeps
    2, until every chunk stored is listed; the bytes of chunks each prune deleted."""
    deleted = []
    for n in range(40):
        before = _chunk_bytes(store)
        assert _put_and_prune(store, engine, seq + n, LevelEncodings(), 2, how) >= 1
        deleted.append(before - _chunk_bytes(store))
        try:
            assert_every_chunk_is_used(store)
            return deleted
        except AssertionError:
            continue
    raise AssertionError(f"chunks still unlisted after 40 prunes: {deleted}")


def _chunk_bytes_after_commits(store_path: Path) -> tuple[CheckpointStore, list[int]]:
    """A store at `store_path`, and the bytes of chunks it holds after each of its commits."""
    after: list[int] = []
    opened: list[CheckpointStore] = []

    @contextlib.contextmanager
    def measured() -> Iterator[None]:
        yield
        after.append(_chunk_bytes(opened[0]))

    opened.append(CheckpointStore(store_path, committing=measured))
    return opened[0], after


@pytest.mark.parametrize("how", PRUNES)
def test_many_unlisted_chunks_are_deleted_by_the_next_prune_a_bounded_amount_a_commit(
    tmp_path: Path, how: str
) -> None:
    engine = _book(levels=10, per_level=200)
    store, after = _chunk_bytes_after_commits(tmp_path / "checkpoints.lmdb")
    with store:
        _orphaning_store(store, engine)
        after.clear()
        before = _chunk_bytes(store)
        deleted = _prune_until_clean(store, engine, 40, how)
        # The first prune deletes PART_BYTES and leaves the rest; the next deletes that first.
        assert len(deleted) == 2 and deleted[0] < PART_BYTES + CHUNK_BYTES + 64
        assert sum(deleted) > 3 * PART_BYTES
        per_commit = [a - b for a, b in zip([before, *after], after, strict=False)]
        assert len(per_commit) >= 5 and max(per_commit) < PART_BYTES + CHUNK_BYTES + 64
        assert store.newest("BTC").state == engine.checkpoint()


def test_chunks_left_for_later_prunes_are_found_by_the_next_process(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    engine = _book(levels=10, per_level=200)
    with CheckpointStore(path) as store:
        _orphaning_store(store, engine)
        assert store.prune("BTC", 2) == 1
        with pytest.raises(AssertionError):
            assert_every_chunk_is_used(store)  # some left for the next prune: then a crash
    with CheckpointStore(path) as store:
        assert len(_prune_until_clean(store, engine, 40)) == 2  # a full count, then the rest
        assert store.newest("BTC").state == engine.checkpoint()


@pytest.mark.parametrize("how", PRUNES)
def test_checkpoints_far_apart_leave_no_more_than_one_prune_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Each checkpoint here frees a whole book, several times PART_BYTES (made small so the
    # book can be): what a prune cannot delete must not pile up from one to the next.
    monkeypatch.setattr(checkpoints, "PART_BYTES", 8 * 1024)
    engine = _book(levels=10, per_level=200)
    reuse = LevelEncodings()
    held = []
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        for n in range(1, 13):
            seq = engine.last_seq
            for order_id in range((n - 1) * 2_000 + 1, n * 2_000 + 1):  # every order replaced
                engine.process(Cancel(seq + 1, 0, "a", order_id))
                price = 1000 - order_id % 10
                engine.process(NewOrder(seq + 2, 0, "a", f"c{order_id + 2_000}", Side.BUY, 1 + n % 7, price))
                seq += 2
            assert engine.order_count() == 2_000
            pruned = _put_and_prune(store, engine, n * 10, reuse, 2, how)
            assert pruned == (1 if n > 2 else 0)
            held.append(_chunk_bytes(store))
            assert store.newest("BTC").state == engine.checkpoint()
        book = len(encode(store.newest("BTC")))
        assert book > 4 * checkpoints.PART_BYTES
        # Two kept, and what the last prune freed less what it deleted: never more.
        assert max(held[3:]) < 3.2 * book


def test_a_checkpoint_and_its_prune_are_one_commit(tmp_path: Path) -> None:
    engine = _book(levels=10, per_level=200)
    reuse = LevelEncodings()
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        for seq in (10, 20, 30):
            _put_engine(store, engine, seq, reuse)
        engine.process(NewOrder(50_000, 0, "b", "new", Side.BUY, 1, 1000))  # a new chunk to write
        commits = store._env.info()["last_txnid"]
        stored = _put_engine(store, engine, 40, reuse, keep=2)
        assert store._env.info()["last_txnid"] == commits + 1
        assert stored.pruned == 2 and stored.written > 0
        assert [i.seq for i in store.infos("BTC")] == [30, 40]
        assert store.newest("BTC").state == engine.checkpoint()
        assert_every_chunk_is_used(store)


def test_every_commit_of_the_store_runs_inside_committing(tmp_path: Path) -> None:
    """The snapshotter runs its commits in the foreground (snapshotter/scheduling.py): each
    one, the chunk transactions of a big checkpoint and the last one with its prune."""
    commits: list[int] = []

    @contextlib.contextmanager
    def counted() -> Iterator[None]:
        before = store._env.info()["last_txnid"]
        yield
        commits.append(store._env.info()["last_txnid"] - before)

    engine = _book(levels=10, per_level=200)
    reuse = LevelEncodings()
    with CheckpointStore(tmp_path / "checkpoints.lmdb", committing=counted) as store:
        started = store._env.info()["last_txnid"]
        store.put(_snapshot("BTC", 5, 40_000))  # more than one transaction of chunks
        for seq in (10, 20, 30):
            _put_engine(store, engine, seq, reuse, keep=2)
        store.prune("BTC", 1)
        assert len(commits) > 5 and commits == [1] * len(commits)
        assert store._env.info()["last_txnid"] - started == len(commits)  # none outside it


def test_a_checkpoint_cut_short_in_its_prune_changes_nothing(tmp_path: Path) -> None:
    def store_of_three(path: Path) -> tuple[CheckpointStore, Engine]:
        """Checkpoints at 10, 20 and 30 of a book that changed between them."""
        store, engine, reuse = CheckpointStore(path), _book(levels=10, per_level=200), LevelEncodings()
        for seq in (10, 20, 30):
            engine.process(NewOrder(50_000 + seq, 0, "b", f"n{seq}", Side.BUY, 1, 1000 - seq % 7))
            _put_engine(store, engine, seq, reuse)
        return store, engine

    store, _ = store_of_three(tmp_path / "whole.lmdb")
    with store:
        _, pauses = _drive(store.put_steps(_snapshot("BTC", 40, 3_000), keep=1))
    assert pauses > 3
    for cut in range(pauses):  # the last pauses are inside the transaction that prunes
        store, engine = store_of_three(tmp_path / f"cut{cut}.lmdb")
        with store:
            steps = store.put_steps(_snapshot("BTC", 40, 3_000), keep=1)
            for _ in range(cut + 1):
                next(steps)
            steps.close()  # the "crash": its transaction is aborted
            assert [i.seq for i in store.infos("BTC")] == [10, 20, 30]
            assert store.newest("BTC").state == engine.checkpoint()
            assert_every_chunk_is_used(store)
            assert _put_engine(store, engine, 50, LevelEncodings(), keep=1).pruned == 3
            assert [i.seq for i in store.infos("BTC")] == [50]
            assert_every_chunk_is_used(store)


def test_a_put_between_two_prunes_does_not_list_the_chunks_left_to_delete(tmp_path: Path) -> None:
    engine = _book(levels=10, per_level=200)
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        _orphaning_store(store, engine)
        assert store.prune("BTC", 2) == 1  # seq 10 deleted, its chunks partly: the rest later
        store._ids.clear()  # as a failed write leaves it: what is stored is read again
        store.put(_snapshot("BTC", 40, 60_000))  # seq 10's book again: the same chunks but the first
        assert store.prune("BTC", 3) == 0
        for seq in (50, 60):
            _put_engine(store, engine, seq, LevelEncodings())
            assert store.prune("BTC", 3) == 1
        assert store.newest("BTC", 40).seq == 40  # every chunk it lists is there
        assert [i.seq for i in store.infos("BTC")] == [40, 50, 60]


def test_a_damaged_chunk_fails_every_checkpoint_that_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    engine = _book(levels=10, per_level=200)
    reuse = LevelEncodings()
    with CheckpointStore(path) as store:
        store.put(_snapshot("BTC", 10, 3))  # a different book: shares no chunk
        _put_engine(store, engine, 20, reuse)
        _put_engine(store, engine, 30, reuse)  # the same chunks as seq 20
        with store._env.begin(write=True) as txn:
            ten, twenty = (_stored_pieces(txn.get(b"BTC\x00" + seq.to_bytes(8, "big"), db=store._db))
                           for seq in (10, 20))  # fmt: skip
            assert ten is not None and twenty is not None
            chunk_id = twenty.chunks[-1]  # of the book: the first is the fields around it
            key = b"BTC\x00" + chunk_id.to_bytes(8, "big")
            assert chunk_id not in ten.chunks
            damaged = bytearray(txn.get(key, db=store._chunks))
            damaged[len(damaged) // 2] ^= 0x01
            txn.put(key, bytes(damaged), db=store._chunks)
        seen: list[CorruptSnapshot] = []
        newest = store.newest("BTC", on_corrupt=seen.append)
        assert newest is not None and newest.seq == 10
        assert [(e.seq, e.reason) for e in seen] == [
            (30, f"chunk {chunk_id} is damaged"),
            (20, f"chunk {chunk_id} is damaged"),
        ]
        assert [i.seq for i in store.infos("BTC")] == [10]
        with store._env.begin(write=True) as txn:
            txn.delete(key, db=store._chunks)
        seen.clear()
        assert store.newest("BTC", on_corrupt=seen.append).seq == 10
        assert {e.reason for e in seen} == {f"chunk {chunk_id} is missing"}


def test_a_store_written_before_chunks_is_still_read_and_pruned(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.lmdb"
    old = [_snapshot("BTC", 10, 40_000), _snapshot("BTC", 20, 2)]
    env = lmdb.open(str(path), subdir=False, max_dbs=2, map_size=1 << 26)
    whole_db, parts_db = env.open_db(b"checkpoints"), env.open_db(b"checkpoint_parts")
    with env.begin(write=True) as txn:
        for snap in old:  # as the store wrote them: the value cut at PART_BYTES into parts
            key = b"BTC\x00" + snap.seq.to_bytes(8, "big")
            raw = encode(snap)
            txn.put(key, raw[:PART_BYTES], db=whole_db)
            for number, at in enumerate(range(PART_BYTES, len(raw), PART_BYTES), 1):
                txn.put(key + number.to_bytes(4, "big"), raw[at : at + PART_BYTES], db=parts_db)
    env.close()
    assert len(encode(old[0])) > 2 * PART_BYTES  # so it has parts
    with CheckpointStore(path, readonly=True) as store:
        assert [store.newest("BTC", s.seq) for s in old] == old
        assert [i.size_bytes for i in store.infos("BTC")] == [len(encode(s)) for s in old]
    with CheckpointStore(path) as store:
        store.put(_snapshot("BTC", 30, 20_000))
        assert store.prune("BTC", 2) == 1
        assert [i.seq for i in store.infos("BTC")] == [20, 30]
        with store._env.begin() as txn:
            assert txn.stat(store._parts)["entries"] == 0  # seq 10's parts went with it


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
def test_a_book_of_one_order_levels_is_stored_as_the_one_shot_checkpoint_at_every_size(
    tmp_path: Path, target: int
) -> None:
    # Every level has one order: every piece is short, and stored in groups.
    engine, size = _sized_engine(target)
    assert size == target  # the edge really is exercised
    encoded = run_to_end(encode_steps(engine, 7))
    pieced = new_snapshot("BTC", 1, 0, STATE_IN_PIECES, encoded.state_hash)
    one_shot = msgspec.structs.replace(pieced, state=engine.checkpoint())
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        store.put(_snapshot("BTC", 1, 20_000))  # a longer one at the same key: no stale parts
        stored, _ = _drive(store.put_steps(pieced, encoded.pieces))
        assert stored.size == size
        assert store.newest("BTC") == one_shot
        assert [i.size_bytes for i in store.infos("BTC")] == [size]
        with store._env.begin() as txn:
            value = txn.get(b"BTC\x00" + (1).to_bytes(8, "big"), db=store._db)
        assert len(value) < max(1_000, size / 20)  # the list of groups, not the book inline


def test_pieces_are_stored_whole_cut_or_grouped_by_their_size() -> None:
    mask = (1 << GROUP_BITS) - 1
    short = [bytes([i]) * 10 for i in range(200)]
    grouped = stored_pieces(short)
    assert b"".join(grouped) == b"".join(short) and 1 < len(grouped) < len(short)
    at = 0
    for group in grouped[:-1]:  # each ends after a piece whose CRC32 says so, or when full
        members = short[at : at + len(group) // 10]
        at += len(members)
        assert zlib.crc32(members[-1]) & mask == 0 or len(group) >= GROUP_BYTES
        assert not any(zlib.crc32(m) & mask == 0 for m in members[:-1])
    assert stored_pieces([b"x" * (INLINE_BYTES - 1)]) == [b"x" * (INLINE_BYTES - 1)]
    around = [b"a" * 5, b"x" * INLINE_BYTES, b"b" * 5]  # a long piece ends a group
    assert stored_pieces(around) == around
    assert stored_pieces([b"y" * PART_BYTES]) == [b"y" * PART_BYTES]
    cut = stored_pieces([b"z" * (PART_BYTES + 1)])
    assert [len(c) for c in cut] == [CHUNK_BYTES] * (PART_BYTES // CHUNK_BYTES) + [1]


def stored_pieces(pieces: list[bytes]) -> list[bytes]:
    return [piece for piece, _ in _stored_as(pieces)]


def test_a_digest_given_with_a_piece_is_kept_where_the_piece_is_stored_as_it_is() -> None:
    whole, short, big = b"w" * INLINE_BYTES, b"s" * 5, b"b" * (PART_BYTES + 1)
    pieces = [whole, short, short, big]
    digests = [hashlib.sha256(piece).digest() for piece in pieces]
    stored = list(_stored_as(pieces, digests))
    assert stored[0] == (whole, digests[0][:16])  # the store's digest: the first 16 bytes
    assert stored[1] == (short * 2, None)  # a group, too short for a chunk: inline
    parts = stored[2:]  # cut: the store takes the digest of each part
    assert len(parts) > 1 and all(digest == hashlib.sha256(part).digest()[:16] for part, digest in parts)
    assert [piece for piece, _ in stored] == stored_pieces(pieces)


def test_new_chunks_are_written_in_batches_of_at_most_a_part() -> None:
    new = [(bytes([i]), b"p" * (PART_BYTES // 3)) for i in range(7)] + [(b"big", b"q" * (PART_BYTES + 1))]
    batches = list(_batches(new))
    assert [d for batch in batches for d, _ in batch] == [d for d, _ in new]
    assert [len(b) for b in batches] == [3, 3, 1, 1]
    assert all(sum(len(p) for _, p in batch) <= PART_BYTES for batch in batches[:-1])


def test_a_damaged_chunk_is_written_again_by_the_next_checkpoint_that_uses_it(tmp_path: Path) -> None:
    engine = _book(levels=10, per_level=200)
    with CheckpointStore(tmp_path / "checkpoints.lmdb") as store:
        _put_engine(store, engine, 20, LevelEncodings())
        with store._env.begin(write=True) as txn:
            listed = _stored_pieces(txn.get(b"BTC\x00" + (20).to_bytes(8, "big"), db=store._db))
            assert listed is not None
            key = b"BTC\x00" + listed.chunks[-1].to_bytes(8, "big")  # of the book, reused
            damaged = bytearray(txn.get(key, db=store._chunks))
            damaged[0] ^= 0x01
            txn.put(key, bytes(damaged), db=store._chunks)
        assert store.newest("BTC", on_corrupt=lambda exc: None) is None
        # A checkpoint of the same book reads back a sixteenth of what it reuses each time:
        # within sixteen, the damaged chunk is found and written again.
        repaired = [_put_engine(store, engine, 20 + i, LevelEncodings()).repaired for i in range(1, 17)]
        assert sum(repaired) == 1
        for seq in (20, 36):  # mended for the checkpoint written before it was found, too
            newest = store.newest("BTC", seq)
            assert newest is not None and newest.seq == seq and newest.state == engine.checkpoint()
        everything = store.put_steps(new_snapshot("BTC", 40, 0, engine.checkpoint(), engine.state_hash()),
                                     scrub_every=1)  # fmt: skip
        assert _drive(everything)[0].repaired == 0
        # Lost outright: written again under its own id, which mends the older ones too.
        with store._env.begin(write=True) as txn:
            assert txn.delete(key, db=store._chunks)
        assert store.newest("BTC", 36, on_corrupt=lambda exc: None) is None
        repaired = [_put_engine(store, engine, 40 + i, LevelEncodings()).repaired for i in range(1, 17)]
        assert sum(repaired) == 1
        assert store.newest("BTC", 36) is not None and store.newest("BTC", 20) is not None


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



def _fill(store: CheckpointStore) -> list[bytes]:
    """Fill `store`'s map to within 64 KiB (room to delete it again); the keys of what filled it."""
    keys: list[bytes] = []
    for size in (1 << 16,):
        while True:
            key = b"filler" + len(keys).to_bytes(4, "big")
            try:
                with store._env.begin(write=True) as txn:
                    txn.put(key, bytes(size), db=store._db)
            except lmdb.MapFullError:
                break
            keys.append(key)
    return keys


def test_a_checkpoint_whose_write_failed_leaves_the_next_one_whole(tmp_path: Path) -> None:
    # A full map stands in for a full disk: the chunks the failed write would have added
    # are not in the store, so the next checkpoint must write them, not just list them.
    engine = _book(levels=4, per_level=10)
    reuse = LevelEncodings()
    with CheckpointStore(tmp_path / "checkpoints.lmdb", map_size=1 << 21) as store:
        _put_engine(store, engine, 1, reuse)
        for i in range(3_000):  # about 100 KiB of new pieces
            engine.process(NewOrder(10_000 + i, 0, "b", f"d{i}", Side.BUY, 1, 2_000 + i % 50))
        filler = _fill(store)
        with pytest.raises(lmdb.MapFullError):
            _put_engine(store, engine, 2, reuse)
        for half in (filler[::2], filler[1::2]):  # LMDB reuses what older transactions freed
            with store._env.begin(write=True) as txn:
                for key in half:
                    txn.delete(key, db=store._db)
        _put_engine(store, engine, 3, reuse)
        newest = store.newest("BTC", 3)
        assert newest is not None and newest.seq == 3 and newest.state == engine.checkpoint()
