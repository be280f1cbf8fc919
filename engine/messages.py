"""The matching core's vocabulary: commands in, events out, checkpoints of state.

Every record that crosses a process boundary or lands in the journal is one of these
structs. They are defined here once and nowhere else. All prices are integers in price
units and all quantities integers in quantity units (see ``engine.instrument``); decimals
exist only at the edges.

Wire format: ``array_like`` msgpack with an integer tag per struct, which is both the
smallest and the fastest encoding msgspec offers. Field order is therefore part of the
format: new fields are only ever appended, with defaults, and ``SCHEMA_VERSION`` is bumped.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec

SCHEMA_VERSION = 1


class Side(IntEnum):
    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2


class TimeInForce(IntEnum):
    GTC = 1
    IOC = 2
    FOK = 3


class SelfTradePrevention(IntEnum):
    """What happens when an incoming order would trade with its own account's resting order.

    The incoming (taker) order's mode decides.
    """

    CANCEL_NEWEST = 1  # cancel the incoming order's remainder; resting order stays
    CANCEL_OLDEST = 2  # cancel the resting order, keep matching
    CANCEL_BOTH = 3  # cancel both
    DECREMENT_AND_CANCEL = 4  # reduce both by the smaller quantity, cancel whichever reaches 0


class RejectReason(IntEnum):
    """Stable codes: clients switch on these, so a code is never reused or renumbered."""

    INVALID_SIDE = 1
    INVALID_ORDER_TYPE = 2
    INVALID_TIME_IN_FORCE = 3
    INVALID_QUANTITY = 4
    QUANTITY_OFF_LOT = 5
    QUANTITY_OUT_OF_RANGE = 6
    INVALID_PRICE = 7
    PRICE_OFF_TICK = 8
    PRICE_OUT_OF_BAND = 9
    POST_ONLY_WOULD_TAKE = 10
    DUPLICATE_CLIENT_ORDER_ID = 11
    UNKNOWN_ORDER = 12
    NOT_ORDER_OWNER = 13
    AMEND_NO_CHANGE = 14
    AMEND_QUANTITY_TOO_LOW = 15
    INVALID_STP_MODE = 16
    INVALID_FIELD = 17
    # Codes from 100 up belong to the shells (gateway, matcher), never to the engine.
    UNKNOWN_INSTRUMENT = 100
    MALFORMED_MESSAGE = 101
    MESSAGE_TOO_LARGE = 102
    NOT_LOGGED_ON = 103
    BUSY = 104
    STORAGE_FAILURE = 105
    UNKNOWN_ACCOUNT = 106


class CancelReason(IntEnum):
    USER = 1
    IOC_REMAINDER = 2  # also a market order's unfilled remainder
    FOK_UNFILLABLE = 3
    SELF_TRADE = 4
    MASS_CANCEL = 5


# --- commands ---------------------------------------------------------------------------
# Every command carries what the gateway stamped: `seq` (gateway sequence) and `ts`
# (unix nanoseconds). The engine uses `ts` as its only notion of time.

# gc=False: commands and events hold only ints, strings and enums, so they can never be
# part of a reference cycle; keeping millions of them out of the collector's sight removes
# most of the GC pauses from the hot path.
_CMD = {"array_like": True, "tag_field": "t", "omit_defaults": False, "gc": False}


class NewOrder(msgspec.Struct, tag=1, **_CMD):
    seq: int
    ts: int
    account: str
    client_order_id: str
    side: Side
    qty: int
    price: int = 0  # ignored for market orders
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_NEWEST


class Cancel(msgspec.Struct, tag=2, **_CMD):
    """Cancel one order, named by engine `order_id` or, if that is 0, by `orig_client_order_id`."""

    seq: int
    ts: int
    account: str
    order_id: int = 0
    orig_client_order_id: str = ""


class Amend(msgspec.Struct, tag=3, **_CMD):
    """Change price and/or total quantity (filled quantity included, as in FIX).

    A pure quantity reduction keeps queue priority; a price change or a quantity increase
    sends the order to the back of its (new) level, and a new price may trade at once.
    `price` 0 means "keep the price"; `qty` 0 means "keep the quantity".
    """

    seq: int
    ts: int
    account: str
    order_id: int = 0
    orig_client_order_id: str = ""
    price: int = 0
    qty: int = 0


class MassCancel(msgspec.Struct, tag=4, **_CMD):
    """Cancel every resting order of `account` on this book (the gateway fans out "all")."""

    seq: int
    ts: int
    account: str


Command = NewOrder | Cancel | Amend | MassCancel


# --- events -----------------------------------------------------------------------------
# Events carry no seq/ts of their own: the record that holds them (journal record,
# market-data message) carries the command's sequence and timestamp once.

_EVT = {"array_like": True, "tag_field": "t", "omit_defaults": False, "gc": False}


class Accepted(msgspec.Struct, tag=11, **_EVT):
    order_id: int
    account: str
    client_order_id: str
    side: Side
    price: int
    qty: int
    order_type: OrderType
    tif: TimeInForce


class Rejected(msgspec.Struct, tag=12, **_EVT):
    account: str
    client_order_id: str
    reason: RejectReason
    text: str
    order_id: int = 0  # the order a cancel/amend named, if any


class Trade(msgspec.Struct, tag=13, **_EVT):
    trade_id: int
    price: int
    qty: int
    aggressor: Side
    maker_order_id: int
    maker_account: str
    maker_remaining: int
    taker_order_id: int
    taker_account: str
    taker_remaining: int


class Cancelled(msgspec.Struct, tag=14, **_EVT):
    order_id: int
    account: str
    client_order_id: str
    remaining: int  # quantity that was open and is now gone
    reason: CancelReason


class Amended(msgspec.Struct, tag=15, **_EVT):
    order_id: int
    account: str
    client_order_id: str
    price: int
    qty: int  # new total quantity
    remaining: int
    priority_kept: bool


class Filled(msgspec.Struct, tag=16, **_EVT):
    order_id: int
    account: str
    client_order_id: str
    qty: int  # total quantity, now entirely filled


Event = Accepted | Rejected | Trade | Cancelled | Amended | Filled


# --- state ------------------------------------------------------------------------------


class RestingOrder(msgspec.Struct, array_like=True, frozen=True, gc=False):
    order_id: int
    account: str
    client_order_id: str
    side: Side
    price: int
    qty: int  # total quantity
    remaining: int
    stp: SelfTradePrevention
    post_only: bool
    ts: int  # time of entry into its current queue position


class Checkpoint(msgspec.Struct, array_like=True, frozen=True):
    """Everything needed to continue exactly where the book stood.

    `bids` best price first, `asks` best price first, each level's orders in queue order.
    """

    symbol: str
    bids: list[RestingOrder]
    asks: list[RestingOrder]
    next_order_id: int
    next_trade_id: int
    last_trade_price: int
    last_seq: int
    last_ts: int
    version: int = SCHEMA_VERSION
