"""Price levels and the two sides of a book: the data structures, no trading rules.

A level is a FIFO of orders. Cancelling from the middle of a FIFO must not cost O(queue),
so a cancelled order is only marked dead (``remaining = 0``) and its level's totals are
adjusted at once; dead entries are dropped when they reach the head, or all together when
they outnumber the live ones. Every operation is therefore O(1) amortised per order, and a
level's live orders are always its queue with the dead entries skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from sortedcontainers import SortedList


class Order:
    """A resting (or currently matching) order. Mutable; owned by exactly one level."""

    __slots__ = (
        "order_id",
        "account",
        "client_order_id",
        "side",
        "price",
        "qty",
        "remaining",
        "stp",
        "post_only",
        "ts",
        "level",
    )

    def __init__(
        self,
        order_id: int,
        account: str,
        client_order_id: str,
        side: int,
        price: int,
        qty: int,
        remaining: int,
        stp: int,
        post_only: bool,
        ts: int,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.client_order_id = client_order_id
        self.side = side
        self.price = price
        self.qty = qty
        self.remaining = remaining
        self.stp = stp
        self.post_only = post_only
        self.ts = ts
        self.level: Level | None = None


class Level:
    __slots__ = ("price", "queue", "total", "live")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[Order] = deque()
        self.total = 0  # open quantity of live orders
        self.live = 0  # number of live orders

    def head(self) -> Order:
        """The first live order. Only call on a level with live orders."""
        queue = self.queue
        while not queue[0].remaining:
            queue.popleft()
        return queue[0]

    def orders(self) -> Iterator[Order]:
        return (o for o in self.queue if o.remaining)

    def append(self, order: Order) -> None:
        order.level = self
        self.queue.append(order)
        self.total += order.remaining
        self.live += 1

    def kill(self, order: Order) -> None:
        """Take a live order out of the level, wherever it stands in the queue."""
        self.total -= order.remaining
        self.live -= 1
        order.remaining = 0
        order.level = None
        # Compact only when dead entries dominate, so the cost stays amortised O(1).
        if len(self.queue) > 2 * self.live + 32:
            self.queue = deque(o for o in self.queue if o.remaining)


class BookSide:
    """All levels of one side. `best` is the level that trades first (None when empty)."""

    __slots__ = ("best", "is_bid", "levels", "prices")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.levels: dict[int, Level] = {}
        self.prices = SortedList()  # ascending, whichever the side
        # Cached because matching asks for it on every order; kept right by the only two
        # methods that add or remove levels.
        self.best: Level | None = None

    def level_for(self, price: int) -> Level:
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = Level(price)
            self.prices.add(price)
            best = self.best
            if best is None or (price > best.price if self.is_bid else price < best.price):
                self.best = level
        return level

    def drop(self, level: Level) -> None:
        del self.levels[level.price]
        prices = self.prices
        prices.remove(level.price)
        if level is self.best:
            self.best = self.levels[prices[-1] if self.is_bid else prices[0]] if prices else None

    def levels_best_first(self) -> Iterator[Level]:
        prices = reversed(self.prices) if self.is_bid else iter(self.prices)
        levels = self.levels
        return (levels[p] for p in prices)
