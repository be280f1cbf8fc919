"""The matching engine: one instrument's book as a deterministic state machine.

`Engine.process(command) -> list[event]` is the whole interface that changes state. It
reads no clock (time comes stamped on the command), no randomness, no environment, and
iterates only ordered containers, so the same commands give the same events and the same
`state_hash()` on any machine.

Rules, in one place:
- strict price-time priority; a trade prints at the resting (maker) order's price;
- market orders never rest; IOC remainders are cancelled; FOK fills in full or is
  cancelled without touching the book; post-only is rejected if it would take;
- self-trade prevention follows the incoming order's mode;
- an invalid command yields one `Rejected` event and changes nothing but `last_seq`.
"""

from __future__ import annotations

import hashlib

import msgspec

from engine.book import BookSide, Level, Order
from engine.instrument import Instrument
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    Cancelled,
    CancelReason,
    Checkpoint,
    Command,
    Event,
    Filled,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    RestingOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Trade,
)

BUY = Side.BUY
SELL = Side.SELL
LIMIT = OrderType.LIMIT
MARKET = OrderType.MARKET
GTC = TimeInForce.GTC
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK
STP_NEWEST = SelfTradePrevention.CANCEL_NEWEST
STP_OLDEST = SelfTradePrevention.CANCEL_OLDEST
STP_BOTH = SelfTradePrevention.CANCEL_BOTH
STP_DECREMENT = SelfTradePrevention.DECREMENT_AND_CANCEL
# Every valid (side, order type, time in force, stp, post-only) combination: one set
# lookup validates them all on the hot path; `_kind_problem` explains a miss.
_VALID_KINDS = frozenset(
    (side, order_type, tif, stp, post_only)
    for side in Side
    for order_type in OrderType
    for tif in TimeInForce
    for stp in SelfTradePrevention
    for post_only in (False, True)
    if not post_only or (order_type == LIMIT and tif == GTC)
)

_encode = msgspec.msgpack.Encoder().encode


