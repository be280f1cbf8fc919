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

Commands are trusted to have the field *types* their structs declare (msgspec decoding
guarantees it); every field *value* is checked here.

This module and `engine.book` are plain, typed Python that mypyc compiles when the
package is installed (see setup.py); the source stays importable and tested as is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import msgspec

from engine.book import BookSide, Level, Order, OrderId
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

# Compiled code looks an imported name up in the module's dict each time it is used, and
# an enum member on its class after that: 100-300 instructions a time, about ten times per
# order (30% of the engine's instructions, counted with callgrind). A `Final` name is
# a C static, read in one instruction, so the hot path names enum members and message
# classes through these aliases.
BUY: Final = Side.BUY
MARKET: Final = OrderType.MARKET
GTC: Final = TimeInForce.GTC
IOC: Final = TimeInForce.IOC
FOK: Final = TimeInForce.FOK
STP_NEWEST: Final = SelfTradePrevention.CANCEL_NEWEST
STP_OLDEST: Final = SelfTradePrevention.CANCEL_OLDEST
STP_DECREMENT: Final = SelfTradePrevention.DECREMENT_AND_CANCEL

CANCEL_USER: Final = CancelReason.USER
CANCEL_IOC: Final = CancelReason.IOC_REMAINDER
CANCEL_FOK: Final = CancelReason.FOK_UNFILLABLE
CANCEL_SELF_TRADE: Final = CancelReason.SELF_TRADE
CANCEL_MASS: Final = CancelReason.MASS_CANCEL

_NewOrder: Final = NewOrder
_Cancel: Final = Cancel
_Amend: Final = Amend
_MassCancel: Final = MassCancel
_Accepted: Final = Accepted
_Rejected: Final = Rejected
_Trade: Final = Trade
_Cancelled: Final = Cancelled
_Amended: Final = Amended
_Filled: Final = Filled
_RestingOrder: Final = RestingOrder
_Side: Final = Side
_OrderType: Final = OrderType
_TimeInForce: Final = TimeInForce
_SelfTradePrevention: Final = SelfTradePrevention

# Finished orders kept for reuse (see `Engine.spare`): enough to absorb a burst of fills
# and cancels, few enough (about 0.6 MiB) not to hold memory after one.
_SPARE_ORDERS: Final = 4096

_Kind = tuple[Side, OrderType, TimeInForce, SelfTradePrevention]


# Every valid (side, type, tif, stp), keyed by raw values, so that a command built with
# plain ints is validated and turned into enum members by one lookup.
_KINDS: Final[dict[tuple[Any, ...], _Kind]] = {
    (side, order_type, tif, stp): (side, order_type, tif, stp)
    for side in Side
    for order_type in OrderType
    for tif in TimeInForce
    for stp in SelfTradePrevention
}

# A command's fields as one tuple, in the struct's declared (wire) order. `astuple` reads
# them all in one C call; compiled code would otherwise pay a generic attribute lookup per
# field. Enum fields are `Any`: they may hold raw ints until `_KINDS` has checked them.
# tests/engine/test_build.py pins these orders against messages.py.
_fields: Final[Callable[[Command], Any]] = msgspec.structs.astuple
_NewOrderFields = tuple[int, int, str, str, Any, int, int, Any, Any, Any, Any]
_CancelFields = tuple[int, int, str, OrderId, str]
_AmendFields = tuple[int, int, str, OrderId, str, int, int]
_MassCancelFields = tuple[int, int, str]

_SIDES: Final = frozenset(Side)
_ORDER_TYPES: Final = frozenset(OrderType)
_TIFS: Final = frozenset(TimeInForce)
_STPS: Final = frozenset(SelfTradePrevention)

