"""A checkpoint's encoding and state hash, produced a few orders at a time.

`checkpoint_hash(engine.checkpoint())` walks, encodes and hashes the whole book in one go:
on a book of 100,000 resting orders that holds a core for tens of milliseconds. On a small
machine such a burst delays the order path even at the lowest CPU priority — the woken
matcher or gateway waits for the scheduler, not for the burst's priority (measured with
checkpoints every 0.5 s under paced load: ack p99 x2.4-x3.2 for bursts of 5 ms and more,
x1.1 for the same work in 1 ms slices with a pause between).

`encode_steps` yields after every small step so that its caller can pause between them; it
reads no clock (the caller does the pacing) and the book must not change until it returns.
What it returns is byte for byte `msgpack(engine.checkpoint())`, in pieces, each with its
SHA-256, and the state hash. A level's pieces are runs of its orders that end where the
orders say (`engine.resting_runs`: about 64 orders each), so the same orders make the same
pieces in any checkpoint of any process, and the checkpoint store keeps each once and
writes only new ones. Given the `LevelEncodings` of the previous checkpoint, it encodes
only the levels that changed since, and of a level only appended to, only the new orders:
they extend its last, open run as one more piece, and a run that closes becomes one piece,
its pieces joined (the bytes of a list's items are the bytes of its parts' items, one after
another). The state hash is taken over the digests of the runs (`checkpoint_hash`), so a
level reused is not hashed again either: a checkpoint's work is in proportion to what
changed since the last one, not to the book (on the bench's book of 100,000 orders, 1,000
orders after the last checkpoint: about 7 ms of encoding, 4 of them hashing, before).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from typing import NamedTuple, TypeVar

import msgspec

from engine.book import Level
from engine.engine import Engine, array_header, array_items, resting_runs, state_hash_of

# Orders walked and encoded per step: 0.25 ms of one core in a quiet process here, about
# twice that in the snapshotter beside loaded matchers (cold caches). A level reused as it
# was counts as one order.
STEP_ORDERS = 1_000
# Pieces an open run may be in before they are joined: a level appended to checkpoint after
# checkpoint adds one each time until one of its new orders closes the run. The limit is 8
# to 15 by the level's price (`open_pieces_limit`): with one limit for all, every level
# appended to at each checkpoint was joined at the same one (420 KiB written by one
# checkpoint in eight, 72-103 KiB by the others, on the bench's book).
MAX_OPEN_PIECES = 8


def open_pieces_limit(level: Level) -> int:
    return MAX_OPEN_PIECES + level.price % MAX_OPEN_PIECES

_encode = msgspec.msgpack.Encoder().encode
_sha256 = hashlib.sha256
T = TypeVar("T")


class EncodedState(NamedTuple):
    # msgpack of engine.checkpoint(), exactly, as the pieces it was made in: the store
    # writes them without joining them into one buffer the size of the book.
    pieces: tuple[bytes, ...]
    # SHA-256 of each piece that holds orders (the store's digest of a chunk), None for
    # the few bytes around them (array headers, counters)
    digests: tuple[bytes | None, ...]
    state_hash: str  # checkpoint_hash(engine.checkpoint())
    resting_orders: int

    @property
    def state(self) -> bytes:
        """The pieces joined (tests, and callers with a small book)."""
        return b"".join(self.pieces)


class EncodedLevel(NamedTuple):
    version: int  # the level's version and reshapes when it was encoded
    reshapes: int
    pieces: tuple[bytes, ...]  # msgpack of its orders without an array header: closed runs,
    # one piece each, then its open run (which the level's end, not an order, ended) in
    # `open_pieces` pieces
    digests: tuple[bytes, ...]  # SHA-256 of each piece
    runs: bytes  # SHA-256 of each of its runs, closed and open: its part of the state hash
    orders: int
    open_orders: int
    open_pieces: int
    open_hash: hashlib._Hash | None  # SHA-256 of its open run so far, to be extended


class LevelEncodings:
    """Each level's orders as the last checkpoint encoded them, for the next one to reuse.

    A level at the version it was encoded at holds the same orders in the same state
    (`Level.version`), so its bytes still hold; one with only appends since (the same
    `Level.reshapes`) needs just its newest orders encoded. Levels are keyed by identity (a
    level dropped and made again at the same price is a new object, at version 0), and only
    the levels of the last checkpoint are kept.
    """

    def __init__(self) -> None:
        self.levels: dict[Level, EncodedLevel] = {}


def encode_steps(
    engine: Engine, step: int = STEP_ORDERS, reuse: LevelEncodings | None = None
) -> Generator[None, None, EncodedState]:
    """Encode `engine`'s checkpoint, yielding between steps; the result as StopIteration's value.

    A step is `step` orders encoded (or levels reused). Each piece is hashed as it is
    made, while it is still in the cache: a checkpoint never walks (nor allocates) a buffer
    of the whole book. With `reuse`, what the checkpoint that filled it encoded of a level
    is not encoded (nor hashed) again if the level did not change or was only appended to,
    and `reuse` is left holding this checkpoint's levels.
    """
    known = reuse.levels if reuse is not None else {}
    kept: dict[Level, EncodedLevel] = {}
    prefix, suffix = _counters_around_orders(engine)
    pieces: list[bytes] = [prefix]
    digests: list[bytes | None] = [None]
    side_runs: list[bytes] = []  # per side: the SHA-256 of each run, best level first
    resting = 0
    work = 0  # orders encoded and levels reused since the last yield
    for side in (engine.bids, engine.asks):
        count = sum(level.live for level in side.levels.values())
        header = array_header(count)
        pieces.append(header)
        digests.append(None)
        runs: list[bytes] = []
        walked = 0
        for level in side.levels_best_first():
            encoded = known.get(level)
            if encoded is None or encoded.version != level.version:
                encoded, work = yield from _encoded_level(level, encoded, step, work)
            kept[level] = encoded
            pieces.extend(encoded.pieces)
            digests.extend(encoded.digests)
            runs.append(encoded.runs)
            walked += encoded.orders
            work += 1
            if work >= step:
                yield
                work = 0
        if walked != count:  # the book changed under the walk: the header would lie
            raise RuntimeError(f"book walk found {walked} orders on a side whose levels count {count}")
        resting += walked
        side_runs.append(b"".join(runs))
    pieces.append(suffix)
    digests.append(None)
    if reuse is not None:
        reuse.levels = kept
    bid_runs, ask_runs = side_runs
    state_hash = state_hash_of(prefix + _EMPTY_ARRAYS + suffix, bid_runs, ask_runs)  # counters: no orders
    return EncodedState(tuple(pieces), tuple(digests), state_hash, resting)


def _encoded_level(
    level: Level, before: EncodedLevel | None, step: int, work: int
) -> Generator[None, None, tuple[EncodedLevel, int]]:
    """`level` encoded: all its orders, or (`before` has it with only appends since) its
    newest ones after `before`'s pieces; yielding whenever `work` (orders, counted on)
    reaches `step`; and `work` as it stands at the end."""
    closed: list[bytes] = []
    closed_digests: list[bytes] = []
    open_run: list[bytes] = []
    open_digests: list[bytes] = []
    open_hash = _sha256()
    open_orders, newest = 0, -1  # all of the level's orders
    if before is not None and before.reshapes == level.reshapes:  # appends only
        cut = len(before.pieces) - before.open_pieces
        closed, open_run = list(before.pieces[:cut]), list(before.pieces[cut:])
        closed_digests, open_digests = list(before.digests[:cut]), list(before.digests[cut:])
        if before.open_hash is not None:
            open_hash = before.open_hash.copy()
        open_orders, newest = before.open_orders, level.live - before.orders
    for run, ended in resting_runs(level, newest, open_orders):
        items = array_items(run)
        open_hash.update(items)
        if ended:  # the open run and these orders: one piece, one run
            closed.append(b"".join((*open_run, items)) if open_run else items)
            closed_digests.append(open_hash.digest())
            open_run, open_digests, open_hash, open_orders = [], [], _sha256(), 0
        else:
            open_run.append(items)
            open_digests.append(open_hash.digest() if len(open_run) == 1 else _sha256(items).digest())
            open_orders += len(run)
        work += len(run)
        if work >= step:
            yield
            work = 0
    if len(open_run) > open_pieces_limit(level):
        open_run, open_digests = [b"".join(open_run)], [open_hash.digest()]
    runs = b"".join((*closed_digests, open_hash.digest())) if open_run else b"".join(closed_digests)
    pieces, digests = (*closed, *open_run), (*closed_digests, *open_digests)
    encoded = EncodedLevel(level.version, level.reshapes, pieces, digests, runs, level.live, open_orders,
                           len(open_run), open_hash if open_run else None)  # fmt: skip
    return encoded, work


def _counters_around_orders(engine: Engine) -> tuple[bytes, bytes]:
    """The checkpoint's msgpack before its bid array and after its ask array.

    A Raw is written as it is, so with both arrays as empty Raws the encoding is exactly
    what goes around them; the header and the symbol are what comes before.
    """
    counters = engine.checkpoint_counters()
    around = _encode(msgspec.structs.replace(counters, bids=_NOTHING, asks=_NOTHING))
    split = len(_encode([counters.symbol]))  # header + symbol, as a one-item array is
    prefix, suffix = around[:split], around[split:]
    if prefix + _EMPTY_ARRAYS + suffix != _encode(counters):
        raise RuntimeError("checkpoint layout changed: update stepwise_checkpoint")
    return prefix, suffix


_NOTHING = msgspec.Raw(b"")
_EMPTY_ARRAYS = _encode([]) * 2  # the bid and ask arrays of a book with no orders


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Drive `steps` (this module's, or the checkpoint store's) without pausing: tests, and
    callers that may hold a core."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
