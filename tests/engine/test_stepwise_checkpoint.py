"""A checkpoint encoded step by step is byte for byte the one encoded in one go."""

from __future__ import annotations

import hashlib
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.engine import MAX_RUN_ORDERS, array_header, checkpoint_hash, ends_run, resting_runs
from engine.messages import Amend, Cancel, Checkpoint, Command, NewOrder, Side, TimeInForce
from engine.stepwise_checkpoint import (
    EncodedLevel,
    EncodedState,
    LevelEncodings,
    encode_steps,
    open_pieces_limit,
    run_to_end,
)
from tests.engine.test_determinism import SPEC, commands, run


def _engine_after(n: int, seed: int) -> Engine:
    engine = Engine(SPEC)
    run(engine, commands(n, seed))
    return engine


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=0, max_value=600), seed=st.integers(0, 10**6), step=st.integers(1, 40))
def test_same_bytes_hash_and_count_as_the_one_shot_checkpoint(n: int, seed: int, step: int) -> None:
    engine = _engine_after(n, seed)
    one_shot = engine.checkpoint()
    encoded = run_to_end(encode_steps(engine, step))
    assert encoded.state == msgspec.msgpack.encode(one_shot)
    assert encoded.state_hash == engine.state_hash() == checkpoint_hash(one_shot)
    assert encoded.resting_orders == len(one_shot.bids) + len(one_shot.asks)
    assert msgspec.msgpack.decode(encoded.state, type=Checkpoint) == one_shot


def test_it_yields_between_steps_and_leaves_the_book_as_it_was() -> None:
    engine = _engine_after(3000, 11)  # about 70 resting orders
    before = engine.state_hash()
    resting = len(engine.orders)
    steps = encode_steps(engine, 10)
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            encoded = done.value
            break
        pauses += 1
    assert resting > 30 and pauses >= resting // 10  # a pause at least every 10 orders
    assert encoded.resting_orders == resting
    assert engine.state_hash() == before


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), every=st.integers(1, 25), step=st.integers(1, 40))
def test_reusing_levels_gives_the_same_checkpoint(seed: int, every: int, step: int) -> None:
    engine = Engine(SPEC)
    encodings = LevelEncodings()
    cmds = commands(800, seed)
    for start in range(0, len(cmds), every):
        run(engine, cmds[start : start + every])
        encoded = run_to_end(encode_steps(engine, step, encodings))
        assert encoded.state == msgspec.msgpack.encode(engine.checkpoint())
        assert encoded.state_hash == engine.state_hash()
        assert_digests_are_the_pieces(encoded)
        # Cut where the orders say, not where the last checkpoint happened to end: the runs
        # an encoding from scratch makes (which the checkpoint store then shares).
        fresh = LevelEncodings()
        run_to_end(encode_steps(engine, step, fresh))
        reused = {lv: runs(e) for lv, e in encodings.levels.items()}
        assert reused == {lv: runs(e) for lv, e in fresh.levels.items()}
        assert all(e.open_pieces <= 1 for e in fresh.levels.values())
    assert len(encodings.levels) == len(engine.bids.levels) + len(engine.asks.levels)


def assert_digests_are_the_pieces(encoded: EncodedState) -> None:
    """Each piece of orders comes with its SHA-256 (the checkpoint store's digest of it); the
    four around them (counters, the two array headers) with none."""
    pairs = list(zip(encoded.pieces, encoded.digests, strict=True))
    assert sum(digest is None for _, digest in pairs) == 4
    assert pairs[0][1] is None and pairs[1][1] is None and pairs[-1][1] is None
    assert all(digest is None or digest == hashlib.sha256(piece).digest() for piece, digest in pairs)


def runs(encoded: EncodedLevel) -> list[bytes]:
    """A level's runs as an encoding from scratch has them: its open run in one piece."""
    cut = len(encoded.pieces) - encoded.open_pieces
    return [*encoded.pieces[:cut], *([b"".join(encoded.pieces[cut:])] if encoded.open_pieces else [])]