_REJECT_TEXT: Final = {
    RejectReason.INVALID_SIDE: "side must be 1 (buy) or 2 (sell)",
    RejectReason.INVALID_ORDER_TYPE: "order type must be 1 (limit) or 2 (market); market can't be post-only",
    RejectReason.INVALID_TIME_IN_FORCE: "time in force must be 1 (GTC), 2 (IOC), 3 (FOK); post-only is GTC",
    RejectReason.INVALID_STP_MODE: "self-trade prevention must be 1..4",
    RejectReason.INVALID_FIELD: "client_order_id must not be empty",
    RejectReason.INVALID_QUANTITY: "quantity {qty} must be positive",
    RejectReason.QUANTITY_OFF_LOT: "quantity {qty} is not a multiple of the lot size",
    RejectReason.QUANTITY_OUT_OF_RANGE: "quantity {qty} is outside the instrument's min/max quantity",
    RejectReason.INVALID_PRICE: "limit price {price} must be positive",
    RejectReason.PRICE_OFF_TICK: "price {price} is not a multiple of the tick size",
    RejectReason.PRICE_OUT_OF_BAND: "price {price} is outside the price band",
    RejectReason.POST_ONLY_WOULD_TAKE: "post-only order would take liquidity",
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: "client_order_id is already open for this account",
    RejectReason.UNKNOWN_ORDER: "no such open order",
    RejectReason.NOT_ORDER_OWNER: "order belongs to another account",
    RejectReason.AMEND_NO_CHANGE: "amend changes neither price nor quantity",
    RejectReason.AMEND_QUANTITY_TOO_LOW: "new quantity {qty} does not exceed the quantity already filled",
}
_encode: Final = msgspec.msgpack.Encoder().encode


