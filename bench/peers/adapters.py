"""One adapter per engine, each driving that engine through its public API only.

Contract (used by `bench.peers.worker`): for every command the worker calls
`prepare(kind, cid, side)` untimed, then times exactly one call of `add`, `ioc` or
`cancel` with the prepared key, then calls `observe(kind, cid, result)` untimed. So the
timed window holds what a caller of that engine must do for one command (build the
engine's own order object, call it, and for engines without IOC the follow-up cancel),
while id mapping and fill counting stay outside it.

Fills are counted as one per maker-taker match and volume as lots traded, in every
engine. All buys come from one account and all sells from another, so no engine's
self-trade prevention can ever fire.
"""

from __future__ import annotations

import itertools
from importlib import metadata
from typing import Any, ClassVar

from bench.peers.wire import ADD, BUY, CANCEL

# Indexed by side (BUY=1, SELL=2), so the timed path does a tuple index, not a branch.
ACCOUNTS = ("", "buyer", "seller")


class Adapter:
    name: ClassVar[str]
    package: ClassVar[str | None] = None  # PyPI distribution, for the version column
    mode: ClassVar[str] = ""
    notes: ClassVar[tuple[str, ...]] = ()
    reports_fills: ClassVar[bool] = True

    def __init__(self) -> None:
        self.fills = 0
        self.volume = 0
        self.rejects = 0

    def version(self) -> str:
        return metadata.version(self.package) if self.package else "working tree"

    def prepare(self, kind: int, cid: int, side: int) -> Any:
        return cid

    def observe(self, kind: int, cid: int, result: Any) -> None:
        pass

    def finish(self) -> None:
        """Collect counts an engine only exposes in bulk; runs after the timed loop."""

    def add(self, key: Any, side: int, price: int, qty: int) -> Any:
        raise NotImplementedError

    def ioc(self, key: Any, side: int, price: int, qty: int) -> Any:
        raise NotImplementedError

    def cancel(self, key: Any, side: int, price: int, qty: int) -> Any:
        raise NotImplementedError

    def resting(self) -> int:
        raise NotImplementedError

    def best(self) -> tuple[int | None, int | None]:
        raise NotImplementedError


class Clobd(Adapter):
    name = "clobd"
    mode = "in-process Engine.process (matching core only)"

    def __init__(self) -> None:
        super().__init__()
        import engine.engine
        from engine.engine import Engine
        from engine.instrument import Instrument
        from engine.messages import (
            Accepted,
            Cancel,
            NewOrder,
            OrderType,
            Rejected,
            Side,
            TimeInForce,
            Trade,
        )

        built = "mypyc-compiled" if not engine.engine.__file__.endswith(".py") else "pure Python"
        self.mode = f"in-process Engine.process (matching core only, {built})"
        self._eng = Engine(Instrument("BENCH"))
        self._process = self._eng.process
        self._new, self._cancel = NewOrder, Cancel
        self._accepted, self._trade, self._rejected = Accepted, Trade, Rejected
        self._sides = (None, Side.BUY, Side.SELL)
        self._limit, self._gtc, self._ioc = OrderType.LIMIT, TimeInForce.GTC, TimeInForce.IOC
        self._seq = itertools.count(1).__next__
        self._ids: dict[int, int] = {}  # cid -> engine order id, from Accepted

    def prepare(self, kind: int, cid: int, side: int) -> Any:
        # Client order ids are strings on clobd's wire; cancels name the engine's order id.
        return self._ids.pop(cid) if kind == CANCEL else str(cid)

    def observe(self, kind: int, cid: int, result: Any) -> None:
        for ev in result:
            kind_of = type(ev)
            if kind_of is self._trade:
                self.fills += 1
                self.volume += ev.qty
            elif kind_of is self._accepted and kind == ADD:
                self._ids[cid] = ev.order_id
            elif kind_of is self._rejected:
                self.rejects += 1

    def _order(self, key: Any, side: int, price: int, qty: int, tif: Any) -> Any:
        seq = self._seq()
        cmd = self._new(seq, seq, ACCOUNTS[side], key, self._sides[side], qty, price, self._limit, tif)
        return self._process(cmd)

    def add(self, key: Any, side: int, price: int, qty: int) -> Any:
        return self._order(key, side, price, qty, self._gtc)

    def ioc(self, key: Any, side: int, price: int, qty: int) -> Any:
        return self._order(key, side, price, qty, self._ioc)

    def cancel(self, key: Any, side: int, price: int, qty: int) -> Any:
        seq = self._seq()
        return self._process(self._cancel(seq, seq, ACCOUNTS[side], key))

    def resting(self) -> int:
        return self._eng.order_count()

    def best(self) -> tuple[int | None, int | None]:
        return self._eng.best_bid(), self._eng.best_ask()


