"""A checkpoint encoded step by step is byte for byte the one encoded in one go."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine
from engine.messages import Checkpoint
from engine.stepwise_checkpoint import _array_header, encode_steps, run_to_end
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
    assert encoded.state_hash == engine.state_hash()
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


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65_535, 65_536, 70_000])
def test_array_headers_are_the_ones_msgpack_writes(n: int) -> None:
    # Each size class of the msgpack array header (fixarray, array 16, array 32) and its edges.
    encoded = msgspec.msgpack.encode([0] * n)
    assert encoded[: len(_array_header(n))] == _array_header(n)
    assert len(encoded) == len(_array_header(n)) + n
