"""A Python client for the clobd gateway: protocol v1 (`gateway.protocol`, docs/protocol.md).

`Client` is synchronous (one DEALER socket, blocking calls with timeouts); `AsyncClient` is
the same API on `zmq.asyncio`. For uvloop, call `uvloop.install()` (or run under
`uvloop.run`) before creating the loop: that is the application's choice, not this module's.
Blocking sockets are several times faster than asyncio for a request/reply round trip, so
benchmarks and latency-sensitive callers should prefer `Client`.

Numbers: pass prices and quantities in human units as `Decimal` or decimal text (`"0.5"`);
they are converted with the instrument's decimals from `LogonAck`, and a value with more
decimal places than the instrument allows is a `ValueError` before anything is sent. Floats
and plain ints are refused (a float is inexact; an int is ambiguous between human and
integer units). Raw integer units go through the separate `qty_units=` / `price_units=`
keywords.

Correlation: each request gets a `req_id` (a per-client counter); a blocking call returns
the reply with its `req_id`. Anything else that arrives meanwhile (execution reports caused by
other clients, replies to pipelined requests) is kept in arrival order: `events()` and
`poll_reports()` return the execution reports, `recv()` returns everything in order.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from enum import IntEnum
from typing import NamedTuple, TypedDict, TypeVar, Unpack

import msgspec
import zmq
import zmq.asyncio
import zmq.auth

from engine.instrument import Instrument
from engine.messages import OrderType, Rejected, RejectReason, SelfTradePrevention, Side, TimeInForce
from gateway import protocol as p
from gateway.protocol import (
    Ack,
    BookReply,
    ExecutionReport,
    InstrumentInfo,
    LogonAck,
    MarketData,
    MassCancelDone,
    OrderStatusReply,
    Pong,
    Reject,
    Reply,
    Request,
)

# The daemon's defaults (daemon/config.py, GatewayConfig); a test keeps them equal.
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7001"
DEFAULT_MARKET_DATA_ENDPOINT = "tcp://127.0.0.1:7002"

# ZeroMQ's default high-water mark (1000) is below what a pipelining client keeps in
# flight; past it a ROUTER silently drops replies, so both ends allow far more.
_HWM = 100_000
_LOGOUT_LINGER_MS = 100  # how long close() may wait for its logout to leave

# Rejects that refuse a whole mass cancel before it is fanned out to any instrument: no
# `MassCancelDone` follows them (docs/protocol.md, "mass_cancel").
_REQUEST_LEVEL_CODES = frozenset(
    {
        RejectReason.UNKNOWN_INSTRUMENT,
        RejectReason.MALFORMED_MESSAGE,
        RejectReason.MESSAGE_TOO_LARGE,
        RejectReason.NOT_LOGGED_ON,
        RejectReason.UNKNOWN_ACCOUNT,
    }
)

Number = Decimal | str
Key = bytes | str
E = TypeVar("E", bound=IntEnum)
T = TypeVar("T")


class ClientError(Exception):
    """Base of this module's errors (timeouts are the built-in `TimeoutError`)."""


class ProtocolError(ClientError):
    """The gateway sent something that is not a valid protocol v1 reply."""


class RequestRejected(ClientError):
    """A request whose method has no use for a `Reject` (logon, book, ping...) was refused."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(f"{reason_name(reject.code)} ({reject.code}): {reject.text}")
        self.reject = reject
        self.code = reject.code


def reason_name(code: int) -> str:
    """`RejectReason` name of `code`, or "code N" for one this client does not know."""
    try:
        return RejectReason(code).name
    except ValueError:
        return f"code {code}"


def rejection(reply: Ack | Reject) -> tuple[int, str] | None:
    """(code, text) if the request was refused, by the gateway (`Reject`) or by the engine
    (an `Ack` whose events hold a `Rejected`: journaled, but nothing changed); else None."""
    if isinstance(reply, Reject):
        return reply.code, reply.text
    for event in reply.events:
        if isinstance(event, Rejected):
            return int(event.reason), event.text
    return None


# --- enums and numbers ------------------------------------------------------------------

_ALIASES: dict[type[IntEnum], dict[str, int]] = {
    Side: {"B": Side.BUY, "S": Side.SELL},
    SelfTradePrevention: {
        "NEWEST": SelfTradePrevention.CANCEL_NEWEST,
        "OLDEST": SelfTradePrevention.CANCEL_OLDEST,
        "BOTH": SelfTradePrevention.CANCEL_BOTH,
        "DECREMENT": SelfTradePrevention.DECREMENT_AND_CANCEL,
        "DC": SelfTradePrevention.DECREMENT_AND_CANCEL,
    },
}


def parse_enum(kind: type[E], value: E | str | int) -> E:
    """An enum member from a member, its value, or its name in any case ("ioc", "cancel-both")."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        key = value.strip().upper().replace("-", "_")
        if key in kind.__members__:
            return kind[key]
        if key in _ALIASES.get(kind, {}):
            return kind(_ALIASES[kind][key])
    elif isinstance(value, int) and not isinstance(value, bool) and value in kind._value2member_map_:
        return kind(value)
    names = ", ".join(m.lower() for m in kind.__members__)
    raise ValueError(f"{value!r} is not a valid {kind.__name__}: use one of {names}")