class MatchingEngine(Adapter):
    name = "matching-engine"
    package = "matching-engine"
    mode = "in-memory MatchingEngine.process: no WAL, no fsync, no sequencer/gateway"
    notes = (
        "matching-engine: driven through MatchingEngine.process(SequencedCommand(...)), the "
        "pure in-memory core its WAL worker calls after fsync; order_id = our client id "
        "(its API takes caller-chosen ids), account 1 buys and 2 sells.",
    )

    def __init__(self) -> None:
        super().__init__()
        from matching_engine.domain import (
            CancelOrder,
            NewOrder,
            OrderType,
            SequencedCommand,
            Side,
            TimeInForce,
        )
        from matching_engine.engine import MatchingEngine as Engine
        from matching_engine.events import OrderRejected, Trade

        self._eng = Engine()
        self._process = self._eng.process
        self._new, self._cancel, self._seqd = NewOrder, CancelOrder, SequencedCommand
        self._trade, self._rejected = Trade, OrderRejected
        self._sides = (None, Side.BUY, Side.SELL)
        self._limit, self._gtc, self._ioc = OrderType.LIMIT, TimeInForce.GTC, TimeInForce.IOC
        self._seq = itertools.count(1).__next__

    def observe(self, kind: int, cid: int, result: Any) -> None:
        for ev in result:
            kind_of = type(ev)
            if kind_of is self._trade:
                self.fills += 1
                self.volume += ev.qty
            elif kind_of is self._rejected:
                self.rejects += 1

    def _order(self, key: int, side: int, price: int, qty: int, tif: Any) -> Any:
        seq = self._seq()
        # Its accounts are ints: the side number doubles as the account (1 buys, 2 sells).
        order = self._new(key, side, self._sides[side], price, qty, self._limit, tif)
        return self._process(self._seqd(seq, seq, order))

    def add(self, key: Any, side: int, price: int, qty: int) -> Any:
        return self._order(key, side, price, qty, self._gtc)

    def ioc(self, key: Any, side: int, price: int, qty: int) -> Any:
        return self._order(key, side, price, qty, self._ioc)

    def cancel(self, key: Any, side: int, price: int, qty: int) -> Any:
        seq = self._seq()
        return self._process(self._seqd(seq, seq, self._cancel(key, side)))

    def resting(self) -> int:
        return len(self._eng.book)

    def best(self) -> tuple[int | None, int | None]:
        return self._eng.book.best_bid(), self._eng.book.best_ask()


class LimitOrderBook(Adapter):
    name = "limit-order-book"
    package = "limit-order-book"
    mode = "C++ book via ctypes"
    reports_fills = False
    notes = (
        "limit-order-book: no IOC, so IOC = limit + has() + cancel of any remainder, all "
        "inside the timed command.",
        "limit-order-book: its API reports no trades, so fills are n/a; volume is the drop "
        "in opposite-side resting volume, read outside the timed window.",
    )

    def __init__(self) -> None:
        super().__init__()
        from limit_order_book import LimitOrderBook as Book

        self._book = Book()
        self._limit, self._has, self._cancel = self._book.limit, self._book.has, self._book.cancel
        # Resting volume per side, indexed by side; the taker's opposite is 3 - side.
        self._side_volume = (None, self._book.volume_buy, self._book.volume_sell)
        self._opp_before = 0

    def prepare(self, kind: int, cid: int, side: int) -> Any:
        if kind != CANCEL:
            self._opp_before = self._side_volume[3 - side]()
        return cid

    def observe(self, kind: int, cid: int, result: Any) -> None:
        if kind != CANCEL:
            self.volume += self._opp_before - self._side_volume[3 - result]()

    def add(self, key: Any, side: int, price: int, qty: int) -> Any:
        # Its side flag is True for buy; the returned side lets observe() find the opposite.
        self._limit(side == BUY, key, qty, price)
        return side

    def ioc(self, key: Any, side: int, price: int, qty: int) -> Any:
        self._limit(side == BUY, key, qty, price)
        if self._has(key):
            self._cancel(key)
        return side

    def cancel(self, key: Any, side: int, price: int, qty: int) -> Any:
        self._cancel(key)

    def resting(self) -> int:
        return int(self._book.count())

    def best(self) -> tuple[int | None, int | None]:
        bid, ask = self._book.best_buy(), self._book.best_sell()
        return (bid or None), (ask or None)  # it reports an empty side as price 0


