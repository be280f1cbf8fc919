"""Price levels and the two sides of a book: the data structures, no trading rules.

A level is a FIFO of orders. Cancelling from the middle of a FIFO must not cost O(queue),
so a cancelled order is only marked dead (``remaining = 0``) and its level's totals are
adjusted at once; dead entries are skipped when they reach the head, and the queue is
compacted when they outnumber the live ones. Every operation is therefore O(1) amortised
per order, and a level's live orders are its queue from `head` on, dead entries skipped.

The queue is a list plus a head index rather than a deque: indexing a list is what both
CPython and the mypyc-compiled build do fastest.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedList

from engine.messages import SelfTradePrevention, Side


class Order:
    """A resting (or currently matching) order. Mutable; in at most one level's queue.

    It holds no reference to its level (the level is found by price), so resting orders
    never form reference cycles.
    """

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
    )

    def __init__(
        self,
        order_id: int,
        account: str,
        client_order_id: str,
        side: Side,
        price: int,
        qty: int,
        remaining: int,
        stp: SelfTradePrevention,
        post_only: bool,
        ts: int,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.client_order_id = client_order_id
        self.side = side
        self.price = price
        self.qty = qty  # total quantity, filled part included
        self.remaining = remaining  # open quantity; 0 marks a dead queue entry
        self.stp = stp
        self.post_only = post_only
        self.ts = ts  # time of entry into its current queue position


class Level:
    __slots__ = ("price", "queue", "head", "total", "live")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: list[Order] = []
        self.head = 0  # index of the first entry not yet consumed
        self.total = 0  # open quantity of live orders
        self.live = 0  # number of live orders

    def first(self) -> Order:
        """The first live order, dropping dead entries before it. Needs `live > 0`."""
        queue = self.queue
        head = self.head
        order = queue[head]
        while not order.remaining:
            head += 1
            order = queue[head]
        self.head = head
        return order

    def pop_first(self) -> None:
        """Drop the first live order, which has just been filled (`remaining == 0`)."""
        self.head += 1
        self.live -= 1
        if self.head > 64 and self.head * 2 > len(self.queue):
            self._compact()

    def append(self, order: Order) -> None:
        self.queue.append(order)
        self.total += order.remaining
        self.live += 1

    def kill(self, order: Order) -> None:
        """Take a live order out, wherever it stands in the queue."""
        self.total -= order.remaining
        self.live -= 1
        order.remaining = 0
        if len(self.queue) - self.head > 2 * self.live + 32:
            self._compact()

    def _compact(self) -> None:
        # Amortised O(1): runs only after as many entries died as remain alive.
        self.queue = [o for o in self.queue[self.head :] if o.remaining]
        self.head = 0

    def orders(self) -> Iterator[Order]:
        return (o for o in self.queue[self.head :] if o.remaining)


class BookSide:
    """All levels of one side. `best` is the level that trades first (None when empty)."""

    __slots__ = ("is_bid", "levels", "prices", "best")

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
            level = Level(price)
            self.levels[price] = level
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
            if prices:
                self.best = self.levels[prices[-1] if self.is_bid else prices[0]]
            else:
                self.best = None

    def levels_best_first(self) -> Iterator[Level]:
        prices = reversed(self.prices) if self.is_bid else iter(self.prices)
        levels = self.levels
        return (levels[p] for p in prices)
