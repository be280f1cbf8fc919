"""A checkpoint's encoding and state hash, produced a few orders at a time.

`checkpoint_hash(engine.checkpoint())` walks, encodes and hashes the whole book in one go:
on a book of 100,000 resting orders that holds a core for tens of milliseconds. On a small
machine such a burst delays the order path even at the lowest CPU priority — the woken
matcher or gateway waits for the scheduler, not for the burst's priority (measured with
checkpoints every 0.5 s under paced load: ack p99 x2.4-x3.2 for bursts of 5 ms and more,
x1.1 for the same work in 1 ms slices with a pause between).

`encode_steps` yields after every small step so that its caller can pause between them; it
reads no clock (the caller does the pacing) and the book must not change until it returns.
What it returns is byte for byte `msgpack(engine.checkpoint())` and its state hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from itertools import islice
from typing import NamedTuple

import msgspec

from engine.engine import Engine
from engine.messages import RestingOrder, Side

# Orders walked and encoded per step: about 0.15 ms of one core on the bench machine.
STEP_ORDERS = 1_000
# Bytes hashed per step: about 0.25 ms.
HASH_STEP_BYTES = 1 << 19

_encode = msgspec.msgpack.Encoder().encode


class EncodedState(NamedTuple):
    state: bytes  # msgpack of engine.checkpoint(), exactly
    state_hash: str  # checkpoint_hash(engine.checkpoint())
    resting_orders: int


def encode_steps(engine: Engine, step: int = STEP_ORDERS) -> Generator[None, None, EncodedState]:
    """Encode `engine`'s checkpoint, yielding between steps; the result as StopIteration's value."""
    sides: list[msgspec.Raw] = []
    resting = 0
    for side in (Side.BUY, Side.SELL):
        parts: list[bytes] = []
        n = 0
        orders = engine.resting_orders(side)
        while chunk := list(islice(orders, step)):
            parts.append(_array_items(chunk))
            n += len(chunk)
            yield
        sides.append(msgspec.Raw(_array_header(n) + b"".join(parts)))
        resting += n
        yield
    # msgspec writes a Raw as it is: the spliced arrays stand in for the order lists.
    state = _encode(msgspec.structs.replace(engine.checkpoint_counters(), bids=sides[0], asks=sides[1]))
    yield
    digest = hashlib.sha256()
    for piece in _pieces(memoryview(state), HASH_STEP_BYTES):
        digest.update(piece)
        yield
    return EncodedState(state, digest.hexdigest(), resting)


def run_to_end(steps: Generator[None, None, EncodedState]) -> EncodedState:
    """Drive `steps` without pausing (tests, and callers that may hold a core)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: EncodedState = done.value
            return result


def _array_items(chunk: list[RestingOrder]) -> bytes:
    """The msgpack of `chunk` without its array header: items to splice into a bigger array."""
    return _encode(chunk)[len(_array_header(len(chunk))) :]


def _array_header(n: int) -> bytes:
    # The shortest msgpack array header, as every msgpack encoder (msgspec's too) writes it.
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _pieces(view: memoryview, size: int) -> Iterator[memoryview]:
    return (view[start : start + size] for start in range(0, len(view), size))
