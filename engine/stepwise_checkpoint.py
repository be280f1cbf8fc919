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
another). Of a level that changed otherwise (a cancel, a fill), only the runs that hold a
changed order: the others are known again by their orders' stamps (`run_unchanged`), which
costs a read of each order instead of encoding it. The state hash is taken over the
digests of the runs (`checkpoint_hash`), so a run reused is not hashed again either: a
checkpoint's work is in proportion to what changed since the last one, not to the book.

Encoding an order again costs about 0.8 µs here, most of it cache misses on the order and
its strings, so what is not encoded again is what counts. The bench's journal replayed to
a book of 100,000 orders, a checkpoint every 1,000 records (four in ten of them cancels all
over the book): 48 ms of encoding per checkpoint with whole levels encoded again, 31 ms
with runs reused (35 ms with the open runs of such levels encoded again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from typing import NamedTuple, TypeVar

import msgspec

from engine.book import Level, Order
from engine.engine import (
    Engine,
    array_header,
    array_items,
    run_from,
    run_unchanged,
    state_hash_of,
)
from engine.messages import RestingOrder

# Orders walked and encoded per step: on the bench's grown book (240,000 orders, 1,000 new
# since the last checkpoint) the longest step of a checkpoint takes 0.3-0.45 ms of one
# core in a quiet process here (0.55-0.75 ms at 1,000 a step), about twice that in the
# snapshotter beside loaded matchers (cold caches): no more than the snapshotter's pacing
# slice (0.5 ms), which a step cannot be cut below. The first steps encode the levels at
# the touch, where the orders came: at 1,000 a step, acks > 2 ms were 10-12% of those sent
# in the 5 ms before a checkpoint's start (its first step), at 400, 5-9% (step 3 of
# bench/recovery.py, two runs a side). A level reused as it was counts as _LEVEL_WORK orders.
STEP_ORDERS = 400
# Pieces an open run may be in before they are joined: a level appended to checkpoint after
# checkpoint adds one each time until one of its new orders closes the run. The limit is 8
# to 15 by the level's price (`open_pieces_limit`): with one limit for all, every level
# appended to at each checkpoint was joined at the same one (420 KiB written by one
# checkpoint in eight, 72-103 KiB by the others, on the bench's book).
MAX_OPEN_PIECES = 8


# An order's stamp read (`run_unchanged`) against an order encoded: what a step counts.
_READS_PER_ENCODE = 8
# A level taken as it was (or extended), in orders encoded: counted as one, the 400 levels
# of the bench's book went by in one step of 1.5 ms of CPU (at 8, 125 levels still took
# 1.2-1.4 ms: about 10 µs a level, cache misses on it and its pieces).
_LEVEL_WORK = 32


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


# A run by the ids of its first and last orders and its length: what `run_unchanged` needs
# to know the run again in a level that changed elsewhere.
Span = tuple[int, int, int]


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
    spans: tuple[Span, ...]  # each closed run's first and last order id and length
    open_first: int | None  # the order ids its open run begins and ends with
    open_last: int | None


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
            work += _LEVEL_WORK
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
    """`level` encoded, yielding whenever `work` (orders, counted on) reaches `step`; and
    `work` as it stands at the end.

    With `before` (its last encoding) and only appends since: `before`'s pieces, then its
    newest orders. Else its runs walked from the front: those `before` holds that are still
    as they were (`run_unchanged`: by order stamps, not by encoding them) taken as they were,
    the others encoded; its open run, if still as it was, taken too, with whatever came after.
    """
    encoding = _LevelEncoding()
    if before is not None and before.reshapes == level.reshapes:
        encoding.keep_closed(before)
        encoding.resume(before)
        return (yield from encoding.extend(level, level.last(level.live - before.orders), step, work))
    held = {} if before is None else _closed_runs(before)
    seen = -1 if before is None else before.version
    order = level.head
    while order is not None:  # at the start of a run
        if work >= step:
            yield
            work = 0
        hit = held.get(order.order_id)
        if hit is not None:
            span, piece, digest = hit
            same, after = run_unchanged(order, span[2], span[1], seen)
            work += 1 + span[2] // _READS_PER_ENCODE
            if same:
                encoding.keep(span, piece, digest)
                order = after
                continue
        if before is not None and before.open_last is not None and order.order_id == before.open_first:
            same, after = run_unchanged(order, before.open_orders, before.open_last, seen)
            if same:  # the level's last run then: what follows was appended since
                encoding.resume(before)
                return (yield from encoding.extend(level, after, step, work + 1))
        run, ended, order = run_from(order)
        encoding.take(run, ended)
        work += len(run)
    return encoding.done(level), work


def _closed_runs(encoded: EncodedLevel) -> dict[int, tuple[Span, bytes, bytes]]:
    """`encoded`'s closed runs by the id of their first order: span, piece and digest."""
    closed = zip(encoded.spans, encoded.pieces, encoded.digests, strict=False)  # the open run's left out
    return {span[0]: (span, piece, digest) for span, piece, digest in closed}


class _LevelEncoding:
    """A level's encoding under way: its closed runs so far, and its open run."""

    def __init__(self) -> None:
        self.closed: list[bytes] = []
        self.closed_digests: list[bytes] = []
        self.spans: list[Span] = []
        self.open_run: list[bytes] = []
        self.open_digests: list[bytes] = []
        self.open_hash = _sha256()
        self.open_orders = 0
        self.open_first: int | None = None
        self.open_last: int | None = None

    def keep_closed(self, before: EncodedLevel) -> None:
        """Take all of `before`'s closed runs."""
        cut = len(before.spans)
        self.closed, self.closed_digests = list(before.pieces[:cut]), list(before.digests[:cut])
        self.spans = list(before.spans)

    def keep(self, span: Span, piece: bytes, digest: bytes) -> None:
        """Take a closed run as it was encoded before."""
        self.closed.append(piece)
        self.closed_digests.append(digest)
        self.spans.append(span)

    def resume(self, before: EncodedLevel) -> None:
        """Go on from `before`'s open run: the runs before it are taken."""
        cut = len(before.spans)
        self.open_run, self.open_digests = list(before.pieces[cut:]), list(before.digests[cut:])
        if before.open_hash is not None:
            self.open_hash = before.open_hash.copy()
        self.open_orders = before.open_orders
        self.open_first, self.open_last = before.open_first, before.open_last

    def extend(
        self, level: Level, order: Order | None, step: int, work: int
    ) -> Generator[None, None, tuple[EncodedLevel, int]]:
        """Take the orders from `order` to the level's end, yielding whenever `work` reaches
        `step`; the level's encoding, and `work`."""
        while order is not None:
            run, ended, order = run_from(order, self.open_orders)
            self.take(run, ended)
            work += len(run)
            if work >= step:
                yield
                work = 0
        return self.done(level), work

    def take(self, run: list[RestingOrder], ended: bool) -> None:
        """Take the next orders of the level, `run`: the rest of the open run, and whether
        they end it."""
        items = array_items(run)
        self.open_hash.update(items)
        if self.open_first is None:
            self.open_first = run[0].order_id
        if ended:  # the open run and these orders: one piece, one run
            self.closed.append(b"".join((*self.open_run, items)) if self.open_run else items)
            self.closed_digests.append(self.open_hash.digest())
            self.spans.append((self.open_first, run[-1].order_id, self.open_orders + len(run)))
            self.open_run, self.open_digests, self.open_hash = [], [], _sha256()
            self.open_orders, self.open_first, self.open_last = 0, None, None
        else:
            self.open_run.append(items)
            first_piece = len(self.open_run) == 1
            self.open_digests.append(self.open_hash.digest() if first_piece else _sha256(items).digest())
            self.open_orders += len(run)
            self.open_last = run[-1].order_id

    def done(self, level: Level) -> EncodedLevel:
        open_run, open_digests = self.open_run, self.open_digests
        if len(open_run) > open_pieces_limit(level):
            open_run, open_digests = [b"".join(open_run)], [self.open_hash.digest()]
        closed_digests = self.closed_digests
        runs = b"".join((*closed_digests, self.open_hash.digest())) if open_run else b"".join(closed_digests)
        return EncodedLevel(level.version, level.reshapes, (*self.closed, *open_run),
                            (*closed_digests, *open_digests), runs, level.live, self.open_orders,
                            len(open_run), self.open_hash if open_run else None, tuple(self.spans),
                            self.open_first, self.open_last)  # fmt: skip


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