def test_only_the_levels_that_changed_are_encoded_again() -> None:
    engine = _engine_after(3000, 11)
    encodings = LevelEncodings()
    first = run_to_end(encode_steps(engine, 5, encodings))
    before = dict(encodings.levels)
    assert run_to_end(encode_steps(engine, 5, encodings)) == first
    assert encodings.levels == before and all(encodings.levels[lv] is e for lv, e in before.items())

    # Out and in again at the same level with the same quantity: the level's count and total
    # are as they were, its orders are not.
    level = next(lv for lv in engine.bids.levels_best_first() if lv.live > 1)
    head = level.head
    assert head is not None
    total, seq = level.total, engine.last_seq
    engine.process(Cancel(seq + 1, seq + 1, head.account, head.order_id))
    engine.process(NewOrder(seq + 2, seq + 2, head.account, "again", Side.BUY, head.remaining, level.price))
    assert engine.bids.levels[level.price] is level and level.total == total
    changed = run_to_end(encode_steps(engine, 5, encodings))
    assert changed.state == msgspec.msgpack.encode(engine.checkpoint())
    assert [lv for lv, e in encodings.levels.items() if e is not before[lv]] == [level]


def test_a_level_only_appended_to_encodes_just_its_new_orders() -> None:
    engine = _engine_after(3000, 11)
    encodings = LevelEncodings()
    run_to_end(encode_steps(engine, 5, encodings))
    level = next(lv for lv in engine.asks.levels_best_first() if lv.live > 1)
    account = "e"  # trades with nobody: the asks it joins are above every bid
    closed_runs = 0
    for i in range(300):
        before = encodings.levels[level]
        seq = engine.last_seq + 1
        oid = engine.next_order_id
        engine.process(NewOrder(seq, seq, account, f"more{i}", Side.SELL, 1 + i, level.price))
        encoded = run_to_end(encode_steps(engine, 5, encodings))
        assert encoded.state == msgspec.msgpack.encode(engine.checkpoint())
        after = encodings.levels[level]
        new = msgspec.msgpack.encode([engine.order(oid)])[1:]
        assert after.orders == before.orders + 1
        cut = len(before.pieces) - before.open_pieces
        assert all(a is b for a, b in zip(after.pieces, before.pieces[:cut], strict=False))  # as they were
        if ends_run(oid):  # the open run closes: one piece, its pieces and the new order's
            assert after.pieces[cut:] == (b"".join((*before.pieces[cut:], new)),)
            assert (after.open_orders, after.open_pieces) == (0, 0)
            closed_runs += 1
        elif before.open_pieces < open_pieces_limit(level):  # one more piece in the open run
            assert after.pieces[cut:] == (*before.pieces[cut:], new)
            assert all(a is b for a, b in zip(after.pieces[cut:], before.pieces[cut:], strict=False))
        else:  # too many: joined into one
            assert after.pieces[cut:] == (b"".join((*before.pieces[cut:], new)),)
        assert after.open_orders == (0 if ends_run(oid) else before.open_orders + 1)
    assert closed_runs > 0  # the level's runs did close along the way


def _deep_book_commands(seed: int, n: int) -> list[Command]:
    """Orders on three bid prices (levels of hundreds of orders, many runs each), and what
    reshapes a level anywhere along it: cancels, amends down (in place) and up (to the
    back), amends to another price, and sells that fill from the front."""
    rng = random.Random(seed)
    out: list[Command] = []
    for seq in range(1, n + 1):
        roll = rng.random()
        if roll < 0.55 or seq < 300:
            price = rng.choice((100, 101, 102))
            out.append(NewOrder(seq, seq, rng.choice("ab"), f"c{seq}", Side.BUY, rng.randint(1, 9), price))
        elif roll < 0.75:
            out.append(Cancel(seq, seq, rng.choice("ab"), rng.randint(1, seq)))
        elif roll < 0.9:
            qty = rng.choice((1, 2, 30))
            price = rng.choice((0, 0, 100, 101))
            out.append(Amend(seq, seq, rng.choice("ab"), rng.randint(1, seq), price=price, qty=qty))
        else:
            qty = rng.randint(1, 12)
            out.append(NewOrder(seq, seq, "c", f"s{seq}", Side.SELL, qty, 102, tif=TimeInForce.IOC))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), every=st.integers(1, 60))
def test_a_reshaped_level_gives_the_same_checkpoint_as_one_encoded_anew(seed: int, every: int) -> None:
    engine = Engine(SPEC)
    encodings = LevelEncodings()
    cmds = _deep_book_commands(seed, 1_500)
    reused_runs = 0
    for start in range(0, len(cmds), every):
        before = dict(encodings.levels)
        run(engine, cmds[start : start + every])
        encoded = run_to_end(encode_steps(engine, 50, encodings))
        assert encoded.state == msgspec.msgpack.encode(engine.checkpoint())
        assert encoded.state_hash == engine.state_hash()
        assert_digests_are_the_pieces(encoded)
        fresh = LevelEncodings()
        run_to_end(encode_steps(engine, 50, fresh))
        for level, encoding in encodings.levels.items():
            assert runs(encoding) == runs(fresh.levels[level])
            assert encoding.spans == fresh.levels[level].spans
            old = before.get(level)
            if old is not None and old.reshapes != level.reshapes:  # walked: runs taken as they were
                kept = {id(piece) for piece in old.pieces} & {id(piece) for piece in encoding.pieces}
                reused_runs += len(kept)
    assert max(level.live for level in engine.bids.levels.values()) > 3 * 64  # levels of many runs
    assert reused_runs > 0  # and reshaped ones did keep some