def _spec(inst: InstrumentInfo) -> Instrument:
    # The engine's own Instrument, so the client converts by exactly the daemon's rules.
    return Instrument(
        symbol=inst.symbol,
        price_decimals=inst.price_decimals,
        qty_decimals=inst.qty_decimals,
        tick_size=inst.tick_size,
        lot_size=inst.lot_size,
        min_qty=inst.min_qty,
        max_qty=inst.max_qty,
    )


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{what} {value!r} is not a decimal number") from None
    raise TypeError(
        f"{what} must be a Decimal or decimal text, not {type(value).__name__} {value!r} "
        f"(floats are inexact and ints ambiguous; pass integer units as {what}_units=)"
    )


def to_units(inst: InstrumentInfo, *, price: Number | None = None, qty: Number | None = None) -> int:
    """Integer units of exactly one of `price` / `qty` (Decimal or decimal text).

    Raises ValueError for more decimal places than the instrument has, or for text that is
    not a finite decimal; TypeError for floats and ints.
    """
    if (price is None) == (qty is None):
        raise TypeError("to_units: give exactly one of price= or qty=")
    if price is not None:
        return _spec(inst).price_to_units(_decimal(price, "price"))
    return _spec(inst).qty_to_units(_decimal(qty, "qty"))


def from_units(inst: InstrumentInfo, *, price: int | None = None, qty: int | None = None) -> Decimal:
    """Exactly one of `price` / `qty` (integer units) as a Decimal with the instrument's decimals."""
    if (price is None) == (qty is None):
        raise TypeError("from_units: give exactly one of price= or qty=")
    if price is not None:
        return _spec(inst).price_from_units(price)
    assert qty is not None
    return _spec(inst).qty_from_units(qty)


class Level(NamedTuple):
    price: Decimal
    qty: Decimal


class DecimalBook(NamedTuple):
    symbol: str
    seq: int
    bids: list[Level]  # best first
    asks: list[Level]  # best first


def decimal_book(inst: InstrumentInfo, reply: BookReply) -> DecimalBook:
    """`reply`'s levels converted to decimals."""
    spec = _spec(inst)

    def levels(side: list[tuple[int, int]]) -> list[Level]:
        return [Level(spec.price_from_units(px), spec.qty_from_units(q)) for px, q in side]

    return DecimalBook(reply.symbol, reply.seq, levels(reply.bids), levels(reply.asks))


# --- request building and reply matching, shared by Client and AsyncClient ----------------


class OrderOptions(TypedDict, total=False):
    """Keyword options of `new_order` / `make_order`."""

    order_type: OrderType | str
    tif: TimeInForce | str
    post_only: bool
    stp: SelfTradePrevention | str
    client_order_id: str | None
    qty_units: int | None
    price_units: int | None


class _Waiter:
    """Collects the replies to one request; `offer` takes a message if it belongs to it."""

    def __init__(self, req_id: int, what: str) -> None:
        self.req_id = req_id
        self.what = what
        self.done = False

    def offer(self, msg: Reply) -> bool:
        raise NotImplementedError


class _One(_Waiter):
    result: Reply

    def offer(self, msg: Reply) -> bool:
        if self.done or msg.req_id != self.req_id:
            return False
        self.result, self.done = msg, True
        return True