class Engine:
    instrument: Instrument
    bids: BookSide
    asks: BookSide
    orders: dict[OrderId, Order]
    # Finished orders, linked by `next`, refilled for new ones: making and freeing a
    # 160-byte tracked object per order (allocator, GC lists, a decref per field) cost
    # more than refilling a warm one.
    spare: Order | None
    spare_count: int
    accounts: dict[str, dict[str, Order]]  # account -> client_order_id -> resting order (kept)
    next_order_id: int
    next_trade_id: int
    last_trade_price: int
    last_seq: int
    last_ts: int

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        # Read on every order; kept as plain ints rather than looked up on the spec.
        self._tick = instrument.tick_size
        self._lot = instrument.lot_size
        self._min_qty = instrument.min_qty
        self._max_qty = instrument.max_qty
        self._min_price = instrument.min_price
        self._max_price = instrument.max_price
        self._band_bps = instrument.band_bps
        self._clear()

    def _clear(self) -> None:
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.orders = {}
        self.accounts = {}
        self.spare = None
        self.spare_count = 0
        self.next_order_id = 1
        self.next_trade_id = 1
        self.last_trade_price = 0
        self.last_seq = 0
        self.last_ts = 0

    # --- the state transition ---------------------------------------------------------

    def process(self, command: Command) -> list[Event]:
        kind = type(command)
        if kind is _NewOrder:
            return self._new_order(_fields(command))
        if kind is _Cancel:
            return self._cancel(_fields(command))
        if kind is _Amend:
            return self._amend(_fields(command))
        if kind is _MassCancel:
            return self._mass_cancel(_fields(command))
        raise TypeError(f"not a command: {command!r}")

    def _new_order(self, fields: _NewOrderFields) -> list[Event]:
        seq, ts, account, coid, raw_side, qty, price, raw_type, raw_tif, raw_post_only, raw_stp = fields
        self.last_seq = seq
        self.last_ts = ts
        side: Side
        order_type: OrderType
        tif: TimeInForce
        stp: SelfTradePrevention
        if (
            type(raw_side) is _Side
            and type(raw_type) is _OrderType
            and type(raw_tif) is _TimeInForce
            and type(raw_stp) is _SelfTradePrevention
        ):
            side, order_type, tif, stp = raw_side, raw_type, raw_tif, raw_stp  # members: valid
        else:
            kind = _KINDS.get((raw_side, raw_type, raw_tif, raw_stp))  # raw ints, maybe invalid
            if kind is None:
                return [_kind_rejected(account, coid, raw_side, raw_type, raw_tif, raw_stp)]
            side, order_type, tif, stp = kind
        post_only = bool(raw_post_only)
        market = order_type is MARKET
        if post_only and (market or tif is not GTC):
            return [_kind_rejected(account, coid, side, order_type, tif, stp)]
        if market and tif is GTC:
            tif = IOC  # a market order never rests
        mine = self.accounts.get(account)
        rejected = self._order_rejected(mine, account, coid, qty, price, market)
        if rejected is not None:
            return [rejected]
        if market:
            price = 0
        elif post_only and self._crosses(side, price):
            return [_rejected(account, coid, RejectReason.POST_ONLY_WOULD_TAKE, 0)]
        next_id = self.next_order_id
        self.next_order_id = next_id + 1
        order_id: OrderId = next_id  # boxed here, once (see OrderId)
        order = self._make_order(order_id, account, coid, side, price, qty, stp, post_only, ts)
        events: list[Event] = [_Accepted(order_id, account, coid, side, price, qty, order_type, tif)]
        if tif is FOK and not self._fillable(order):
            events.append(_Cancelled(order_id, account, coid, qty, CANCEL_FOK))
        else:
            self._execute(order, events)
            if order.remaining and tif is GTC:
                self._rest(order, self._account_index(account) if mine is None else mine)
                return events
            if order.remaining:
                events.append(_Cancelled(order_id, account, coid, order.remaining, CANCEL_IOC))
        self._recycle(order)
        return events

    def _cancel(self, fields: _CancelFields) -> list[Event]:
        seq, ts, account, order_id, orig_coid = fields
        self.last_seq = seq
        self.last_ts = ts
        found = self._owned_order(account, order_id, orig_coid)
        if not isinstance(found, Order):
            return [found]
        events: list[Event] = []
        self._cancel_resting(found, CANCEL_USER, events)
        return events

    def _amend(self, fields: _AmendFields) -> list[Event]:
        seq, ts, account, order_id, orig_coid, new_price, new_qty = fields
        self.last_seq = seq
        self.last_ts = ts
        found = self._owned_order(account, order_id, orig_coid)
        if not isinstance(found, Order):
            return [found]
        order = found
        price = new_price or order.price
        qty = new_qty or order.qty
        problem = self._amend_problem(order, price, qty)
        if problem is not None:
            return [_rejected(account, order.client_order_id, problem, order.order_id, price, qty)]
        if price == order.price and qty < order.qty:
            return [self._reduce(order, order.qty - qty)]
        return self._replace(order, price, qty, ts)

    def _mass_cancel(self, fields: _MassCancelFields) -> list[Event]:
        seq, ts, account = fields
        self.last_seq = seq
        self.last_ts = ts
        events: list[Event] = []
        mine = self.accounts.get(account)
        if mine is None:
            return events
        # By order id, not dict order: an amend re-inserts and a restore rebuilds the dict,
        # and neither may change which order a mass cancel reports first.
        for order in sorted(mine.values(), key=_order_id):
            self._cancel_resting(order, CANCEL_MASS, events)
        return events

    # --- matching ---------------------------------------------------------------------

    def _execute(self, taker: Order, events: list[Event]) -> None:
        """Match `taker` until it is filled, stopped by price, or cancelled by STP."""
        is_buy = taker.side is BUY
        opposite = self.asks if is_buy else self.bids
        limit = taker.price  # 0 for a market order: no limit
        while taker.remaining:
            level = opposite.best
            if level is None:
                return
            if limit and (level.price > limit if is_buy else level.price < limit):
                return
            self._match_level(taker, level, opposite, events)

    def _match_level(self, taker: Order, level: Level, side: BookSide, events: list[Event]) -> None:
        # Whoever empties a level drops it: here for fills, in `_unlink` for cancels.
        price = level.price
        taker_account = taker.account
        while taker.remaining:
            maker = level.head
            if maker is None:
                return
            if maker.account == taker_account:
                self._prevent_self_trade(taker, maker, events)
                continue
            qty = taker.remaining if taker.remaining < maker.remaining else maker.remaining
            taker.remaining -= qty
            level.shrink(maker, qty)
            trade_id = self.next_trade_id
            self.next_trade_id = trade_id + 1
            self.last_trade_price = price
            events.append(
                _Trade(
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
                level.remove(maker)
                self._forget(maker)
                events.append(_Filled(maker.order_id, maker.account, maker.client_order_id, maker.qty))
                self._recycle(maker)
                if not level.live:
                    side.drop(level)
            if not taker.remaining:
                events.append(_Filled(taker.order_id, taker_account, taker.client_order_id, taker.qty))

    def _prevent_self_trade(self, taker: Order, maker: Order, events: list[Event]) -> None:
        mode = taker.stp
        if mode is STP_DECREMENT:
            qty = taker.remaining if taker.remaining < maker.remaining else maker.remaining
            self._decrement(maker, qty, True, events)
            self._decrement(taker, qty, False, events)
            return
        if mode is not STP_NEWEST:  # oldest or both
            self._cancel_resting(maker, CANCEL_SELF_TRADE, events)
        if mode is not STP_OLDEST:  # newest or both
            events.append(
                _Cancelled(
                    taker.order_id,
                    taker.account,
                    taker.client_order_id,
                    taker.remaining,
                    CANCEL_SELF_TRADE,
                )
            )
            taker.remaining = 0

    def _decrement(self, order: Order, qty: int, resting: bool, events: list[Event]) -> None:
        """Self-trade decrement: shrink without trading; an order shrunk to 0 is cancelled."""
        if qty == order.remaining:
            if resting:
                self._cancel_resting(order, CANCEL_SELF_TRADE, events)
            else:
                events.append(
                    _Cancelled(order.order_id, order.account, order.client_order_id, qty, CANCEL_SELF_TRADE)
                )
                order.remaining = 0
            return
        if resting:
            _level_of(order).shrink(order, qty)
        else:
            order.remaining -= qty
        order.qty -= qty
        events.append(_amended(order, True))

    def _fillable(self, taker: Order) -> bool:
        """Would `taker` fill completely? Mirrors `_execute` without changing anything."""
        is_buy = taker.side is BUY
        limit = taker.price
        need = taker.remaining
        skip_self = taker.stp is STP_OLDEST  # those makers get cancelled, matching goes on
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

    def _crosses(self, side: Side, price: int) -> bool:
        if side is BUY:
            level = self.asks.best
            return level is not None and level.price <= price
        level = self.bids.best
        return level is not None and level.price >= price

    # --- resting orders ---------------------------------------------------------------

    def _rest(self, order: Order, by_client: dict[str, Order]) -> None:
        """Put `order` at the back of its level; `by_client` is its account's index."""
        (self.bids if order.side is BUY else self.asks).level_for(order.price).append(order)
        self.orders[order.order_id] = order
        by_client[order.client_order_id] = order
        order.by_client = by_client

    def _account_index(self, account: str) -> dict[str, Order]:
        """`account`'s client-order-id index, made on its first resting order.

        An index is kept when it empties (accounts are few: the gateway admits configured
        ones only), so one fetched before matching is still the live one after it.
        """
        by_client = self.accounts.get(account)
        if by_client is None:
            by_client = {}
            self.accounts[account] = by_client
        return by_client

    def _cancel_resting(self, order: Order, reason: CancelReason, events: list[Event]) -> None:
        events.append(
            _Cancelled(order.order_id, order.account, order.client_order_id, order.remaining, reason)
        )
        self._unlink(order)
        self._recycle(order)

    def _make_order(
        self,
        order_id: OrderId,
        account: str,
        coid: str,
        side: Side,
        price: int,
        qty: int,
        stp: SelfTradePrevention,
        post_only: bool,
        ts: int,
    ) -> Order:
        """An order with these fields, not yet resting: a spare one refilled, or a new one."""
        order = self.spare
        if order is None:
            return Order(order_id, account, coid, side, price, qty, qty, stp, post_only, ts)
        self.spare = order.next
        self.spare_count -= 1
        order.next = None
        order.order_id = order_id
        order.account = account
        order.client_order_id = coid
        order.side = side
        order.price = price
        order.qty = qty
        order.remaining = qty
        order.stp = stp
        order.post_only = post_only
        order.ts = ts
        return order

    def _recycle(self, order: Order) -> None:
        """Keep `order`, which is finished and referenced from nowhere else, for reuse."""
        if self.spare_count < _SPARE_ORDERS:
            order.next = self.spare
            self.spare = order
            self.spare_count += 1

    def _unlink(self, order: Order) -> None:
        level = _level_of(order)
        level.remove(order)
        if not level.live:
            (self.bids if order.side is BUY else self.asks).drop(level)
        self._forget(order)

    def _forget(self, order: Order) -> None:
        del self.orders[order.order_id]
        del order.by_client[order.client_order_id]

    def _reduce(self, order: Order, delta: int) -> Amended:
        order.qty -= delta
        _level_of(order).shrink(order, delta)
        return _amended(order, True)

    def _replace(self, order: Order, price: int, qty: int, ts: int) -> list[Event]:
        """Price change or size increase: the order loses its place and may trade at once."""
        filled = order.qty - order.remaining
        self._unlink(order)
        order.price = price
        order.qty = qty
        order.remaining = qty - filled
        order.ts = ts
        events: list[Event] = [_amended(order, False)]
        self._execute(order, events)
        if order.remaining:
            self._rest(order, order.by_client)
        else:
            self._recycle(order)
        return events

    # --- validation -------------------------------------------------------------------

    def _order_rejected(
        self, mine: dict[str, Order] | None, account: str, coid: str, qty: int, price: int, market: bool
    ) -> Rejected | None:
        """Everything about a new order but its kind, which `_KINDS` already checked;
        `mine` is the account's index, if it has one."""
        if not coid:
            return _rejected(account, coid, RejectReason.INVALID_FIELD, 0)
        problem = self._qty_problem(qty)
        if problem is None and not market:
            problem = self._price_problem(price)
        if problem is None and mine is not None and coid in mine:
            problem = RejectReason.DUPLICATE_CLIENT_ORDER_ID
        if problem is None:
            return None
        return _rejected(account, coid, problem, 0, price, qty)

    def _qty_problem(self, qty: int) -> RejectReason | None:
        if qty <= 0:
            return RejectReason.INVALID_QUANTITY
        if qty % self._lot:
            return RejectReason.QUANTITY_OFF_LOT
        if qty < self._min_qty or qty > self._max_qty:
            return RejectReason.QUANTITY_OUT_OF_RANGE
        return None

    def _price_problem(self, price: int) -> RejectReason | None:
        if price <= 0:
            return RejectReason.INVALID_PRICE
        if price % self._tick:
            return RejectReason.PRICE_OFF_TICK
        if self._band_bps:
            low, high = self.price_band()
        else:
            low, high = self._min_price, self._max_price
        if price < low or price > high:
            return RejectReason.PRICE_OUT_OF_BAND
        return None

    def _amend_problem(self, order: Order, price: int, qty: int) -> RejectReason | None:
        problem = self._qty_problem(qty)
        if problem is None and price != order.price:
            problem = self._price_problem(price)
        if problem is not None:
            return problem
        if price == order.price and qty == order.qty:
            return RejectReason.AMEND_NO_CHANGE
        if qty <= order.qty - order.remaining:
            return RejectReason.AMEND_QUANTITY_TOO_LOW
        if order.post_only and price != order.price and self._crosses(order.side, price):
            return RejectReason.POST_ONLY_WOULD_TAKE
        return None

    def _owned_order(self, account: str, order_id: OrderId, coid: str) -> Order | Rejected:
        if order_id:
            order = self.orders.get(order_id)
        else:
            mine = self.accounts.get(account)
            order = None if mine is None else mine.get(coid)
        if order is None:
            return _rejected(account, coid, RejectReason.UNKNOWN_ORDER, order_id)
        if order.account != account:
            return _rejected(account, coid, RejectReason.NOT_ORDER_OWNER, order_id)
        return order

    def price_band(self) -> tuple[int, int]:
        """Limit prices accepted now: the static band, narrowed around the last trade."""
        low, high = self._min_price, self._max_price
        if self._band_bps and self.last_trade_price:
            ref = self.last_trade_price
            low = max(low, ref * (10_000 - self._band_bps) // 10_000)
            high = min(high, -(-ref * (10_000 + self._band_bps) // 10_000))
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
        return msgspec.structs.replace(
            self.checkpoint_counters(),
            bids=list(self.resting_orders(BUY)),
            asks=list(self.resting_orders(Side.SELL)),
        )

    def checkpoint_counters(self) -> Checkpoint:
        """`checkpoint()` without its orders (`bids` and `asks` empty): for a caller that
        takes the orders from `resting_orders` itself, a few at a time."""
        return Checkpoint(
            symbol=self.instrument.symbol,
            bids=[],
            asks=[],
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
                ),
                self._account_index(r.account),
            )
        self.next_order_id = checkpoint.next_order_id
        self.next_trade_id = checkpoint.next_trade_id
        self.last_trade_price = checkpoint.last_trade_price
        self.last_seq = checkpoint.last_seq
        self.last_ts = checkpoint.last_ts

    def resting_orders(self, side: Side) -> Iterator[RestingOrder]:
        """`side`'s resting orders as `checkpoint()` lists them, one at a time: a caller that
        must not hold a CPU for a whole book (the snapshotter) takes them in small steps."""
        for level in (self.bids if side is BUY else self.asks).levels_best_first():
            for order in level.orders():
                yield _resting(order)

    def state_hash(self) -> str:
        """`checkpoint_hash(self.checkpoint())`, from the levels (no list of the whole book)."""
        return _state_hash(self.checkpoint_counters(), _side_runs(self.bids), _side_runs(self.asks))

    def state_hash_matches(self, recorded: str) -> bool:
        """Whether this state is the one `recorded` (a state hash of either version) names."""
        if recorded.startswith(STATE_HASH_V2):
            return self.state_hash() == recorded
        return checkpoint_hash_v1(self.checkpoint()) == recorded


# What a state hash of the current version starts with. Version 1 (64 hex digits, no
# prefix) hashed the checkpoint's whole msgpack at once, so every checkpoint rehashed the
# whole book; checkpoints stored with one are still checked against it.
STATE_HASH_V2: Final = "v2:"
_STATE_HASH_V2_DOMAIN: Final = b"clobd state hash v2\x00"
_SHA256_BYTES: Final = 32


def checkpoint_hash(checkpoint: Checkpoint) -> str:
    """An engine's state hash (version 2): "v2:" and a SHA-256 in hex, of
    - a domain string, then the msgpack of `checkpoint` with no orders (symbol, counters);
    - for the bids, then the asks: how many runs (8 bytes, big-endian), then each run's
      SHA-256, where a side's orders are cut into runs at each level's end, after an order
      `ends_run` picks and after MAX_RUN_ORDERS (`resting_runs`), and a run's bytes are
      the msgpack of its orders without the array header (`array_items`).

    msgpack of array-like structs of ints and strings has exactly one encoding, and the
    runs depend on the orders alone, so the hash depends on the state alone — not on the
    machine, the Python build, the run, or how the state was encoded. Over runs, not over
    one buffer: a checkpoint that reuses the runs of unchanged levels reuses their digests
    too (`engine.stepwise_checkpoint`), instead of hashing the whole book again.
    """
    return _state_hash(checkpoint, _runs_of(checkpoint.bids), _runs_of(checkpoint.asks))


def checkpoint_hash_v1(checkpoint: Checkpoint) -> str:
    """The state hash of checkpoints stored before version 2: SHA-256 of the whole msgpack."""
    return hashlib.sha256(_encode(checkpoint)).hexdigest()


def state_hash_of(counters: bytes, bid_runs: bytes, ask_runs: bytes) -> str:
    """`checkpoint_hash` from its parts: the msgpack of the checkpoint with no orders, and
    each side's run digests (SHA-256, best level first) joined."""
    digest = hashlib.sha256(_STATE_HASH_V2_DOMAIN)
    digest.update(counters)
    for runs in (bid_runs, ask_runs):
        digest.update((len(runs) // _SHA256_BYTES).to_bytes(8, "big"))
        digest.update(runs)
    return STATE_HASH_V2 + digest.hexdigest()


def _state_hash(
    counters: Checkpoint, bid_runs: Iterable[list[RestingOrder]], ask_runs: Iterable[list[RestingOrder]]
) -> str:
    """`checkpoint_hash` of the checkpoint with `counters`' fields and these runs of orders."""
    no_orders = _encode(msgspec.structs.replace(counters, bids=[], asks=[]))
    return state_hash_of(no_orders, _run_digests(bid_runs), _run_digests(ask_runs))


def _run_digests(runs: Iterable[list[RestingOrder]]) -> bytes:
    return b"".join([hashlib.sha256(array_items(run)).digest() for run in runs])


def _side_runs(side: BookSide) -> Iterator[list[RestingOrder]]:
    for level in side.levels_best_first():
        for run, _ in resting_runs(level):
            yield run


def _runs_of(orders: list[RestingOrder]) -> Iterator[list[RestingOrder]]:
    """A side's orders (as `checkpoint()` lists them) in the runs `resting_runs` makes of
    each of its levels."""
    run: list[RestingOrder] = []
    for order in orders:
        if run and order.price != run[-1].price:
            yield run
            run = []
        run.append(order)
        if ends_run(order.order_id) or len(run) >= MAX_RUN_ORDERS:
            yield run
            run = []
    if run:
        yield run


def array_items(orders: list[RestingOrder]) -> bytes:
    """The msgpack of `orders` without its array header: items to splice into a bigger array."""
    return _encode(orders)[len(array_header(len(orders))) :]


def array_header(n: int) -> bytes:
    # The shortest msgpack array header, as every msgpack encoder (msgspec's too) writes it.
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _rejected(
    account: str, coid: str, reason: RejectReason, order_id: OrderId, price: int = 0, qty: int = 0
) -> Rejected:
    return _Rejected(account, coid, reason, _REJECT_TEXT[reason].format(price=price, qty=qty), order_id)


def _kind_rejected(account: str, coid: str, side: Any, order_type: Any, tif: Any, stp: Any) -> Rejected:
    if side not in _SIDES:
        reason = RejectReason.INVALID_SIDE
    elif order_type not in _ORDER_TYPES:
        reason = RejectReason.INVALID_ORDER_TYPE
    elif tif not in _TIFS:
        reason = RejectReason.INVALID_TIME_IN_FORCE
    elif stp not in _STPS:
        reason = RejectReason.INVALID_STP_MODE
    elif order_type == MARKET:
        reason = RejectReason.INVALID_ORDER_TYPE  # post-only market
    else:
        reason = RejectReason.INVALID_TIME_IN_FORCE  # post-only IOC/FOK
    text = f"{_REJECT_TEXT[reason]} (side={side!r}, type={order_type!r}, tif={tif!r}, stp={stp!r})"
    return _Rejected(account, coid, reason, text, 0)


def _amended(order: Order, priority_kept: bool) -> Amended:
    return _Amended(
        order.order_id,
        order.account,
        order.client_order_id,
        order.price,
        order.qty,
        order.remaining,
        priority_kept,
    )


def _level_of(order: Order) -> Level:
    """The level of a resting order (every order this is asked about is resting)."""
    level = order.level
    assert level is not None, "order is not resting"
    return level


def _order_id(order: Order) -> int:
    order_id: int = order.order_id
    return order_id


# Where a checkpoint's pieces of a level end (engine/stepwise_checkpoint.py): after an order
# whose id `ends_run` picks, one in 64 on average, or after MAX_RUN_ORDERS in a row. The
# boundaries depend on the orders alone, not on when or by which process the level was last
# encoded, so the same orders always make the same pieces, which the checkpoint store keeps
# once. A Fibonacci hash of the id, so no regular pattern of ids (every 64th order of a
# quoting client) puts every order of a level at a boundary, or none.
RUN_HASH = 0x9E3779B97F4A7C15
RUN_BITS = 6
MAX_RUN_ORDERS = 1_000


def ends_run(order_id: int) -> bool:
    return ((order_id * RUN_HASH) & 0xFFFF_FFFF_FFFF_FFFF) >> (64 - RUN_BITS) == 0


def resting_runs(level: Level) -> Iterator[tuple[list[RestingOrder], bool]]:
    """`level`'s orders as `Engine.checkpoint()` lists them, in runs that end where `ends_run`
    says or after MAX_RUN_ORDERS; with each, whether it ended so (else the level ended it)."""
    order = level.head
    while order is not None:
        run, ended, order = run_from(order)
        yield run, ended


def run_from(order: Order | None, run_so_far: int = 0) -> tuple[list[RestingOrder], bool, Order | None]:
    """The run that goes on from `order` (after `run_so_far` orders before it), as
    `resting_runs` cuts it; whether it ended so; and the order after it."""
    run: list[RestingOrder] = []
    length = run_so_far
    while order is not None:
        run.append(_resting(order))
        length += 1
        after = order.next
        if ends_run(order.order_id) or length >= MAX_RUN_ORDERS:
            return run, True, after
        order = after
    return run, False, None


def run_unchanged(first: Order, length: int, last_id: int, version: int) -> tuple[bool, Order | None]:
    """Whether the `length` orders from `first` are, as they stand, a run its level held at
    `version` (first `first`, last `last_id`, `length` long, ended by `ends_run` or at its
    longest); and the order after them.

    None of them was appended or shrunk since (`Order.stamp`), so each was in the level then,
    as it is, and they stand in the order they stood; the run then went from `first` to
    `last_id` over `length` orders, and these are as many: they are all of them. Only stamps
    are read: no order is encoded, no run end computed.
    """
    order: Order | None = first
    last = first
    for _ in range(length):
        if order is None or order.stamp > version:
            return False, None
        last = order
        order = order.next
    return last.order_id == last_id, order


def _resting(order: Order) -> RestingOrder:
    return _RestingOrder(
        order.order_id,
        order.account,
        order.client_order_id,
        order.side,
        order.price,
        order.qty,
        order.remaining,
        order.stp,
        order.post_only,
        order.ts,
    )


def _top(side: BookSide, n: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for level in side.levels_best_first():
        if len(out) >= n:
            break
        out.append((level.price, level.total))
    return out