def test_a_cancel_encodes_again_only_the_run_it_was_in() -> None:
    engine = Engine(SPEC)
    for i in range(2_000):  # one level of about 31 runs
        engine.process(NewOrder(i + 1, i + 1, "a", f"c{i}", Side.BUY, 1, 100))
    encodings = LevelEncodings()
    run_to_end(encode_steps(engine, 50, encodings))
    level = engine.bids.levels[100]
    before = encodings.levels[level]
    runs_before = list(resting_runs(level))
    middle = len(runs_before) // 2
    victim = runs_before[middle][0][1].order_id  # not a run's last: its run stays a run
    seq = engine.last_seq + 1
    engine.process(Cancel(seq, seq, "a", victim))
    encoded = run_to_end(encode_steps(engine, 50, encodings))
    assert encoded.state == msgspec.msgpack.encode(engine.checkpoint())
    after = encodings.levels[level]
    cut = len(before.pieces) - before.open_pieces
    same = [i for i in range(cut) if after.pieces[i] is before.pieces[i]]
    assert same == [i for i in range(cut) if i != middle]  # every closed run but its own
    assert after.pieces[middle] != before.pieces[middle]
    assert before.open_pieces == after.open_pieces == 1  # and its open run, as it was
    assert after.pieces[-1] is before.pieces[-1] and after.open_hash is not before.open_hash


def test_runs_end_where_the_order_ids_say() -> None:
    engine = Engine(SPEC)
    for i in range(3_000):  # one level
        engine.process(NewOrder(i + 1, i + 1, "a", f"c{i}", Side.BUY, 1, 100))
    level = engine.bids.levels[100]
    runs = list(resting_runs(level))
    assert [o for orders, _ in runs for o in orders] == engine.checkpoint().bids
    for orders, ended in runs[:-1]:
        assert ended and (ends_run(orders[-1].order_id) or len(orders) == MAX_RUN_ORDERS)
    for orders, _ in runs:
        assert not any(ends_run(o.order_id) for o in orders[:-1])
    assert 3_000 // 64 // 2 < len(runs) < 3_000 // 64 * 2  # about one order in 64 ends a run
    last, ended = runs[-1]
    assert ended == ends_run(last[-1].order_id)


def test_a_run_ends_at_its_longest_also_when_it_grew_over_checkpoints() -> None:
    engine = Engine(SPEC)
    encodings = LevelEncodings()

    def add_at_100(n: int) -> None:  # n orders at 100 whose ids end no run; the others at 90
        while n:
            seq = engine.last_seq + 1
            at_100 = not ends_run(engine.next_order_id)
            engine.process(NewOrder(seq, seq, "a", f"c{seq}", Side.BUY, 1, 100 if at_100 else 90))
            n -= at_100

    add_at_100(MAX_RUN_ORDERS * 6 // 10)
    run_to_end(encode_steps(engine, 50, encodings))
    level = engine.bids.levels[100]
    assert encodings.levels[level].open_orders == level.live  # one open run so far
    add_at_100(MAX_RUN_ORDERS // 2)  # appends: the open run reaches its longest on the way
    run_to_end(encode_steps(engine, 50, encodings))
    fresh = LevelEncodings()
    run_to_end(encode_steps(engine, 50, fresh))
    assert runs(encodings.levels[level]) == runs(fresh.levels[level])
    assert [len(r) for r, _ in resting_runs(level)] == [MAX_RUN_ORDERS, level.live - MAX_RUN_ORDERS]
    assert encodings.levels[level].open_orders == level.live - MAX_RUN_ORDERS


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65_535, 65_536, 70_000])
def test_array_headers_are_the_ones_msgpack_writes(n: int) -> None:
    # Each size class of the msgpack array header (fixarray, array 16, array 32) and its edges.
    encoded = msgspec.msgpack.encode([0] * n)
    assert encoded[: len(array_header(n))] == array_header(n)
    assert len(encoded) == len(array_header(n)) + n