class CythonOrderbook(Adapter):
    name = "cython-orderbook"
    package = "cython-orderbook"
    mode = "Cython book"
    notes = (
        "cython-orderbook: no IOC, so IOC = add_limit_order + cancel_order of any remainder, "
        "inside the timed command; it assigns its own (string) order ids.",
    )

    def __init__(self) -> None:
        super().__init__()
        from cython_orderbook import Order, OrderBook, OrderSide

        self._book = OrderBook()
        self._order = Order
        self._add, self._cancel = self._book.add_limit_order, self._book.cancel_order
        self._sides = (None, OrderSide.BID, OrderSide.ASK)
        self._ids: dict[int, str] = {}  # cid -> its order id

    def prepare(self, kind: int, cid: int, side: int) -> Any:
        return self._ids.pop(cid) if kind == CANCEL else cid

    def observe(self, kind: int, cid: int, result: Any) -> None:
        if kind == ADD:
            self._ids[cid] = result.order_id
        elif kind == CANCEL and not result:
            self.rejects += 1

    def add(self, key: Any, side: int, price: int, qty: int) -> Any:
        order = self._order(self._sides[side], qty, price)
        self._add(order)
        return order

    def ioc(self, key: Any, side: int, price: int, qty: int) -> Any:
        order = self._order(self._sides[side], qty, price)
        self._add(order)
        if order.remaining_quantity:  # whatever is left has rested: take it off again
            self._cancel(order.order_id)
        return order

    def cancel(self, key: Any, side: int, price: int, qty: int) -> Any:
        return self._cancel(key)

    def resting(self) -> int:
        return len(self._book.orders)

    def best(self) -> tuple[int | None, int | None]:
        return self._book.best_bid(), self._book.best_ask()

    def finish(self) -> None:
        log = self._book.trade_log  # one entry per maker-taker match
        self.fills = len(log)
        self.volume = sum(t.quantity_filled for t in log)


class PyOrderbook(Adapter):
    name = "pyorderbook"
    package = "pyorderbook"
    mode = "pure-Python book"
    notes = (
        "pyorderbook: no IOC, so IOC = match() + cancel() of any remainder, inside the timed "
        "command; prices become Decimal and ids uuid4 inside its Order().",
        "pyorderbook: cancel() leaves emptied price levels in its heap, so best bid/ask "
        "are read from its non-empty levels after the run.",
    )

    def __init__(self) -> None:
        super().__init__()
        from pyorderbook import Book, Order, Side

        self._book = Book()
        self._order, self._match, self._cancel = Order, self._book.match, self._book.cancel
        self._sides = (None, Side.BID, Side.ASK)
        self._orders: dict[int, Any] = {}  # cid -> its Order (cancel() takes the object)

    def prepare(self, kind: int, cid: int, side: int) -> Any:
        return self._orders.pop(cid) if kind == CANCEL else cid

    def observe(self, kind: int, cid: int, result: Any) -> None:
        if kind == CANCEL:
            return
        trades = result.trades
        self.fills += len(trades)
        self.volume += sum(t.fill_quantity for t in trades)
        if kind == ADD:
            self._orders[cid] = result.order

    def _new(self, side: int, price: int, qty: int) -> Any:
        return self._order(self._sides[side], "BENCH", price, qty)

    def add(self, key: Any, side: int, price: int, qty: int) -> Any:
        return self._match(self._new(side, price, qty))

    def ioc(self, key: Any, side: int, price: int, qty: int) -> Any:
        blotter = self._match(self._new(side, price, qty))
        if blotter.order.quantity:
            self._cancel(blotter.order)
        return blotter

    def cancel(self, key: Any, side: int, price: int, qty: int) -> Any:
        self._cancel(key)

    def resting(self) -> int:
        return len(self._book.order_map)

    def best(self) -> tuple[int | None, int | None]:
        from pyorderbook import Side

        levels = self._book.level_map["BENCH"]
        bids = [p for p, lvl in levels[Side.BID].items() if lvl.orders]
        asks = [p for p, lvl in levels[Side.ASK].items() if lvl.orders]
        return (int(max(bids)) if bids else None), (int(min(asks)) if asks else None)


ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a for a in (Clobd, MatchingEngine, LimitOrderBook, CythonOrderbook, PyOrderbook)
}
