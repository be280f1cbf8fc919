"""Seeded command stream for the engine benchmark, generated against a reference book.

Which orders are resting, and where the best opposite price is, depend on matching
results, so the stream is produced by running a deliberately plain price-time book
(`RefBook`) alongside the generator. The list is then fixed: every engine gets exactly the
same commands, and `RefBook`'s end state (fills, volume, resting orders, best prices) is
the expected answer each engine is checked against. The reference is written here rather
than borrowed from clobd so that it checks clobd too.
"""

from __future__ import annotations

import heapq
import random
from array import array
from collections import OrderedDict
from typing import Any

from bench.peers.wire import ADD, BUY, CANCEL, COLUMNS, IOC, SELL

MID = 100_000  # starting mid, in ticks; far from zero so no price can go non-positive
DEPTH_TICKS = 50  # passive adds land within this many ticks of the mid
MAX_THROUGH = 5  # aggressive orders are priced 1..MAX_THROUGH ticks through the touch
MAX_QTY = 100
CANCEL_SHARE = 0.30
IOC_SHARE = 0.15


class _Side:
    """One side: price -> FIFO of (client id -> remaining), plus a lazy heap of prices."""

    def __init__(self, is_bid: bool) -> None:
        self.sign = -1 if is_bid else 1  # heap keys: best price is always the smallest
        self.levels: dict[int, OrderedDict[int, int]] = {}
        self.heap: list[int] = []

    def best(self) -> int | None:
        # Emptied levels are dropped from `levels` at once and from the heap only here.
        heap, levels = self.heap, self.levels
        while heap:
            price = heap[0] * self.sign
            if price in levels:
                return price
            heapq.heappop(heap)
        return None

    def add(self, cid: int, price: int, qty: int) -> None:
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = OrderedDict()
            heapq.heappush(self.heap, price * self.sign)
        level[cid] = qty

    def remove(self, cid: int, price: int) -> None:
        level = self.levels[price]
        del level[cid]
        if not level:
            del self.levels[price]


class RefBook:
    """A minimal price-time book; also tracks resting ids for O(1) random picks."""

    def __init__(self) -> None:
        self.sides = {BUY: _Side(is_bid=True), SELL: _Side(is_bid=False)}
        self.where: dict[int, tuple[int, int]] = {}  # cid -> (side, price)
        self.ids: list[int] = []  # resting cids, in no particular order
        self.slot: dict[int, int] = {}  # cid -> index in `ids`
        self.fills = 0  # one per maker-taker match
        self.volume = 0

    def rest(self, cid: int, side: int, price: int, qty: int) -> None:
        self.sides[side].add(cid, price, qty)
        self.where[cid] = (side, price)
        self.slot[cid] = len(self.ids)
        self.ids.append(cid)

    def cancel(self, cid: int) -> None:
        side, price = self.where.pop(cid)
        self.sides[side].remove(cid, price)
        # Swap-remove keeps `ids` dense so a random resting order is one randrange away.
        i, last = self.slot.pop(cid), self.ids.pop()
        if last != cid:
            self.ids[i] = last
            self.slot[last] = i

    def take(self, side: int, price: int, qty: int) -> None:
        """Match an IOC against the opposite side; its remainder is simply dropped."""
        opp = self.sides[SELL if side == BUY else BUY]
        while qty:
            best = opp.best()
            if best is None or (best > price if side == BUY else best < price):
                return
            level = opp.levels[best]
            maker, left = next(iter(level.items()))
            fill = min(qty, left)
            qty -= fill
            self.fills += 1
            self.volume += fill
            if fill == left:
                self.cancel(maker)
            else:
                level[maker] = left - fill

    def best(self, side: int) -> int | None:
        return self.sides[side].best()


def generate(n: int, seed: int) -> tuple[dict[str, Any], dict[str, array[int]]]:
    """Return (metadata with the expected end state, command columns)."""
    rng = random.Random(seed)
    book = RefBook()
    cols = {name: array("q") for name in COLUMNS}
    put = [cols[name].append for name in COLUMNS]
    mid = MID
    for cid in range(1, n + 1):
        bid, ask = book.best(BUY), book.best(SELL)
        if bid is not None and ask is not None:
            mid = (bid + ask) // 2
        cmd = _next_command(rng, book, cid, mid, bid, ask)
        for append, value in zip(put, cmd, strict=True):
            append(value)
    kinds = cols["kind"]
    meta = {
        "n": n,
        "seed": seed,
        "mix": {k: kinds.count(v) for k, v in (("add", ADD), ("ioc", IOC), ("cancel", CANCEL))},
        "expected": {
            "fills": book.fills,
            "volume": book.volume,
            "resting": len(book.ids),
            "best_bid": book.best(BUY),
            "best_ask": book.best(SELL),
        },
    }
    return meta, cols


def _next_command(
    rng: random.Random, book: RefBook, cid: int, mid: int, bid: int | None, ask: int | None
) -> tuple[int, int, int, int, int]:
    """Draw one command, apply it to `book`, and return it as (kind, cid, side, price, qty)."""
    roll = rng.random()
    side = BUY if rng.random() < 0.5 else SELL
    qty = rng.randint(1, MAX_QTY)
    if roll < CANCEL_SHARE and book.ids:
        victim = book.ids[rng.randrange(len(book.ids))]
        v_side, v_price = book.where[victim]
        book.cancel(victim)
        return CANCEL, victim, v_side, v_price, 0
    touch = ask if side == BUY else bid
    if roll < CANCEL_SHARE + IOC_SHARE and touch is not None:
        through = rng.randint(1, MAX_THROUGH)
        price = touch + through if side == BUY else touch - through
        book.take(side, price, qty)
        return IOC, cid, side, price, qty
    # A passive add; an empty book (early cancels/IOCs with nothing to act on) lands here too.
    offset = rng.randrange(DEPTH_TICKS)
    if side == BUY:
        price = mid - offset if ask is None else min(mid - offset, ask - 1)
    else:
        price = mid + offset if bid is None else max(mid + offset, bid + 1)
    book.rest(cid, side, price, qty)
    return ADD, cid, side, price, qty
