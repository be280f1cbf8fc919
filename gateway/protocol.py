"""The client protocol, version 1: every message a client and the gateway exchange.

Transport: ZeroMQ. A client connects a DEALER socket to the gateway's ROUTER and sends
one msgpack-encoded message per single-frame ZeroMQ message. Each message is a msgpack
*map* whose ``"type"`` key names it (below); unknown keys are rejected, missing optional
keys take their defaults. Maps (rather than positional arrays) so that a client in any
language can build them from docs/protocol.md alone.

Numbers: prices and quantities are integers in the instrument's units: a price of 12345
with ``price_decimals = 2`` means 123.45. `LogonAck` lists every instrument's decimals,
tick and lot, so a client converts at its edge and the gateway never sees a decimal.

Enumerations are small integers, with the same values as `engine.messages`: side 1 buy /
2 sell; order_type 1 limit / 2 market; tif 1 GTC / 2 IOC / 3 FOK; stp 1 cancel newest /
2 cancel oldest / 3 cancel both / 4 decrement and cancel.

Correlation: every request carries a client-chosen ``req_id`` that its reply echoes.
Execution reports about an account's orders caused by *other* clients' orders (fills of
resting orders, self-trade cancels) arrive unrequested with ``req_id`` 0.

Field order is part of nothing here (maps), but names are: never rename a field; add new
ones with defaults and bump `PROTOCOL_VERSION` when the meaning of an existing one changes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from engine.messages import Event, OrderType, SelfTradePrevention, Side, TimeInForce

PROTOCOL_VERSION = 1

# Names a client sends (account, symbol, client order ids) are at most this many characters:
# they are journaled, kept per session and echoed in replies, so their size must be bounded
# by the protocol, not by `max_message_bytes` (a longer one is `MALFORMED_MESSAGE`).
MAX_NAME_CHARS = 64
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]

_MSG = {"tag_field": "type", "forbid_unknown_fields": True, "omit_defaults": False}
_PART = {"forbid_unknown_fields": True, "omit_defaults": False}  # maps inside messages


# --- client -> gateway ------------------------------------------------------------------


class Logon(msgspec.Struct, tag="logon", **_MSG):
    account: Name
    req_id: int = 0
    protocol_version: int = PROTOCOL_VERSION


class NewOrder(msgspec.Struct, tag="new_order", **_MSG):
    symbol: Name
    client_order_id: Name
    side: Side
    qty: int
    price: int = 0  # required for limit orders, ignored for market orders
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_NEWEST
    req_id: int = 0


class OrderBatch(msgspec.Struct, tag="order_batch", **_MSG):
    """Several new orders in one message; each is answered on its own, as if sent alone."""

    orders: list[NewOrder]
    req_id: int = 0


class Cancel(msgspec.Struct, tag="cancel", **_MSG):
    """Names the order by `order_id`, or (if 0) by the account's `orig_client_order_id`."""

    symbol: Name
    order_id: int = 0
    orig_client_order_id: Name = ""
    req_id: int = 0


class Amend(msgspec.Struct, tag="amend", **_MSG):
    """New total quantity and/or price; 0 keeps the current value."""

    symbol: Name
    order_id: int = 0
    orig_client_order_id: Name = ""
    price: int = 0
    qty: int = 0
    req_id: int = 0


class MassCancel(msgspec.Struct, tag="mass_cancel", **_MSG):
    """Cancel all of the account's orders on `symbol`, or on every instrument if empty."""

    symbol: Name = ""
    req_id: int = 0


class OrderStatus(msgspec.Struct, tag="order_status", **_MSG):
    symbol: Name
    order_id: int = 0
    orig_client_order_id: Name = ""
    req_id: int = 0


class BookQuery(msgspec.Struct, tag="book", **_MSG):
    symbol: Name
    depth: int = 10
    req_id: int = 0


class Ping(msgspec.Struct, tag="ping", **_MSG):
    req_id: int = 0