class _Batch(_Waiter):
    """One Ack or Reject per order, matched by client_order_id; a Reject without one refuses
    the whole batch."""

    def __init__(self, req_id: int, coids: list[str]) -> None:
        super().__init__(req_id, f"order_batch req_id={req_id}")
        self.pending = set(coids)
        self.results: dict[str, Ack | Reject] = {}

    def offer(self, msg: Reply) -> bool:
        if self.done or msg.req_id != self.req_id or not isinstance(msg, Ack | Reject):
            return False
        if msg.client_order_id in self.pending:
            self.results[msg.client_order_id] = msg
            self.pending.remove(msg.client_order_id)
        elif isinstance(msg, Reject) and not msg.client_order_id:
            self.results.update(dict.fromkeys(self.pending, msg))
            self.pending.clear()
        else:
            return False
        self.done = not self.pending
        return True


class _MassCancel(_Waiter):
    """Acks and Rejects (one per instrument) until `MassCancelDone`, or one request-level Reject."""

    def __init__(self, req_id: int) -> None:
        super().__init__(req_id, f"mass_cancel req_id={req_id}")
        self.replies: list[Ack | Reject] = []

    def offer(self, msg: Reply) -> bool:
        if self.done or msg.req_id != self.req_id:
            return False
        if isinstance(msg, MassCancelDone):
            self.done = True
        elif isinstance(msg, Ack | Reject):
            self.replies.append(msg)
            self.done = isinstance(msg, Reject) and msg.code in _REQUEST_LEVEL_CODES
        else:
            return False
        return True


def _expect(reply: Reply, kind: type[T], what: str) -> T:
    """`reply` if it is a `kind`; a Reject raises `RequestRejected`, anything else is a bug."""
    if isinstance(reply, kind):
        return reply
    if isinstance(reply, Reject):
        raise RequestRejected(reply)
    raise ProtocolError(f"{what}: unexpected {type(reply).__name__} reply")


def _order_reply(reply: Reply, what: str) -> Ack | Reject:
    if isinstance(reply, Ack | Reject):
        return reply
    raise ProtocolError(f"{what}: unexpected {type(reply).__name__} reply")