class Engine:
    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self._handlers = {
            NewOrder: self._new_order,
            Cancel: self._cancel,
            Amend: self._amend,
            MassCancel: self._mass_cancel,
        }
        self._clear()

    def _clear(self) -> None:
        self.bids = BookSide(is_bid=True)
        self.asks = BookSide(is_bid=False)
        self.orders: dict[int, Order] = {}
        # account -> client_order_id -> resting order
        self.accounts: dict[str, dict[str, Order]] = {}
        self.next_order_id = 1
        self.next_trade_id = 1
        self.last_trade_price = 0
        self.last_seq = 0
        self.last_ts = 0

    # --- the state transition ---------------------------------------------------------

    def process(self, command: Command) -> list[Event]:
        self.last_seq = command.seq
        self.last_ts = command.ts
        return self._handlers[type(command)](command)

    def _new_order(self, cmd: NewOrder) -> list[Event]:
        reason = self._order_problem(cmd)
        if reason is not None:
            return [Rejected(cmd.account, cmd.client_order_id, reason[0], reason[1])]
        order_type = cmd.order_type
        tif = cmd.tif
        if order_type == MARKET:
            price = 0
            if tif == GTC:
                tif = IOC  # a market order never rests
        else:
            price = cmd.price
        side = cmd.side
        if cmd.post_only and self._crosses(side, price):
            return [
                Rejected(
                    cmd.account,
                    cmd.client_order_id,
                    RejectReason.POST_ONLY_WOULD_TAKE,
                    "post-only order would take liquidity",
                )
            ]
        order_id = self.next_order_id
        self.next_order_id = order_id + 1
        qty = cmd.qty
        order = Order(
            order_id,
            cmd.account,
            cmd.client_order_id,
            side,
            price,
            qty,
            qty,
            cmd.stp,
            cmd.post_only,
            cmd.ts,
        )
        events: list[Event] = [
            Accepted(order_id, cmd.account, cmd.client_order_id, side, price, qty, order_type, tif)
        ]
        if tif == FOK and not self._fillable(order):
            events.append(
                Cancelled(order_id, order.account, order.client_order_id, qty, CancelReason.FOK_UNFILLABLE)
            )
            return events
        self._execute(order, events)
        if order.remaining:
            if tif == GTC:
                self._rest(order)
            else:
                events.append(
                    Cancelled(
                        order_id,
                        order.account,
                        order.client_order_id,
                        order.remaining,
                        CancelReason.IOC_REMAINDER,
                    )
                )
        return events

    def _cancel(self, cmd: Cancel) -> list[Event]:
        order, rejected = self._owned_order(cmd)
        if order is None:
            return [rejected]
        events: list[Event] = []
        self._cancel_resting(order, CancelReason.USER, events)
        return events

    def _amend(self, cmd: Amend) -> list[Event]:
        order, rejected = self._owned_order(cmd)
        if order is None:
            return [rejected]
        price = cmd.price or order.price
        qty = cmd.qty or order.qty
        problem = self._amend_problem(order, price, qty)
        if problem is not None:
            return [Rejected(cmd.account, order.client_order_id, problem[0], problem[1], order.order_id)]
        if price == order.price and qty < order.qty:
            return [self._reduce(order, order.qty - qty)]
        return self._replace(order, price, qty, cmd.ts)

    def _mass_cancel(self, cmd: MassCancel) -> list[Event]:
        events: list[Event] = []
        # By order id, not dict order: an amend re-inserts and a restore rebuilds the dict,
        # and neither may change which order a mass cancel reports first.
        mine = sorted(self.accounts.get(cmd.account, {}).values(), key=_order_id)
        for order in mine:
            self._cancel_resting(order, CancelReason.MASS_CANCEL, events)
        return events

    # --- matching ---------------------------------------------------------------------

    def _execute(self, taker: Order, events: list[Event]) -> None:
        """Match `taker` against the opposite side until it is filled, stopped by price, or
        cancelled by self-trade prevention."""
        is_buy = taker.side == BUY
        opposite = self.asks if is_buy else self.bids
        limit = taker.price
        while taker.remaining:
            level = opposite.best
            if level is None:
                break
            if limit and (level.price > limit if is_buy else level.price < limit):
                break
            self._match_level(taker, level, opposite, events)

    def _match_level(self, taker: Order, level: Level, side: BookSide, events: list[Event]) -> None:
        # Whoever empties a level drops it: here for fills, in `_unlink` for cancels.
        price = level.price
        taker_account = taker.account
        while taker.remaining and level.live:
            maker = level.head()
            if maker.account == taker_account:
                self._prevent_self_trade(taker, maker, events)
                continue
            qty = taker.remaining if taker.remaining < maker.remaining else maker.remaining
            taker.remaining -= qty
            maker.remaining -= qty
            level.total -= qty
            trade_id = self.next_trade_id
            self.next_trade_id = trade_id + 1
            self.last_trade_price = price
            events.append(
                Trade(
                    trade_id,
                    price,
                    qty,
                    taker.side,
                    maker.order_id,
                    maker.account,
                    maker.remaining,
                    taker.order_id,
                    taker_account,
                    taker.remaining,
                )
            )
            if not maker.remaining:
                level.queue.popleft()
                level.live -= 1
                maker.level = None
                self._forget(maker)
                if not level.live:
                    side.drop(level)
                events.append(Filled(maker.order_id, maker.account, maker.client_order_id, maker.qty))
            if not taker.remaining:
                events.append(Filled(taker.order_id, taker_account, taker.client_order_id, taker.qty))

    def _prevent_self_trade(self, taker: Order, maker: Order, events: list[Event]) -> None:
        mode = taker.stp
        if mode == STP_DECREMENT:
            qty = taker.remaining if taker.remaining < maker.remaining else maker.remaining
            self._decrement(maker, qty, events)
            self._decrement(taker, qty, events)
            return
        if mode != STP_NEWEST:  # oldest or both
            self._cancel_resting(maker, CancelReason.SELF_TRADE, events)
        if mode != STP_OLDEST:  # newest or both
            events.append(
                Cancelled(
                    taker.order_id,
                    taker.account,
                    taker.client_order_id,
                    taker.remaining,
                    CancelReason.SELF_TRADE,
                )
            )
            taker.remaining = 0

    def _decrement(self, order: Order, qty: int, events: list[Event]) -> None:
        """Self-trade decrement: shrink without trading; an order shrunk to 0 is cancelled."""
        if qty == order.remaining:
            if order.level is not None:
                self._cancel_resting(order, CancelReason.SELF_TRADE, events)
            else:
                events.append(
                    Cancelled(
                        order.order_id, order.account, order.client_order_id, qty, CancelReason.SELF_TRADE
                    )
                )
                order.remaining = 0
            return
        if order.level is not None:
            order.level.total -= qty
        order.remaining -= qty
        order.qty -= qty
        events.append(
            Amended(
                order.order_id,
                order.account,
                order.client_order_id,
                order.price,
                order.qty,
                order.remaining,
                True,
            )
        )

    def _fillable(self, taker: Order) -> bool:
        """Would `taker` fill completely? Mirrors `_execute` without changing anything."""
        is_buy = taker.side == BUY
        limit = taker.price
        need = taker.remaining
        skip_self = taker.stp == STP_OLDEST  # those makers get cancelled, matching goes on
        for level in (self.asks if is_buy else self.bids).levels_best_first():
            if limit and (level.price > limit if is_buy else level.price < limit):
                return False
            for maker in level.orders():
                if maker.account == taker.account:
                    if skip_self:
                        continue
                    return False  # matching stops (or shrinks the taker) here
                need -= maker.remaining
                if need <= 0:
                    return True
        return False

    def _crosses(self, side: int, price: int) -> bool:
        level = (self.asks if side == BUY else self.bids).best
        if level is None:
            return False
        return level.price <= price if side == BUY else level.price >= price

    # --- resting orders ---------------------------------------------------------------

    def _rest(self, order: Order) -> None:
        side = self.bids if order.side == BUY else self.asks
        side.level_for(order.price).append(order)
        self.orders[order.order_id] = order
        by_client = self.accounts.get(order.account)
        if by_client is None:
            by_client = self.accounts[order.account] = {}
        by_client[order.client_order_id] = order

    def _cancel_resting(self, order: Order, reason: CancelReason, events: list[Event]) -> None:
        events.append(
            Cancelled(order.order_id, order.account, order.client_order_id, order.remaining, reason)
        )
        self._unlink(order)

    def _unlink(self, order: Order) -> None:
        level = order.level
        level.kill(order)
        if not level.live:
            (self.bids if order.side == BUY else self.asks).drop(level)
        self._forget(order)

    def _forget(self, order: Order) -> None:
        del self.orders[order.order_id]
        by_client = self.accounts[order.account]
        del by_client[order.client_order_id]
        if not by_client:
            del self.accounts[order.account]

    def _reduce(self, order: Order, delta: int) -> Amended:
        order.qty -= delta
        order.remaining -= delta
        order.level.total -= delta
        return Amended(
            order.order_id,
            order.account,
            order.client_order_id,
            order.price,
            order.qty,
            order.remaining,
            True,
        )

    def _replace(self, order: Order, price: int, qty: int, ts: int) -> list[Event]:
        """Price change or size increase: the order loses its place and may trade at once."""
        filled = order.qty - order.remaining
        self._unlink(order)
        # A fresh object, because the old one may still sit (dead) in its level's queue.
        moved = Order(
            order.order_id,
            order.account,
            order.client_order_id,
            order.side,
            price,
            qty,
            qty - filled,
            order.stp,
            order.post_only,
            ts,
        )
        events: list[Event] = [
            Amended(moved.order_id, moved.account, moved.client_order_id, price, qty, moved.remaining, False)
        ]
        self._execute(moved, events)
        if moved.remaining:
            self._rest(moved)
        return events

    # --- validation -------------------------------------------------------------------

    def _order_problem(self, cmd: NewOrder) -> tuple[RejectReason, str] | None:
        if (cmd.side, cmd.order_type, cmd.tif, cmd.stp, cmd.post_only) not in _VALID_KINDS:
            return _kind_problem(cmd)
        if type(cmd.account) is not str or type(cmd.client_order_id) is not str or not cmd.client_order_id:
            return RejectReason.INVALID_FIELD, "account and client_order_id must be non-empty strings"
        problem = self._qty_problem(cmd.qty)
        if problem is None and cmd.order_type == LIMIT:
            problem = self._price_problem(cmd.price)
        if problem is not None:
            return problem
        by_client = self.accounts.get(cmd.account)
        if by_client is not None and cmd.client_order_id in by_client:
            return (
                RejectReason.DUPLICATE_CLIENT_ORDER_ID,
                f"client_order_id {cmd.client_order_id!r} is already open for this account",
            )
        return None

    def _qty_problem(self, qty: int) -> tuple[RejectReason, str] | None:
        spec = self.instrument
        if type(qty) is not int or qty <= 0:
            return RejectReason.INVALID_QUANTITY, f"quantity must be a positive integer, got {qty!r}"
        if qty % spec.lot_size:
            return (
                RejectReason.QUANTITY_OFF_LOT,
                f"quantity {qty} is not a multiple of lot size {spec.lot_size}",
            )
        if qty < spec.min_qty or qty > spec.max_qty:
            return (
                RejectReason.QUANTITY_OUT_OF_RANGE,
                f"quantity {qty} outside [{spec.min_qty}, {spec.max_qty}]",
            )
        return None

    def _price_problem(self, price: int) -> tuple[RejectReason, str] | None:
        spec = self.instrument
        if type(price) is not int or price <= 0:
            return RejectReason.INVALID_PRICE, f"limit price must be a positive integer, got {price!r}"
        if price % spec.tick_size:
            return (
                RejectReason.PRICE_OFF_TICK,
                f"price {price} is not a multiple of tick size {spec.tick_size}",
            )
        low, high = self.price_band()
        if price < low or price > high:
            return RejectReason.PRICE_OUT_OF_BAND, f"price {price} outside band [{low}, {high}]"
        return None

    def _amend_problem(self, order: Order, price: int, qty: int) -> tuple[RejectReason, str] | None:
        problem = self._qty_problem(qty)
        if problem is None and price != order.price:
            problem = self._price_problem(price)
        if problem is not None:
            return problem
        if price == order.price and qty == order.qty:
            return RejectReason.AMEND_NO_CHANGE, "amend changes neither price nor quantity"
        filled = order.qty - order.remaining
        if qty <= filled:
            return (
                RejectReason.AMEND_QUANTITY_TOO_LOW,
                f"new quantity {qty} does not exceed the {filled} already filled",
            )
        if order.post_only and price != order.price and self._crosses(order.side, price):
            return RejectReason.POST_ONLY_WOULD_TAKE, "post-only order would take liquidity"
        return None

    def _owned_order(self, cmd: Cancel | Amend) -> tuple[Order | None, Rejected | None]:
        if cmd.order_id:
            order = self.orders.get(cmd.order_id)
        else:
            order = self.accounts.get(cmd.account, {}).get(cmd.orig_client_order_id)
        if order is None:
            return None, Rejected(
                cmd.account,
                cmd.orig_client_order_id,
                RejectReason.UNKNOWN_ORDER,
                "no such open order",
                cmd.order_id,
            )
        if order.account != cmd.account:
            return None, Rejected(
                cmd.account,
                cmd.orig_client_order_id,
                RejectReason.NOT_ORDER_OWNER,
                "order belongs to another account",
                cmd.order_id,
            )
        return order, None

    def price_band(self) -> tuple[int, int]:
        """Limit prices accepted now: the static band, narrowed around the last trade."""
        spec = self.instrument
        low, high = spec.min_price, spec.max_price
        if spec.band_bps and self.last_trade_price:
            ref = self.last_trade_price
            low = max(low, ref * (10_000 - spec.band_bps) // 10_000)
            high = min(high, -(-ref * (10_000 + spec.band_bps) // 10_000))
        return low, high

    # --- views ------------------------------------------------------------------------

    def order_count(self) -> int:
        return len(self.orders)

    def best_bid(self) -> int | None:
        level = self.bids.best
        return None if level is None else level.price

    def best_ask(self) -> int | None:
        level = self.asks.best
        return None if level is None else level.price

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top `n` aggregated levels per side, best first: ([(price, qty)], [(price, qty)])."""
        return _top(self.bids, n), _top(self.asks, n)

    def order(self, order_id: int) -> RestingOrder | None:
        order = self.orders.get(order_id)
        return None if order is None else _resting(order)

    # --- state ------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            symbol=self.instrument.symbol,
            bids=_resting_orders(self.bids),
            asks=_resting_orders(self.asks),
            next_order_id=self.next_order_id,
            next_trade_id=self.next_trade_id,
            last_trade_price=self.last_trade_price,
            last_seq=self.last_seq,
            last_ts=self.last_ts,
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Replace the whole state with `checkpoint`'s."""
        if checkpoint.symbol != self.instrument.symbol:
            raise ValueError(f"checkpoint is for {checkpoint.symbol}, not {self.instrument.symbol}")
        self._clear()
        for r in (*checkpoint.bids, *checkpoint.asks):
            self._rest(
                Order(
                    r.order_id,
                    r.account,
                    r.client_order_id,
                    r.side,
                    r.price,
                    r.qty,
                    r.remaining,
                    r.stp,
                    r.post_only,
                    r.ts,
                )
            )
        self.next_order_id = checkpoint.next_order_id
        self.next_trade_id = checkpoint.next_trade_id
        self.last_trade_price = checkpoint.last_trade_price
        self.last_seq = checkpoint.last_seq
        self.last_ts = checkpoint.last_ts

    def state_hash(self) -> str:
        """SHA-256 of the canonical msgpack encoding of `checkpoint()`.

        msgpack of array-like structs of ints and strings has exactly one encoding, so the
        digest depends on the state alone — not on the machine, the Python build or the run.
        """
        return hashlib.sha256(_encode(self.checkpoint())).hexdigest()


def _kind_problem(cmd: NewOrder) -> tuple[RejectReason, str]:
    if cmd.side not in frozenset(Side):
        return RejectReason.INVALID_SIDE, f"side must be 1 (buy) or 2 (sell), got {cmd.side!r}"
    if cmd.order_type not in frozenset(OrderType):
        return RejectReason.INVALID_ORDER_TYPE, f"unknown order type {cmd.order_type!r}"
    if cmd.tif not in frozenset(TimeInForce):
        return RejectReason.INVALID_TIME_IN_FORCE, f"unknown time in force {cmd.tif!r}"
    if cmd.stp not in frozenset(SelfTradePrevention):
        return RejectReason.INVALID_STP_MODE, f"unknown self-trade prevention mode {cmd.stp!r}"
    if cmd.order_type == MARKET:
        return RejectReason.INVALID_ORDER_TYPE, "a market order cannot be post-only"
    return RejectReason.INVALID_TIME_IN_FORCE, "post-only orders must be GTC"


def _order_id(order: Order) -> int:
    return order.order_id


def _resting(order: Order) -> RestingOrder:
    return RestingOrder(
        order.order_id,
        order.account,
        order.client_order_id,
        Side(order.side),
        order.price,
        order.qty,
        order.remaining,
        SelfTradePrevention(order.stp),
        order.post_only,
        order.ts,
    )


def _resting_orders(side: BookSide) -> list[RestingOrder]:
    return [_resting(o) for level in side.levels_best_first() for o in level.orders()]


def _top(side: BookSide, n: int) -> list[tuple[int, int]]:
    out = []
    for level in side.levels_best_first():
        if len(out) >= n:
            break
        out.append((level.price, level.total))
    return out
