"""A deliberately simple, list-based model of the matching rules, for the property tests.

It shares nothing with `engine/` but the message vocabulary: resting orders live in one
flat list, and the next maker is found by scanning for the best (price, priority). FOK is
"try it on a copy and keep the copy only if it filled". Slow and obviously right is the
point; the engine must agree with it event for event.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import msgspec

from engine.instrument import Instrument
from engine.messages import (
    Amend,
    CancelReason,
    Command,
    MassCancel,
    NewOrder,
    OrderType,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
)


@dataclass
class MOrder:
    order_id: int
    account: str
    coid: str
    side: int
    price: int
    qty: int
    remaining: int
    stp: int
    post_only: bool
    priority: int


class Model:
    def __init__(self, spec: Instrument) -> None:
        self.spec = spec
        self.book: list[MOrder] = []
        self.next_id = 1
        self.next_trade = 1
        self.next_priority = 1
        self.last_price = 0

    # Events are plain tuples; tests turn engine events into the same shape.
    def process(self, cmd: Command) -> list[tuple]:
        if isinstance(cmd, NewOrder):
            return self._new(cmd)
        if isinstance(cmd, MassCancel):
            mine = sorted((o for o in self.book if o.account == cmd.account), key=lambda o: o.order_id)
            out = []
            for o in mine:
                reason = CancelReason.MASS_CANCEL
                out.append(("Cancelled", o.order_id, o.account, o.coid, o.remaining, reason))
                self.book.remove(o)
            return out
        order = self._find(cmd)
        if order is None:
            return [("Rejected", RejectReason.UNKNOWN_ORDER)]
        if order.account != cmd.account:
            return [("Rejected", RejectReason.NOT_ORDER_OWNER)]
        if isinstance(cmd, Amend):
            return self._amend(cmd, order)
        self.book.remove(order)
        return [("Cancelled", order.order_id, order.account, order.coid, order.remaining, CancelReason.USER)]

    def _find(self, cmd: Command) -> MOrder | None:
        for o in self.book:
            if (cmd.order_id and o.order_id == cmd.order_id) or (
                not cmd.order_id and o.account == cmd.account and o.coid == cmd.orig_client_order_id
            ):
                return o
        return None

    # --- new orders -----------------------------------------------------------------

    def _new(self, cmd: NewOrder) -> list[tuple]:
        problem = self._new_problem(cmd)
        if problem is not None:
            return [("Rejected", problem)]
        market = cmd.order_type == OrderType.MARKET
        tif = TimeInForce.IOC if market and cmd.tif == TimeInForce.GTC else cmd.tif
        price = 0 if market else cmd.price
        taker = MOrder(
            self.next_id,
            cmd.account,
            cmd.client_order_id,
            cmd.side,
            price,
            cmd.qty,
            cmd.qty,
            cmd.stp,
            cmd.post_only,
            self.next_priority,
        )
        self.next_id += 1
        self.next_priority += 1
        out = [
            (
                "Accepted",
                taker.order_id,
                cmd.account,
                cmd.client_order_id,
                cmd.side,
                price,
                cmd.qty,
                cmd.order_type,
                tif,
            )
        ]
        if tif == TimeInForce.FOK:
            trial = copy.deepcopy(self)
            trial_taker = copy.deepcopy(taker)
            trial_events: list[tuple] = []
            trial._match(trial_taker, trial_events)
            filled = sum(e[3] for e in trial_events if e[0] == "Trade")
            if filled != cmd.qty:
                out.append(
                    (
                        "Cancelled",
                        taker.order_id,
                        taker.account,
                        taker.coid,
                        cmd.qty,
                        CancelReason.FOK_UNFILLABLE,
                    )
                )
                return out
            self.__dict__.update(trial.__dict__)
            return out + trial_events
        self._match(taker, out)
        if taker.remaining:
            if tif == TimeInForce.GTC:
                self.book.append(taker)
            else:
                out.append(
                    (
                        "Cancelled",
                        taker.order_id,
                        taker.account,
                        taker.coid,
                        taker.remaining,
                        CancelReason.IOC_REMAINDER,
                    )
                )
        return out

    def _new_problem(self, cmd: NewOrder) -> RejectReason | None:
        if cmd.post_only and cmd.order_type == OrderType.MARKET:
            return RejectReason.INVALID_ORDER_TYPE
        if cmd.post_only and cmd.tif != TimeInForce.GTC:
            return RejectReason.INVALID_TIME_IN_FORCE
        problem = self._qty_problem(cmd.qty)
        if problem is not None:
            return problem
        if cmd.order_type == OrderType.LIMIT:
            problem = self._price_problem(cmd.price)
            if problem is not None:
                return problem
        if any(o.account == cmd.account and o.coid == cmd.client_order_id for o in self.book):
            return RejectReason.DUPLICATE_CLIENT_ORDER_ID
        if cmd.post_only and self._best_against(cmd.side, cmd.price) is not None:
            return RejectReason.POST_ONLY_WOULD_TAKE
        return None

    def _qty_problem(self, qty: int) -> RejectReason | None:
        if qty <= 0:
            return RejectReason.INVALID_QUANTITY
        if qty % self.spec.lot_size:
            return RejectReason.QUANTITY_OFF_LOT
        if not self.spec.min_qty <= qty <= self.spec.max_qty:
            return RejectReason.QUANTITY_OUT_OF_RANGE
        return None

    def _price_problem(self, price: int) -> RejectReason | None:
        if price <= 0:
            return RejectReason.INVALID_PRICE
        if price % self.spec.tick_size:
            return RejectReason.PRICE_OFF_TICK
        low, high = self.spec.min_price, self.spec.max_price
        if self.spec.band_bps and self.last_price:
            low = max(low, self.last_price * (10_000 - self.spec.band_bps) // 10_000)
            high = min(high, -(-self.last_price * (10_000 + self.spec.band_bps) // 10_000))
        if not low <= price <= high:
            return RejectReason.PRICE_OUT_OF_BAND
        return None

    # --- matching -------------------------------------------------------------------

    def _best_against(self, side: int, price: int) -> MOrder | None:
        """The resting order an incoming `side` order at `price` (0 = market) trades with first."""
        buy = side == Side.BUY
        candidates = [
            o
            for o in self.book
            if o.side != side and (price == 0 or (o.price <= price if buy else o.price >= price))
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda o: (o.price if buy else -o.price, o.priority))

    def _match(self, taker: MOrder, out: list[tuple]) -> None:
        while taker.remaining:
            maker = self._best_against(taker.side, taker.price)
            if maker is None:
                return
            if maker.account == taker.account:
                self._self_trade(taker, maker, out)
                continue
            qty = min(taker.remaining, maker.remaining)
            taker.remaining -= qty
            maker.remaining -= qty
            self.last_price = maker.price
            out.append(
                (
                    "Trade",
                    self.next_trade,
                    maker.price,
                    qty,
                    taker.side,
                    maker.order_id,
                    maker.account,
                    maker.remaining,
                    taker.order_id,
                    taker.account,
                    taker.remaining,
                )
            )
            self.next_trade += 1
            if not maker.remaining:
                self.book.remove(maker)
                out.append(("Filled", maker.order_id, maker.account, maker.coid, maker.qty))
            if not taker.remaining:
                out.append(("Filled", taker.order_id, taker.account, taker.coid, taker.qty))

    def _self_trade(self, taker: MOrder, maker: MOrder, out: list[tuple]) -> None:
        mode = taker.stp
        if mode == SelfTradePrevention.DECREMENT_AND_CANCEL:
            qty = min(taker.remaining, maker.remaining)
            for o in (maker, taker):
                if o.remaining == qty:
                    out.append(("Cancelled", o.order_id, o.account, o.coid, qty, CancelReason.SELF_TRADE))
                    o.remaining = 0
                    if o is maker:
                        self.book.remove(o)
                else:
                    o.remaining -= qty
                    o.qty -= qty
                    out.append(("Amended", o.order_id, o.account, o.coid, o.price, o.qty, o.remaining, True))
            return
        if mode in (SelfTradePrevention.CANCEL_OLDEST, SelfTradePrevention.CANCEL_BOTH):
            out.append(
                (
                    "Cancelled",
                    maker.order_id,
                    maker.account,
                    maker.coid,
                    maker.remaining,
                    CancelReason.SELF_TRADE,
                )
            )
            self.book.remove(maker)
        if mode in (SelfTradePrevention.CANCEL_NEWEST, SelfTradePrevention.CANCEL_BOTH):
            out.append(
                (
                    "Cancelled",
                    taker.order_id,
                    taker.account,
                    taker.coid,
                    taker.remaining,
                    CancelReason.SELF_TRADE,
                )
            )
            taker.remaining = 0

    # --- amend ----------------------------------------------------------------------

    def _amend(self, cmd: Amend, order: MOrder) -> list[tuple]:
        price = cmd.price or order.price
        qty = cmd.qty or order.qty
        problem = self._qty_problem(qty)
        if problem is None and price != order.price:
            problem = self._price_problem(price)
        if problem is None and price == order.price and qty == order.qty:
            problem = RejectReason.AMEND_NO_CHANGE
        filled = order.qty - order.remaining
        if problem is None and qty <= filled:
            problem = RejectReason.AMEND_QUANTITY_TOO_LOW
        if (
            problem is None
            and order.post_only
            and price != order.price
            and self._best_against(order.side, price) is not None
        ):
            problem = RejectReason.POST_ONLY_WOULD_TAKE
        if problem is not None:
            return [("Rejected", problem)]
        if price == order.price and qty < order.qty:
            order.remaining -= order.qty - qty
            order.qty = qty
            return [("Amended", order.order_id, order.account, order.coid, price, qty, order.remaining, True)]
        self.book.remove(order)
        order.price, order.qty, order.remaining = price, qty, qty - filled
        order.priority = self.next_priority
        self.next_priority += 1
        out = [("Amended", order.order_id, order.account, order.coid, price, qty, order.remaining, False)]
        self._match(order, out)
        if order.remaining:
            self.book.append(order)
        return out

    # --- views ----------------------------------------------------------------------

    def resting(self, side: int) -> list[tuple[int, int, int]]:
        """(order_id, price, remaining) in the order they would trade."""
        buy = side == Side.BUY
        mine = [o for o in self.book if o.side == side]
        mine.sort(key=lambda o: (-o.price if buy else o.price, o.priority))
        return [(o.order_id, o.price, o.remaining) for o in mine]


def normalise(events: list) -> list[tuple]:
    """Engine events in the model's shape: rejects compare by code only (texts are prose)."""
    out = []
    for e in events:
        name = type(e).__name__
        out.append((name, e.reason) if name == "Rejected" else (name, *msgspec.structs.astuple(e)))
    return out