def _as_bytes(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _secure(socket: zmq.Socket[bytes], server_key: Key | None, keypair: tuple[Key, Key] | None) -> None:
    """Make `socket` a CURVE client if keys are given (both or neither)."""
    if (server_key is None) != (keypair is None):
        raise ValueError("CURVE needs both curve_server_key and curve_keypair (public, secret)")
    if server_key is None or keypair is None:
        return
    socket.curve_serverkey = _as_bytes(server_key)
    socket.curve_publickey = _as_bytes(keypair[0])
    socket.curve_secretkey = _as_bytes(keypair[1])


def curve_keys_from_files(
    client_secret_file: str, server_public_file: str
) -> tuple[bytes, tuple[bytes, bytes]]:
    """(curve_server_key, curve_keypair) from ZeroMQ certificate files, ready for `Client(...)`.

    `client_secret_file` is the client's `*.key_secret` (as written by `clob keys generate`),
    `server_public_file` the server's `server.key`.
    """
    public, secret = zmq.auth.load_certificate(client_secret_file)
    if secret is None:
        raise ValueError(f"{client_secret_file}: holds no secret key (pass the .key_secret file)")
    server_public, _ = zmq.auth.load_certificate(server_public_file)
    return server_public, (public, secret)


class _Core:
    """Everything but I/O: identities, conversions, request building, the inbox."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.account: str | None = None
        self.instruments: dict[str, InstrumentInfo] = {}
        # Messages that arrived while waiting for something else, in arrival order.
        self.inbox: deque[Reply] = deque()
        self._req_ids = itertools.count(1)
        # A random prefix makes ids unique across client instances (and restarts) of an
        # account, since the gateway de-duplicates resends by (account, client_order_id).
        self._coid_prefix = secrets.token_hex(4)
        self._coids = itertools.count(1)

    def next_client_order_id(self) -> str:
        return f"{self._coid_prefix}-{next(self._coids)}"

    def _close_socket(self, socket: zmq.Socket[bytes] | zmq.asyncio.Socket, linger: int) -> None:
        """Log out if logged on (the gateway cannot see a peer leave, so it is told), then close.

        The logout is sent without waiting for its answer (sync send even on an asyncio
        socket: close() is not a coroutine), and the socket lingers just long enough for it.
        """
        if self.account is not None:
            self.account = None
            try:
                zmq.Socket.send(socket, p.encoder.encode(p.Logout()), zmq.NOBLOCK)
                linger = max(linger, _LOGOUT_LINGER_MS)
            except zmq.ZMQError:
                pass  # queue full or socket gone: the gateway's session limit covers it
        socket.close(linger=linger)

    def instrument(self, symbol: str) -> InstrumentInfo:
        try:
            return self.instruments[symbol]
        except KeyError:
            known = ", ".join(self.instruments) or "none: log on first"
            raise ValueError(f"unknown symbol {symbol!r} (instruments: {known})") from None

    def make_order(
        self,
        symbol: str,
        side: Side | str,
        qty: Number | None = None,
        price: Number | None = None,
        **opts: Unpack[OrderOptions],
    ) -> p.NewOrder:
        """A `NewOrder` request (not sent), e.g. for `send_batch` or pipelined `send`."""
        order_type = parse_enum(OrderType, opts.get("order_type", OrderType.LIMIT))
        qty_units = self._units(symbol, "qty", qty, opts.get("qty_units"), required=True)
        price_units = self._units(symbol, "price", price, opts.get("price_units"), required=False)
        if order_type is OrderType.LIMIT and price_units is None:
            raise ValueError("a limit order needs a price (or price_units=)")
        if order_type is OrderType.MARKET and price_units is not None:
            raise ValueError("a market order takes no price")
        return p.NewOrder(
            symbol=symbol,
            client_order_id=opts.get("client_order_id") or self.next_client_order_id(),
            side=parse_enum(Side, side),
            qty=qty_units or 0,
            price=price_units or 0,
            order_type=order_type,
            tif=parse_enum(TimeInForce, opts.get("tif", TimeInForce.GTC)),
            post_only=bool(opts.get("post_only", False)),  # the gateway takes only a real bool
            stp=parse_enum(SelfTradePrevention, opts.get("stp", SelfTradePrevention.CANCEL_NEWEST)),
        )

    def make_amend(
        self,
        symbol: str,
        order_id: int = 0,
        client_order_id: str = "",
        *,
        price: Number | None = None,
        qty: Number | None = None,
        price_units: int | None = None,
        qty_units: int | None = None,
    ) -> p.Amend:
        """An `Amend` request (not sent); `qty` is the new total quantity, filled included."""
        _names_order(order_id, client_order_id)
        new_price = self._units(symbol, "price", price, price_units, required=False)
        new_qty = self._units(symbol, "qty", qty, qty_units, required=False)
        if new_price is None and new_qty is None:
            raise ValueError("an amend needs a new price and/or quantity")
        return p.Amend(
            symbol=symbol,
            order_id=order_id,
            orig_client_order_id=client_order_id,
            price=new_price or 0,
            qty=new_qty or 0,
        )

    def _units(
        self, symbol: str, what: str, human: Number | None, units: int | None, *, required: bool
    ) -> int | None:
        if human is not None and units is not None:
            raise TypeError(f"give {what} or {what}_units, not both")
        if human is not None:
            inst = self.instrument(symbol)
            return to_units(inst, price=human) if what == "price" else to_units(inst, qty=human)
        if units is not None and (isinstance(units, bool) or not isinstance(units, int)):
            raise TypeError(f"{what}_units must be an int, not {type(units).__name__}")
        if units is None and required:
            raise TypeError(f"give {what} (Decimal or decimal text) or {what}_units (int)")
        return units

    def _stamp(self, request: Request) -> int:
        # 0 is reserved for unsolicited execution reports, so ids start at 1.
        if not request.req_id:
            request.req_id = next(self._req_ids)
        return request.req_id

    def _decode(self, frame: bytes) -> Reply:
        try:
            reply: Reply = p.reply_decoder.decode(frame)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"undecodable reply from {self.endpoint}: {exc}") from exc
        return reply

    def _take_from_inbox(self, waiter: _Waiter) -> None:
        # A reply can already be here: a pipelined request's, collected while waiting on another.
        kept = [msg for msg in self.inbox if not waiter.offer(msg)]
        if len(kept) != len(self.inbox):
            self.inbox = deque(kept)

    def _deliver(self, waiter: _Waiter, msg: Reply) -> None:
        if not waiter.offer(msg):
            self.inbox.append(msg)

    def _take_reports(self) -> list[ExecutionReport]:
        reports = [msg for msg in self.inbox if isinstance(msg, ExecutionReport)]
        if reports:
            self.inbox = deque(msg for msg in self.inbox if not isinstance(msg, ExecutionReport))
        return reports

    def _logged_on(self, reply: Reply) -> LogonAck:
        ack = _expect(reply, LogonAck, "logon")
        self.account = ack.account
        self.instruments = {inst.symbol: inst for inst in ack.instruments}
        return ack

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _timeout(self, what: str, timeout: float | None) -> TimeoutError:
        seconds = self.timeout if timeout is None else timeout
        return TimeoutError(f"no reply from {self.endpoint} within {seconds:g} s ({what}); is clobd running?")

    def _batch_waiter(self, orders: list[p.NewOrder]) -> tuple[p.OrderBatch, _Batch]:
        coids = [order.client_order_id for order in orders]
        if len(set(coids)) != len(coids) or not all(coids):
            raise ValueError("every order of a batch needs its own non-empty client_order_id")
        batch = p.OrderBatch(orders=orders)
        req_id = self._stamp(batch)
        for order in orders:
            order.req_id = req_id  # whichever the gateway echoes, the batch's or the order's
        return batch, _Batch(req_id, coids)


def _names_order(order_id: int, client_order_id: str) -> None:
    if bool(order_id) == bool(client_order_id):
        raise ValueError("name the order by order_id or by client_order_id (exactly one)")


def _ms_left(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000))


def _new_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    server_key: Key | None,
    keypair: tuple[Key, Key] | None,
    timeout: float,
) -> zmq.Socket[bytes]:
    socket = context.socket(zmq.DEALER)
    socket.sndhwm = socket.rcvhwm = _HWM
    # A full send queue, or no connection at all (a refused CURVE key), fails the send
    # after `timeout` instead of blocking it for good.
    socket.sndtimeo = int(timeout * 1000)
    _secure(socket, server_key, keypair)
    socket.connect(endpoint)
    return socket


# --- the synchronous client ---------------------------------------------------------------


class Client(_Core):
    """A blocking connection to the gateway. Not thread-safe: one thread per client."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        curve_server_key: Key | None = None,
        curve_keypair: tuple[Key, Key] | None = None,
        timeout: float = 5.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        super().__init__(endpoint, timeout)
        ctx = context or zmq.Context.instance()
        self._socket = _new_socket(ctx, endpoint, curve_server_key, curve_keypair, timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, linger: int = 0) -> None:
        """Log out and close the socket; `linger` ms to flush other unsent messages (0: drop them)."""
        self._close_socket(self._socket, linger)

    # low level: pipelining

    def send(self, request: Request) -> int:
        """Send without waiting; returns the `req_id` (assigned here if the request has none)."""
        req_id = self._stamp(request)
        try:
            self._socket.send(p.encoder.encode(request))
        except zmq.Again:
            raise self._timeout(f"send queue full, req_id={req_id}", None) from None
        return req_id

    send_nowait = send

    def recv(self, timeout: float | None = None) -> Reply:
        """The next message of any kind, queued ones first. TimeoutError if none arrives."""
        if self.inbox:
            return self.inbox.popleft()
        return self._read(self._deadline(timeout), "any message", timeout)

    recv_any = recv

    def wait_reply(self, req_id: int, timeout: float | None = None) -> Reply:
        """The reply to a request sent with `send`; other messages stay queued."""
        waiter = _One(req_id, f"req_id={req_id}")
        self._wait(waiter, timeout)
        return waiter.result

    def request(self, request: Request, timeout: float | None = None) -> Reply:
        """Send `request` and return its reply."""
        return self.wait_reply(self.send(request), timeout)

    def events(self) -> list[ExecutionReport]:
        """Execution reports received so far (removed from the queue); never waits."""
        self._drain()
        return self._take_reports()

    def poll_reports(self, timeout: float | None = None) -> list[ExecutionReport]:
        """Execution reports, waiting up to `timeout` for the first; [] if none came."""
        reports = self.events()
        deadline = self._deadline(timeout)
        while not reports:
            try:
                msg = self._read(deadline, "execution reports", timeout)
            except TimeoutError:
                return []
            if isinstance(msg, ExecutionReport):
                reports.append(msg)
            else:
                self.inbox.append(msg)
        return reports + self.events()

    # requests

    def logon(self, account: str, timeout: float | None = None) -> LogonAck:
        """Log on as `account`; keeps the instruments (symbol -> InstrumentInfo) for conversions."""
        return self._logged_on(self.request(p.Logon(account=account), timeout))

    def new_order(
        self,
        symbol: str,
        side: Side | str,
        qty: Number | None = None,
        price: Number | None = None,
        *,
        timeout: float | None = None,
        **opts: Unpack[OrderOptions],
    ) -> Ack | Reject:
        """Place one order. The Ack's events say what happened (an engine refusal is a
        `Rejected` event inside an Ack; see `rejection`)."""
        order = self.make_order(symbol, side, qty, price, **opts)
        return _order_reply(self.request(order, timeout), "new_order")

    def send_batch(self, orders: Iterable[p.NewOrder], timeout: float | None = None) -> list[Ack | Reject]:
        """Place `orders` (from `make_order`) in one message; replies in the orders' order."""
        batch, waiter = self._batch_waiter(list(orders))
        self.send(batch)
        self._wait(waiter, timeout)
        return [waiter.results[order.client_order_id] for order in batch.orders]

    def cancel(
        self, symbol: str, order_id: int = 0, client_order_id: str = "", timeout: float | None = None
    ) -> Ack | Reject:
        """Cancel one order, named by engine `order_id` or by its `client_order_id`."""
        _names_order(order_id, client_order_id)
        request = p.Cancel(symbol=symbol, order_id=order_id, orig_client_order_id=client_order_id)
        return _order_reply(self.request(request, timeout), "cancel")

    def amend(
        self,
        symbol: str,
        order_id: int = 0,
        client_order_id: str = "",
        *,
        price: Number | None = None,
        qty: Number | None = None,
        price_units: int | None = None,
        qty_units: int | None = None,
        timeout: float | None = None,
    ) -> Ack | Reject:
        """New price and/or new total quantity (filled included) for one order."""
        request = self.make_amend(
            symbol,
            order_id,
            client_order_id,
            price=price,
            qty=qty,
            price_units=price_units,
            qty_units=qty_units,
        )
        return _order_reply(self.request(request, timeout), "amend")

    def mass_cancel(self, symbol: str = "", timeout: float | None = None) -> list[Ack | Reject]:
        """Cancel this account's orders on `symbol` ("" = every instrument); one reply each."""
        request = p.MassCancel(symbol=symbol)
        waiter = _MassCancel(self.send(request))
        self._wait(waiter, timeout)
        return waiter.replies

    def order_status(
        self, symbol: str, order_id: int = 0, client_order_id: str = "", timeout: float | None = None
    ) -> OrderStatusReply:
        _names_order(order_id, client_order_id)
        request = p.OrderStatus(symbol=symbol, order_id=order_id, orig_client_order_id=client_order_id)
        return _expect(self.request(request, timeout), OrderStatusReply, "order_status")

    def book(self, symbol: str, depth: int = 10, timeout: float | None = None) -> BookReply:
        """Aggregated levels in units; `decimal_book(client.instrument(symbol), reply)` converts."""
        return _expect(self.request(p.BookQuery(symbol=symbol, depth=depth), timeout), BookReply, "book")

    def ping(self, timeout: float | None = None) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter()
        _expect(self.request(p.Ping(), timeout), Pong, "ping")
        return time.perf_counter() - start

    # internals

    def _read(self, deadline: float, what: str, timeout: float | None) -> Reply:
        # Try first, poll only when empty: a pipelining caller usually finds a reply waiting.
        try:
            frame = self._socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            if not self._socket.poll(_ms_left(deadline), zmq.POLLIN):
                raise self._timeout(what, timeout) from None
            frame = self._socket.recv(zmq.NOBLOCK)
        return self._decode(frame)

    def _drain(self) -> None:
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.inbox.append(self._decode(frame))

    def _wait(self, waiter: _Waiter, timeout: float | None) -> None:
        self._take_from_inbox(waiter)
        deadline = self._deadline(timeout)
        while not waiter.done:
            self._deliver(waiter, self._read(deadline, waiter.what, timeout))


# --- the asyncio client -------------------------------------------------------------------


class AsyncClient(_Core):
    """`Client`'s API as coroutines, on `zmq.asyncio` (uvloop if the application installed it)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        curve_server_key: Key | None = None,
        curve_keypair: tuple[Key, Key] | None = None,
        timeout: float = 5.0,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        super().__init__(endpoint, timeout)
        ctx = context or zmq.asyncio.Context.instance()
        socket = _new_socket(ctx, endpoint, curve_server_key, curve_keypair, timeout)  # type: ignore[arg-type]
        self._socket: zmq.asyncio.Socket = socket  # type: ignore[assignment]

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self, linger: int = 0) -> None:
        self._close_socket(self._socket, linger)

    async def send(self, request: Request) -> int:
        req_id = self._stamp(request)
        try:
            await self._socket.send(p.encoder.encode(request))
        except zmq.Again:
            raise self._timeout(f"send queue full, req_id={req_id}", None) from None
        return req_id

    send_nowait = send

    async def recv(self, timeout: float | None = None) -> Reply:
        if self.inbox:
            return self.inbox.popleft()
        return await self._read(self._deadline(timeout), "any message", timeout)

    recv_any = recv

    async def wait_reply(self, req_id: int, timeout: float | None = None) -> Reply:
        waiter = _One(req_id, f"req_id={req_id}")
        await self._wait(waiter, timeout)
        return waiter.result

    async def request(self, request: Request, timeout: float | None = None) -> Reply:
        return await self.wait_reply(await self.send(request), timeout)

    async def events(self) -> list[ExecutionReport]:
        await self._drain()
        return self._take_reports()

    async def poll_reports(self, timeout: float | None = None) -> list[ExecutionReport]:
        reports = await self.events()
        deadline = self._deadline(timeout)
        while not reports:
            try:
                msg = await self._read(deadline, "execution reports", timeout)
            except TimeoutError:
                return []
            if isinstance(msg, ExecutionReport):
                reports.append(msg)
            else:
                self.inbox.append(msg)
        return reports + await self.events()

    async def logon(self, account: str, timeout: float | None = None) -> LogonAck:
        return self._logged_on(await self.request(p.Logon(account=account), timeout))

    async def new_order(
        self,
        symbol: str,
        side: Side | str,
        qty: Number | None = None,
        price: Number | None = None,
        *,
        timeout: float | None = None,
        **opts: Unpack[OrderOptions],
    ) -> Ack | Reject:
        order = self.make_order(symbol, side, qty, price, **opts)
        return _order_reply(await self.request(order, timeout), "new_order")

    async def send_batch(
        self, orders: Iterable[p.NewOrder], timeout: float | None = None
    ) -> list[Ack | Reject]:
        batch, waiter = self._batch_waiter(list(orders))
        await self.send(batch)
        await self._wait(waiter, timeout)
        return [waiter.results[order.client_order_id] for order in batch.orders]

    async def cancel(
        self, symbol: str, order_id: int = 0, client_order_id: str = "", timeout: float | None = None
    ) -> Ack | Reject:
        _names_order(order_id, client_order_id)
        request = p.Cancel(symbol=symbol, order_id=order_id, orig_client_order_id=client_order_id)
        return _order_reply(await self.request(request, timeout), "cancel")

    async def amend(
        self,
        symbol: str,
        order_id: int = 0,
        client_order_id: str = "",
        *,
        price: Number | None = None,
        qty: Number | None = None,
        price_units: int | None = None,
        qty_units: int | None = None,
        timeout: float | None = None,
    ) -> Ack | Reject:
        request = self.make_amend(
            symbol,
            order_id,
            client_order_id,
            price=price,
            qty=qty,
            price_units=price_units,
            qty_units=qty_units,
        )
        return _order_reply(await self.request(request, timeout), "amend")

    async def mass_cancel(self, symbol: str = "", timeout: float | None = None) -> list[Ack | Reject]:
        waiter = _MassCancel(await self.send(p.MassCancel(symbol=symbol)))
        await self._wait(waiter, timeout)
        return waiter.replies

    async def order_status(
        self, symbol: str, order_id: int = 0, client_order_id: str = "", timeout: float | None = None
    ) -> OrderStatusReply:
        _names_order(order_id, client_order_id)
        request = p.OrderStatus(symbol=symbol, order_id=order_id, orig_client_order_id=client_order_id)
        return _expect(await self.request(request, timeout), OrderStatusReply, "order_status")

    async def book(self, symbol: str, depth: int = 10, timeout: float | None = None) -> BookReply:
        reply = await self.request(p.BookQuery(symbol=symbol, depth=depth), timeout)
        return _expect(reply, BookReply, "book")

    async def ping(self, timeout: float | None = None) -> float:
        start = time.perf_counter()
        _expect(await self.request(p.Ping(), timeout), Pong, "ping")
        return time.perf_counter() - start

    async def _read(self, deadline: float, what: str, timeout: float | None) -> Reply:
        if not await self._socket.poll(_ms_left(deadline)):
            raise self._timeout(what, timeout)
        return self._decode(await self._socket.recv(zmq.NOBLOCK))

    async def _drain(self) -> None:
        while await self._socket.poll(0):
            self.inbox.append(self._decode(await self._socket.recv(zmq.NOBLOCK)))

    async def _wait(self, waiter: _Waiter, timeout: float | None) -> None:
        self._take_from_inbox(waiter)
        deadline = self._deadline(timeout)
        while not waiter.done:
            self._deliver(waiter, await self._read(deadline, waiter.what, timeout))


# --- market data --------------------------------------------------------------------------


class Gap(NamedTuple):
    """Sequences `expected` .. `received - 1` of `symbol` were not seen."""

    symbol: str
    expected: int
    received: int


class GapDetector:
    """Checks that each symbol's orders-topic sequences are contiguous.

    The first message of a symbol only sets the baseline (a subscriber joins mid-stream);
    `expect` sets it from a recovery point instead, e.g. a `BookReply.seq`.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def expect(self, symbol: str, last_seq: int) -> None:
        self.last[symbol] = last_seq

    def observe(self, symbol: str, seq: int) -> Gap | None:
        """The gap before `seq`, if any. An old or repeated `seq` is no gap and moves nothing."""
        last = self.last.get(symbol)
        if last is not None and seq <= last:
            return None
        self.last[symbol] = seq
        if last is None or seq == last + 1:
            return None
        return Gap(symbol, last + 1, seq)


class MarketUpdate(NamedTuple):
    kind: str  # "orders" or "trades"
    topic: str
    data: MarketData
    gap: Gap | None  # only ever set on the orders topic


_TOPICS = {"orders": p.orders_topic, "trades": p.trades_topic}


class Subscriber:
    """Decoded market data from the gateway's PUB socket, with gap detection on "orders".

    `symbols` empty subscribes to every instrument. ZeroMQ filters by topic *prefix*, so the
    exact topic is checked again here (a subscription to "...BTC" would also match "...BTCUSDT").
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_MARKET_DATA_ENDPOINT,
        env: str = "dev",
        symbols: Iterable[str] = (),
        topics: Iterable[str] = ("orders", "trades"),
        *,
        curve_server_key: Key | None = None,
        curve_keypair: tuple[Key, Key] | None = None,
        timeout: float = 5.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.gaps = GapDetector()
        self._exact: dict[bytes, str] = {}
        self._prefixes: dict[bytes, str] = {}
        wanted = list(symbols)
        for kind in topics:
            if kind not in _TOPICS:
                raise ValueError(f"unknown topic {kind!r}: use 'orders' and/or 'trades'")
            if wanted:
                self._exact.update((_TOPICS[kind](env, symbol), kind) for symbol in wanted)
            else:
                self._prefixes[_TOPICS[kind](env, "")] = kind
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.rcvhwm = _HWM
        _secure(self._socket, curve_server_key, curve_keypair)
        for topic in (*self._exact, *self._prefixes):
            self._socket.subscribe(topic)
        self._socket.connect(endpoint)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, linger: int = 0) -> None:
        self._socket.close(linger=linger)

    def recv(self, timeout: float | None = None) -> MarketUpdate:
        """The next update on a subscribed topic. TimeoutError if none arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if not self._socket.poll(_ms_left(deadline), zmq.POLLIN):
                raise TimeoutError(f"no market data from {self.endpoint} within the timeout")
            topic, body = self._socket.recv_multipart()
            kind = self._kind(topic)
            if kind is None:
                continue
            try:
                data = p.market_data_decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"undecodable market data on {topic!r}: {exc}") from exc
            gap = self.gaps.observe(data.symbol, data.seq) if kind == "orders" else None
            return MarketUpdate(kind, topic.decode(), data, gap)

    def _kind(self, topic: bytes) -> str | None:
        if topic in self._exact:
            return self._exact[topic]
        for prefix, kind in self._prefixes.items():
            if topic.startswith(prefix):
                return kind
        return None