class Logout(msgspec.Struct, tag="logout", **_MSG):
    """End this connection's session. ZeroMQ never tells the gateway that a peer went away,
    so a closing client says so (`Client.close()` does); resting orders stay."""

    req_id: int = 0


Request = (
    Logon | NewOrder | OrderBatch | Cancel | Amend | MassCancel | OrderStatus | BookQuery | Ping | Logout
)


# --- gateway -> client ------------------------------------------------------------------


class InstrumentInfo(msgspec.Struct, **_PART):
    symbol: str
    price_decimals: int
    qty_decimals: int
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int


class LogonAck(msgspec.Struct, tag="logon_ack", **_MSG):
    account: str
    instruments: list[InstrumentInfo]
    req_id: int = 0
    protocol_version: int = PROTOCOL_VERSION


class Ack(msgspec.Struct, tag="ack", **_MSG):
    """A command was journaled (durably committed) as `seq` of `symbol`'s journal.

    `events` are everything the command caused that concerns this account, in order
    (`Accepted`, `Trade`, `Filled`, `Cancelled`, `Amended`, or the engine's `Rejected`).
    `duplicate` is true when a resent `client_order_id` is answered with its original
    outcome instead of being placed again.
    """

    symbol: str
    seq: int
    events: list[Event]
    req_id: int = 0
    client_order_id: str = ""
    duplicate: bool = False


class Reject(msgspec.Struct, tag="reject", **_MSG):
    """The request was refused before reaching the journal (nothing happened)."""

    code: int  # an `engine.messages.RejectReason` value; 100+ are the gateway's own
    text: str
    req_id: int = 0
    client_order_id: str = ""
    symbol: str = ""


class ExecutionReport(msgspec.Struct, tag="exec_report", **_MSG):
    """Events about this account's orders that another client's command caused."""

    symbol: str
    seq: int
    events: list[Event]
    req_id: int = 0


class OrderStatusReply(msgspec.Struct, tag="order_status_reply", **_MSG):
    symbol: str
    found: bool
    order_id: int = 0
    client_order_id: str = ""
    side: int = 0
    price: int = 0
    qty: int = 0
    remaining: int = 0
    req_id: int = 0


class BookReply(msgspec.Struct, tag="book_reply", **_MSG):
    symbol: str
    seq: int
    bids: list[tuple[int, int]]  # (price, qty), best first
    asks: list[tuple[int, int]]
    req_id: int = 0


class MassCancelDone(msgspec.Struct, tag="mass_cancel_done", **_MSG):
    """Sent once every instrument of a mass cancel has answered (each with its own `Ack`)."""

    symbols: list[str]
    req_id: int = 0


class Pong(msgspec.Struct, tag="pong", **_MSG):
    req_id: int = 0


class LogoutAck(msgspec.Struct, tag="logout_ack", **_MSG):
    account: str
    req_id: int = 0


Reply = (
    LogonAck | Ack | Reject | ExecutionReport | OrderStatusReply | BookReply | MassCancelDone | Pong
    | LogoutAck
)

# --- market data (ZeroMQ PUB/SUB) ----------------------------------------------------------


class MarketData(msgspec.Struct, **_PART):
    """What one journaled command caused, published as one message with its sequence.

    Two topics per instrument: `<env>.clob.orders.events.v1.<symbol>` carries every
    command's events (contiguous `seq`, so a gap is visible), and
    `<env>.clob.trades.v1.<symbol>` carries only the `Trade` events of commands that traded.
    A message is two frames: the topic, then this map.
    """

    symbol: str
    seq: int
    ts: int
    events: list[Event]


def orders_topic(env: str, symbol: str) -> bytes:
    return f"{env}.clob.orders.events.v1.{symbol}".encode()


def trades_topic(env: str, symbol: str) -> bytes:
    return f"{env}.clob.trades.v1.{symbol}".encode()


market_data_decoder = msgspec.msgpack.Decoder(MarketData)
request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()
