"""The gateway process: the only thing clients talk to.

One thread runs a blocking `zmq.Poller` loop (asyncio measured 6x slower here). Each
iteration it
1. reads the matchers' answers (`link.ToGateway`) and relays them to clients;
2. drains the waiting client messages (bounded), decoding each strictly and refusing bad
   input with a `Reject`; accepted commands are stamped (gateway seq, unix-ns ts, the
   session's account: orders carry no account, which is how ownership is enforced) and
   queued per matcher;
3. sends ONE `CommandBatch` frame per matcher that has work: packing many commands per
   frame is what makes the ipc hop cheap.

Nothing here ever waits on a peer. Sends to matchers and to clients are NOBLOCK: a matcher
that does not keep up gives its clients `Reject(BUSY)` (in-flight bound, then the socket's
HWM); a client that stops reading loses replies (counted, logged once a second).

Market data does not pass through this loop: `zmq.proxy_steerable` forwards it from the
matchers (XSUB) to subscribers (XPUB) in a thread that runs in libzmq with the GIL released,
so it costs the order path nothing, and XPUB drops for a slow subscriber at its SNDHWM.

Mass cancel of every instrument fans out one `MassCancel` per matcher. Each matcher's
answer is relayed as it comes (an `Ack`, or a `Reject` naming the symbol; an instrument that
cannot take it at all gets its `Reject(BUSY)` at once), then one `MassCancelDone` lists the
instruments it went to. A request refused as a whole (not logged on, unknown instrument)
gets only the `Reject` (docs/protocol.md, "mass_cancel").
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import zmq
from zmq.backend import Socket as _BaseSocket
from zmq.utils.monitor import recv_monitor_message

from daemon import logs, notify
from daemon.child import end_context
from daemon.config import Config
from engine import messages as E
from engine.messages import RejectReason, Trade
from gateway import admin, auth, protocol
from gateway.protocol import (
    Ack,
    Amend,
    BookQuery,
    BookReply,
    Cancel,
    ExecutionReport,
    InstrumentInfo,
    Logon,
    LogonAck,
    Logout,
    LogoutAck,
    MassCancel,
    MassCancelDone,
    NewOrder,
    OrderBatch,
    OrderStatus,
    OrderStatusReply,
    Ping,
    Pong,
    Reject,
)
from gateway.routing import split
from gateway.sessions import Admission, Sessions
from gateway.stats import Tally, Throttle
from matcher import link

_NB = int(zmq.NOBLOCK)  # plain ints: pyzmq converts enum flags on every call
_MORE_NB = int(zmq.SNDMORE | zmq.NOBLOCK)
_CLIENT_DRAIN = 4096  # client messages read per loop iteration before flushing batches
_REPLY_DRAIN = 512  # matcher frames read per loop iteration
_POLL_MS = 100  # idle wake-up: how soon a stop request or a due summary is noticed
_MATCHER_SNDHWM = 1000  # CommandBatch frames queued towards one matcher
_CLIENT_SNDHWM = 10_000  # replies queued towards one client before they are dropped
_MD_HWM = 10_000  # market-data messages queued per subscriber (then dropped)
_MAX_BOOK_DEPTH = 1000
_STOP_FLUSH_S = 1.0  # on SIGTERM: how long to keep relaying answers to what was sent
_LINGER_MS = 200
_CONTEXT_END_S = 2.0  # the lingers, and a margin: see daemon.child.end_context
# Mass-cancel fan-outs travel with a made-up `conn` so their answers can be told apart.
# ROUTER-generated routing ids are 5 bytes starting with 0 and client-set ones never start
# with 0, so a 0-led id of another length can never be a real connection.
_FANOUT_PREFIX = b"\x00mass-cancel:"

_ADMIN_DRAIN = 64  # admin requests read per loop iteration
# A reject's text at most (characters). Its other fields are bounded by the protocol
# (`protocol.MAX_NAME_CHARS`), so no reply to a bad request is ever large: a client that
# sends big and never reads cannot make the replies queued towards it (up to
# _CLIENT_SNDHWM of them) cost more than a few MiB.
_MAX_REJECT_TEXT = 200

_Handler = Callable[[bytes, str, Any], None]


class _Route:
    """One matcher: its socket, readiness and the commands queued for this iteration."""

    __slots__ = ("inflight", "monitor", "pending", "pid", "ready", "sock", "symbol")

    def __init__(self, symbol: str, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
        self.symbol = symbol
        self.sock = sock
        self.monitor = monitor  # EVENT_DISCONNECTED: the matcher process went away
        self.ready = False  # a MatcherReady seen since start or since the last disconnect
        self.pid = 0
        self.inflight = 0  # commands and queries queued or sent, not yet answered
        self.pending: list[link.Envelope] = []


class _Fanout:
    """A mass cancel waiting for its matchers."""

    __slots__ = ("conn", "req_id", "symbols", "waiting")

    def __init__(self, conn: bytes, req_id: int) -> None:
        self.conn = conn
        self.req_id = req_id
        self.waiting: set[str] = set()  # sent to, not yet answered
        self.symbols: list[str] = []  # sent to and answered (Ack or Reject), in that order


class _AdminRequest:
    """A `StatusRequest` waiting for the matchers' `AdminAnswer`s."""

    __slots__ = ("answers", "conn", "deadline", "req_id", "waiting")

    def __init__(self, conn: bytes, req_id: int, deadline: float) -> None:
        self.conn = conn
        self.req_id = req_id
        self.deadline = deadline  # monotonic: then answered with what came
        self.waiting: set[str] = set()
        self.answers: dict[str, link.AdminAnswer] = {}


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = logs.get("gateway")
        self.tally = Tally(self.log)
        self._errors = Throttle()
        self.sessions = Sessions(config.gateway.max_sessions)
        self.admission = Admission(config)
        self.curve = config.curve_enabled()
        # The gateway sequence stamped on every command: a trace stamp, not the journal's
        # sequence. Seeded from the clock so it stays unique across gateway restarts.
        self._seq = itertools.count(time.time_ns() // 1000)
        self.stopping = False
        self._ticks = itertools.count()  # the sessions' clock: which was active least recently
        self._max_bytes = config.gateway.max_message_bytes
        self._max_batch = config.gateway.max_batch_orders
        self._max_inflight = config.gateway.max_inflight_per_matcher
        self._frame_commands = config.matcher.max_batch
        self._fanouts: dict[bytes, _Fanout] = {}
        self._fanout_ids = 0
        self._strangers: set[str] = set()  # symbols of unconfigured matchers, warned about
        self._admin_pending: dict[int, _AdminRequest] = {}
        self._admin_ids = 0
        self._instruments = [
            InstrumentInfo(i.symbol, i.price_decimals, i.qty_decimals, i.tick_size, i.lot_size,
                           i.min_qty, i.max_qty)
            for i in config.instruments
        ]
        self._handlers: dict[type, _Handler] = {
            NewOrder: self._new_order,
            OrderBatch: self._order_batch,
            Cancel: self._cancel,
            Amend: self._amend,
            MassCancel: self._mass_cancel,
            OrderStatus: self._order_status,
            BookQuery: self._book_query,
            Ping: self._ping,
            Logout: self._logout,
        }
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._auth: Any = None
        self._md_thread: threading.Thread | None = None
        self._md_control: zmq.Socket[bytes] | None = None
        self.routes: dict[str, _Route] = {}
        self._open_sockets()

    # --- start-up ---------------------------------------------------------------------------

    def _open_sockets(self) -> None:
        Path(self.config.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = None
        if self.curve:
            keys = auth.server_keys(self.config.gateway.curve_keys_dir, self.log)
            self._auth = auth.start_authenticator(self.ctx, self.config)
        self.clients = self._socket(zmq.ROUTER)
        # pyzmq's Socket.send is a Python wrapper (routing_id/group handling) around the
        # compiled method; calling that directly saves ~0.4 us per reply (measured).
        self._send_raw = _BaseSocket.send.__get__(self.clients)
        self.clients.router_mandatory = 1  # a send to a vanished peer fails: end its session
        self.clients.sndhwm = _CLIENT_SNDHWM
        # Frames above max_message_bytes are still read (to answer MESSAGE_TOO_LARGE), but
        # anything far above cannot be meant as a message: libzmq drops that connection.
        self.clients.maxmsgsize = min(4 * self._max_bytes, 2**62)
        if keys is not None:
            auth.make_curve_server(self.clients, keys)
        _bind(self.clients, self.config.gateway.bind)
        self.replies = self._socket(zmq.PULL)
        _bind(self.replies, self.config.replies_endpoint())
        for inst in self.config.instruments:
            self.routes[inst.symbol] = self._matcher_route(inst.symbol)
        self.admin = self._socket(zmq.ROUTER)
        _bind_private(self.admin, self.config.admin_endpoint())
        self._start_market_data(keys)

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.linger = _LINGER_MS
        return sock

    def _matcher_route(self, symbol: str) -> _Route:
        sock = self._socket(zmq.PUSH)
        sock.sndhwm = _MATCHER_SNDHWM
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(self.config.matcher_endpoint(symbol))
        return _Route(symbol, sock, monitor)

    def _start_market_data(self, keys: auth.ServerKeys | None) -> None:
        xsub = self._socket(zmq.XSUB)
        xsub.rcvhwm = _MD_HWM
        _bind(xsub, self.config.market_data_endpoint())
        xpub = self._socket(zmq.XPUB)
        xpub.sndhwm = _MD_HWM  # per subscriber; XPUB drops rather than block the proxy
        if keys is not None:
            auth.make_curve_server(xpub, keys)
        _bind(xpub, self.config.gateway.market_data_bind)
        control = self._socket(zmq.PAIR)
        endpoint = f"inproc://md-control-{id(self)}"
        control.bind(endpoint)
        peer = self._socket(zmq.PAIR)
        peer.connect(endpoint)
        self._md_control = control
        # The sockets move to the thread; thread start is the memory barrier ZeroMQ asks for.
        self._md_thread = threading.Thread(
            target=_proxy, args=(xsub, xpub, peer), name="market-data", daemon=True
        )
        self._md_thread.start()

    # --- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Run until `stop()`, then shut down."""
        poller = zmq.Poller()
        for route in self.routes.values():
            poller.register(route.monitor, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.admin, zmq.POLLIN)
        logs.log(self.log, "serving", bind=self.config.gateway.bind,
                 market_data=self.config.gateway.market_data_bind, curve=self.curve,
                 instruments=",".join(self.routes))
        notify.notify("READY=1\nCHILD=gateway")
        gc.freeze()  # start-up objects never need collecting: fewer, shorter GC pauses
        clients, replies, admin_sock = self.clients, self.replies, self.admin
        while not self.stopping:
            ready = dict(poller.poll(_POLL_MS))
            if len(ready) > (clients in ready) + (replies in ready) + (admin_sock in ready):
                self._check_matchers()  # before replies: a loss precedes any later MatcherReady
            if replies in ready:
                self._drain_replies()
            if clients in ready:
                self._drain_clients()
                self._flush()
            now = time.monotonic()
            if admin_sock in ready:
                self._drain_admin(now)
            if self._admin_pending:
                self._expire_admin(now)
            self.tally.maybe_log(now)
        self._shutdown()

    def stop(self) -> None:
        self.stopping = True

    # --- client messages --------------------------------------------------------------------

    def _drain_clients(self) -> None:
        recv = self.clients.recv
        for _ in range(_CLIENT_DRAIN):
            try:
                conn = recv(_NB)
            except zmq.Again:
                return
            # A ROUTER message arrives whole, so the payload is already here. A Frame because
            # `.more` is much cheaper than getsockopt(RCVMORE) and carries the CURVE User-Id.
            frame = recv(_NB, copy=False)
            if frame.more:
                self._skip_rest(conn)
                continue
            try:
                self._on_message(conn, frame)
            except Exception:
                # A bug must cost one message, never the gateway (nor the other clients).
                self._failed("client_message_failed")
                self._reject(conn, RejectReason.MALFORMED_MESSAGE, "internal error", 0)

    def _failed(self, event: str, level: int = logging.ERROR, traceback: bool = True) -> None:
        """Log the exception being handled, at most once a second (a bug hit by every
        message must not become a log storm)."""
        if self._errors.allow():
            fields: dict[str, object] = {"suppressed": self._errors.suppressed}
            if not traceback:
                fields["error"] = str(sys.exc_info()[1])
            self.log.log(level, event, exc_info=traceback, extra={"fields": fields})
            self._errors.suppressed = 0

    def _skip_rest(self, conn: bytes) -> None:
        while self.clients.recv(_NB, copy=False).more:
            pass
        self._reject(conn, RejectReason.MALFORMED_MESSAGE, "expected exactly one frame per message", 0)

    def _on_message(self, conn: bytes, frame: zmq.Frame) -> None:
        if len(frame) > self._max_bytes:
            self._reject(conn, RejectReason.MESSAGE_TOO_LARGE,
                         f"message of {len(frame)} bytes exceeds {self._max_bytes}", 0)
            return
        try:
            msg = _decode_request(frame)  # type: ignore[arg-type]  # a Frame is a buffer
        except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included;
            # RecursionError: msgspec's answer to values nested too deeply (client input, no bug)
            self._reject(conn, RejectReason.MALFORMED_MESSAGE, str(exc), _req_id_of(frame))
            return
        account = self.sessions.account_of.get(conn)
        kind = type(msg)
        # (CURVE: a client-chosen routing id reused by another key is not that session.)
        if account is not None and kind is not Logon and (not self.curve or frame.get("User-Id") == account):
            self.sessions.seen[conn] = next(self._ticks)
            self._handlers[kind](conn, account, msg)
        elif isinstance(msg, Logon):
            self._logon(conn, msg, frame)
        elif isinstance(msg, Ping):  # answered before logon too: a liveness check needs no account
            self._ping(conn, "", msg)
        else:
            self._reject(conn, RejectReason.NOT_LOGGED_ON, "log on first", msg.req_id)

    def _logon(self, conn: bytes, msg: Logon, frame: zmq.Frame) -> None:
        if msg.protocol_version != protocol.PROTOCOL_VERSION:
            self._reject(conn, RejectReason.MALFORMED_MESSAGE,
                         f"protocol_version {msg.protocol_version} is not supported "
                         f"(this gateway speaks {protocol.PROTOCOL_VERSION})", msg.req_id)
            return
        user_id = str(frame.get("User-Id")) if self.curve else None
        if not self.admission.admits(msg.account, user_id):
            self.sessions.drop(conn)
            self._reject(conn, RejectReason.UNKNOWN_ACCOUNT,
                         f"account {msg.account!r} may not log on here", msg.req_id)
            return
        fresh = self.sessions.account_of.get(conn) != msg.account
        evicted = self.sessions.bind(conn, msg.account, next(self._ticks))
        if evicted is not None:
            self.tally.evicted += 1
        self._send(conn, _encode(LogonAck(msg.account, self._instruments, msg.req_id)))
        if fresh:  # a client repeating its logon is not news
            logs.log(self.log, "logon", account=msg.account, conn=conn.hex(), sessions=len(self.sessions))

    def _logout(self, conn: bytes, account: str, m: Logout) -> None:
        self.sessions.drop(conn)
        self._send(conn, _encode(LogoutAck(account, m.req_id)))
        logs.log(self.log, "logout", account=account, conn=conn.hex(), sessions=len(self.sessions))

    def _route(self, conn: bytes, symbol: str, req_id: int, client_order_id: str) -> _Route | None:
        """The matcher for `symbol`, charged one in-flight unit; or None, the client told why."""
        route = self.routes.get(symbol)
        if route is None or not route.ready or route.inflight >= self._max_inflight:
            self._unroutable(route, conn, symbol, req_id, client_order_id)
            return None
        route.inflight += 1
        return route

    def _unroutable(self, route: _Route | None, conn: bytes, symbol: str, req_id: int,
                    client_order_id: str) -> None:
        if route is None:
            code, text = RejectReason.UNKNOWN_INSTRUMENT, f"unknown instrument {symbol!r}"
        elif not route.ready:
            code, text = RejectReason.BUSY, "instrument not available"
        else:
            code, text = RejectReason.BUSY, "too many commands in flight"
        self._reject(conn, code, text, req_id, client_order_id, symbol)

    def _new_order(self, conn: bytes, account: str, m: NewOrder) -> None:
        # The hot path: `_route` inlined.
        route = self.routes.get(m.symbol)
        if route is None or not route.ready or route.inflight >= self._max_inflight:
            self._unroutable(route, conn, m.symbol, m.req_id, m.client_order_id)
            return
        route.inflight += 1
        command = E.NewOrder(next(self._seq), _now(), account, m.client_order_id, m.side, m.qty, m.price,
                             m.order_type, m.tif, m.post_only, m.stp)
        route.pending.append(link.Envelope(conn, m.req_id, command))

    def _order_batch(self, conn: bytes, account: str, m: OrderBatch) -> None:
        if len(m.orders) > self._max_batch:
            self._reject(conn, RejectReason.MESSAGE_TOO_LARGE,
                         f"{len(m.orders)} orders in one batch exceed {self._max_batch}", m.req_id)
            return
        new_order = self._new_order
        for order in m.orders:
            order.req_id = m.req_id  # each answer carries the batch's req_id (docs/protocol.md)
            new_order(conn, account, order)

    def _cancel(self, conn: bytes, account: str, m: Cancel) -> None:
        route = self._route(conn, m.symbol, m.req_id, m.orig_client_order_id)
        if route is not None:
            command = E.Cancel(next(self._seq), _now(), account, m.order_id, m.orig_client_order_id)
            route.pending.append(link.Envelope(conn, m.req_id, command))

    def _amend(self, conn: bytes, account: str, m: Amend) -> None:
        route = self._route(conn, m.symbol, m.req_id, m.orig_client_order_id)
        if route is not None:
            command = E.Amend(next(self._seq), _now(), account, m.order_id,
                              m.orig_client_order_id, m.price, m.qty)
            route.pending.append(link.Envelope(conn, m.req_id, command))

    def _mass_cancel(self, conn: bytes, account: str, m: MassCancel) -> None:
        if m.symbol and m.symbol not in self.routes:
            self._reject(conn, RejectReason.UNKNOWN_INSTRUMENT, f"unknown instrument {m.symbol!r}",
                         m.req_id, "", m.symbol)
            return
        self._fanout_ids += 1
        token = _FANOUT_PREFIX + self._fanout_ids.to_bytes(8, "big")
        fanout = _Fanout(conn, m.req_id)
        self._fanouts[token] = fanout
        for symbol in [m.symbol] if m.symbol else list(self.routes):
            route = self._route(conn, symbol, m.req_id, "")
            if route is not None:
                fanout.waiting.add(symbol)
                command = E.MassCancel(next(self._seq), _now(), account)
                route.pending.append(link.Envelope(token, m.req_id, command))
        self._maybe_done(token, fanout)

    def _order_status(self, conn: bytes, account: str, m: OrderStatus) -> None:
        route = self._route(conn, m.symbol, m.req_id, m.orig_client_order_id)
        if route is not None:
            query = link.StatusQuery(conn, m.req_id, account, m.order_id, m.orig_client_order_id)
            self._query(route, conn, m.req_id, query)

    def _book_query(self, conn: bytes, account: str, m: BookQuery) -> None:
        if not 0 < m.depth <= _MAX_BOOK_DEPTH:
            self._reject(conn, RejectReason.INVALID_FIELD, f"depth must be within 1..{_MAX_BOOK_DEPTH}",
                         m.req_id, "", m.symbol)
            return
        route = self._route(conn, m.symbol, m.req_id, "")
        if route is not None:
            self._query(route, conn, m.req_id, link.BookQuery(conn, m.req_id, m.depth))

    def _query(
        self, route: _Route, conn: bytes, req_id: int, query: link.StatusQuery | link.BookQuery
    ) -> None:
        # Commands queued earlier in this iteration go first: a status query must see them.
        self._flush_route(route)
        try:
            route.sock.send(_encode_link(query), _NB)
        except zmq.Again:
            route.inflight -= 1
            self._reject(conn, RejectReason.BUSY, "instrument busy", req_id, "", route.symbol)

    def _ping(self, conn: bytes, account: str, m: Ping) -> None:
        self._send(conn, _encode(Pong(m.req_id)))

    # --- towards the matchers ---------------------------------------------------------------

    def _flush(self) -> None:
        for route in self.routes.values():
            if route.pending:
                self._flush_route(route)

    def _flush_route(self, route: _Route) -> None:
        items = route.pending
        if not items:
            return
        route.pending = []
        # Frames no larger than the matcher's group commit: it drains whole frames.
        step = self._frame_commands
        for start in range(0, len(items), step):
            self._send_batch(route, items[start : start + step])

    def _send_batch(self, route: _Route, items: list[link.Envelope]) -> None:
        try:
            route.sock.send(_encode_link(link.CommandBatch(items)), _NB)
        except zmq.Again:  # the matcher's queue is full: tell the clients now, never wait
            route.inflight -= len(items)
            for env in items:
                self._refused(route.symbol, env.conn, env.req_id, _client_order_id(env.command),
                              RejectReason.BUSY, "instrument busy")

    # --- matcher answers --------------------------------------------------------------------

    def _drain_replies(self) -> None:
        recv = self.replies.recv
        for _ in range(_REPLY_DRAIN):
            try:
                data = recv(_NB)
            except zmq.Again:
                return
            try:
                self._on_answer(_decode_link(data))
            except msgspec.DecodeError:  # matchers are trusted, but never crash
                self._failed("bad_matcher_message", level=logging.ERROR, traceback=False)
            except Exception:
                self._failed("matcher_message_failed")

    def _on_answer(self, msg: link.ToGateway) -> None:
        if isinstance(msg, link.OutcomeBatch):
            self._on_outcomes(msg)
        elif isinstance(msg, link.StatusAnswer):
            self._on_status(msg)
        elif isinstance(msg, link.BookAnswer):
            self._on_book(msg)
        elif isinstance(msg, link.AdminAnswer):
            self._on_admin_answer(msg)
        else:
            self._on_ready(msg)

    def _on_outcomes(self, batch: link.OutcomeBatch) -> None:
        symbol = batch.symbol
        self._answered(symbol, len(batch.outcomes) + len(batch.refusals))
        listening = self.sessions.conns_of
        fanouts = self._fanouts
        send = self._send
        for o in batch.outcomes:
            events = o.events
            # Most commands concern only their own account (a resting order's Accepted):
            # those need no splitting. A Trade always does (the other side is blanked).
            if len(events) == 1 and type(events[0]) is not Trade and events[0].account == o.account:  # type: ignore[union-attr]
                mine, others = events, None
            else:
                mine, others = split(o.account, events, listening)
            if fanouts and o.conn in fanouts:
                self._fanout_answered(o.conn, symbol, o.seq, mine, True)
            else:
                send(o.conn, _encode(Ack(symbol, o.seq, mine, o.req_id, o.client_order_id, o.duplicate)))
            if others is not None:
                self._report(symbol, o.seq, others)
        for r in batch.refusals:
            self._refused(symbol, r.conn, r.req_id, r.client_order_id, r.code, r.text)

    def _answered(self, symbol: str, n: int) -> None:
        route = self.routes.get(symbol)
        if route is not None:
            # What was sent before a restart may still be answered: never below zero.
            route.inflight = max(0, route.inflight - n)

    def _report(self, symbol: str, seq: int, others: dict[str, list[E.Event]]) -> None:
        for account, events in others.items():
            payload = _encode(ExecutionReport(symbol, seq, events))
            # A copy: a failed send ends a session, which edits this set.
            for conn in tuple(self.sessions.conns_of.get(account, ())):
                self._send(conn, payload)

    def _refused(self, symbol: str, conn: bytes, req_id: int, client_order_id: str, code: int,
                 text: str) -> None:
        """A command that reached no journal: tell its requester (or its fan-out)."""
        if conn in self._fanouts:
            fanout = self._fanouts[conn]
            self._reject(fanout.conn, code, text, fanout.req_id, "", symbol)
            self._fanout_answered(conn, symbol, 0, None, False)
        else:
            self._reject(conn, code, text, req_id, client_order_id, symbol)

    def _fanout_answered(self, token: bytes, symbol: str, seq: int, events: list[E.Event] | None,
                         journaled: bool) -> None:
        fanout = self._fanouts[token]
        if journaled:
            self._send(fanout.conn, _encode(Ack(symbol, seq, events or [], fanout.req_id)))
        fanout.waiting.discard(symbol)
        fanout.symbols.append(symbol)
        self._maybe_done(token, fanout)

    def _maybe_done(self, token: bytes, fanout: _Fanout) -> None:
        if not fanout.waiting:
            del self._fanouts[token]
            self._send(fanout.conn, _encode(MassCancelDone(fanout.symbols, fanout.req_id)))

    def _on_status(self, a: link.StatusAnswer) -> None:
        self._answered(a.symbol, 1)
        reply = OrderStatusReply(a.symbol, a.found, a.order_id, a.client_order_id, a.side, a.price,
                                 a.qty, a.remaining, a.req_id)
        self._send(a.conn, _encode(reply))

    def _on_book(self, a: link.BookAnswer) -> None:
        self._answered(a.symbol, 1)
        self._send(a.conn, _encode(BookReply(a.symbol, a.seq, a.bids, a.asks, a.req_id)))

    def _on_ready(self, msg: link.MatcherReady) -> None:
        """A matcher serves. Matchers repeat this every second (so a restarted gateway
        relearns them): from a known, ready pid it is only a heartbeat."""
        route = self.routes.get(msg.symbol)
        if route is None:
            if msg.symbol not in self._strangers:  # once, not once a second
                self._strangers.add(msg.symbol)
                logs.log(self.log, "unknown_matcher", level=logging.WARNING, symbol=msg.symbol,
                         pid=msg.pid)
            return
        if route.ready and route.pid == msg.pid:
            return
        restarted, lost = route.pid not in (0, msg.pid), route.inflight
        if restarted:
            # What the previous process never answered is gone; its clients resend (and the
            # matcher's client-id index answers a resend of a journaled order with its outcome).
            route.inflight = 0
            self._abandon_fanouts(msg.symbol)
        route.ready, route.pid = True, msg.pid
        logs.log(self.log, "matcher_ready", symbol=msg.symbol, pid=msg.pid, seq=msg.seq,
                 restarted=restarted, unanswered=lost if restarted else 0)
        if all(r.ready for r in self.routes.values()):
            # The supervisor tells systemd READY=1 only once orders can really be routed.
            notify.notify("SERVING=1\nCHILD=gateway")

    def _check_matchers(self) -> None:
        for route in self.routes.values():
            while route.monitor.poll(0):
                event = recv_monitor_message(route.monitor)
                if event["event"] == zmq.EVENT_DISCONNECTED and route.ready:
                    route.ready = False
                    self._abandon_fanouts(route.symbol)
                    logs.log(self.log, "matcher_lost", level=logging.WARNING, symbol=route.symbol,
                             pid=route.pid, unanswered=route.inflight)

    def _abandon_fanouts(self, symbol: str) -> None:
        """Mass cancels waiting on a matcher that went away will not hear from it."""
        for token, fanout in list(self._fanouts.items()):
            if symbol in fanout.waiting:
                self._refused(symbol, token, fanout.req_id, "", RejectReason.BUSY, "instrument restarted")

    # --- the admin endpoint (local only) -----------------------------------------------------

    def _drain_admin(self, now: float) -> None:
        for _ in range(_ADMIN_DRAIN):
            try:
                frames = self.admin.recv_multipart(_NB)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            conn, payload = frames
            try:
                request = admin.request_decoder.decode(payload)
            except msgspec.DecodeError:
                self._failed("bad_admin_request", level=logging.WARNING, traceback=False)
                continue
            self._admin_ids += 1
            token = self._admin_ids
            pending = _AdminRequest(conn, request.req_id, now + admin.ANSWER_TIMEOUT_S)
            self._admin_pending[token] = pending
            depth = max(0, min(request.depth, _MAX_BOOK_DEPTH))
            query = _encode_link(link.AdminQuery(conn, token, request.state_hash, depth))
            for route in self.routes.values():
                if not route.ready:
                    continue
                try:
                    route.sock.send(query, _NB)
                except zmq.Again:
                    continue  # listed as not answered
                pending.waiting.add(route.symbol)
            if not pending.waiting:
                self._admin_reply(token)

    def _on_admin_answer(self, a: link.AdminAnswer) -> None:
        pending = self._admin_pending.get(a.req_id)
        if pending is None or a.symbol not in pending.waiting:
            return  # late: already answered without it
        pending.waiting.discard(a.symbol)
        pending.answers[a.symbol] = a
        if not pending.waiting:
            self._admin_reply(a.req_id)

    def _expire_admin(self, now: float) -> None:
        for token, pending in list(self._admin_pending.items()):
            if now >= pending.deadline:
                self._admin_reply(token)

    def _admin_reply(self, token: int) -> None:
        pending = self._admin_pending.pop(token)
        rows: list[admin.InstrumentStatus] = []
        for inst in self.config.instruments:
            route = self.routes[inst.symbol]
            row = admin.InstrumentStatus(inst.symbol, inst.price_decimals, inst.qty_decimals,
                                         route.ready, route.inflight, matcher_pid=route.pid)
            a = pending.answers.get(inst.symbol)
            if a is not None:
                row = msgspec.structs.replace(
                    row, answered=True, matcher_pid=a.pid, seq=a.seq, resting_orders=a.resting_orders,
                    best_bid=a.best_bid, best_ask=a.best_ask, batches=a.batches, commands=a.commands,
                    last_batch=a.last_batch, commit_p50_us=a.commit_p50_us, commit_p99_us=a.commit_p99_us,
                    state_hash=a.state_hash, bids=a.bids, asks=a.asks,
                )  # fmt: skip
            rows.append(row)
        reply = admin.StatusReply(pending.req_id, os.getpid(), len(self.sessions), rows)
        # The asker gone or not reading: it times out on its side.
        with contextlib.suppress(zmq.ZMQError):
            self.admin.send_multipart([pending.conn, admin.encoder.encode(reply)], _NB)

    # --- towards the clients ----------------------------------------------------------------

    def _send(self, conn: bytes, payload: bytes) -> None:
        send = self._send_raw
        try:
            send(conn, _MORE_NB)
        except zmq.ZMQError as exc:
            self._unsent(conn, exc)
        else:
            # The routing frame was taken, so the pipe had room: the payload goes too.
            send(payload, _NB)

    def _unsent(self, conn: bytes, exc: zmq.ZMQError) -> None:
        if exc.errno == errno.EAGAIN:
            self.tally.drops += 1  # a client that does not read loses replies, not the gateway
        elif exc.errno == errno.EHOSTUNREACH:
            self.tally.gone += 1
            self.sessions.drop(conn)  # ROUTER_MANDATORY: this peer is gone for good
        else:
            raise exc

    def _reject(self, conn: bytes, code: int, text: str, req_id: int, client_order_id: str = "",
                symbol: str = "") -> None:
        self.tally.reject(code)
        if len(text) > _MAX_REJECT_TEXT:  # a decode error can quote the client's own bytes
            text = text[: _MAX_REJECT_TEXT - 3] + "..."
        self._send(conn, _encode(Reject(code, text, req_id, client_order_id, symbol)))

    # --- shutdown ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop reading clients, keep relaying answers to what was sent for a bounded time."""
        logs.log(self.log, "stopping", inflight=sum(r.inflight for r in self.routes.values()))
        self._flush()
        deadline = time.monotonic() + _STOP_FLUSH_S
        while any(r.inflight and r.ready for r in self.routes.values()) and time.monotonic() < deadline:
            if self.replies.poll(20):
                self._drain_replies()
        self.tally.maybe_log(float("inf"))
        self.close()
        logs.log(self.log, "stopped")

    def close(self) -> None:
        if self._md_control is not None and self._md_thread is not None:
            self._md_control.send(b"TERMINATE")
            self._md_thread.join(timeout=1.0)
        if self._auth is not None:
            self._auth.stop()
        if not end_context(self.ctx, _LINGER_MS, _CONTEXT_END_S):
            logs.log(self.log, "context_end_timeout", logging.WARNING, waited_s=_CONTEXT_END_S)


# --- helpers ------------------------------------------------------------------------------

_now = time.time_ns
_decode_request = protocol.request_decoder.decode
_encode = protocol.encoder.encode
_decode_link = link.to_gateway.decode
_encode_link = link.encoder.encode


class _ReqIdOnly(msgspec.Struct):
    req_id: int = 0


_decode_req_id = msgspec.msgpack.Decoder(_ReqIdOnly).decode


def _req_id_of(frame: zmq.Frame) -> int:
    """The req_id of a message that failed validation, so the client can match the Reject;
    0 when even that cannot be read (not msgpack, not a map, req_id of the wrong type)."""
    try:
        return _decode_req_id(frame).req_id  # type: ignore[arg-type]  # a Frame is a buffer
    except (msgspec.DecodeError, RecursionError):  # skipping a deeply nested value recurses
        return 0


def _client_order_id(command: E.Command) -> str:
    if type(command) is E.NewOrder:
        return command.client_order_id
    return getattr(command, "orig_client_order_id", "")


def _proxy(xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes], control: zmq.Socket[bytes]) -> None:
    try:
        zmq.proxy_steerable(xsub, xpub, None, control)
    except zmq.ContextTerminated:
        pass
    finally:
        for sock in (xsub, xpub, control):
            sock.close(linger=0)


def _bind(sock: zmq.Socket[bytes], endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        _clear_ipc(endpoint.removeprefix("ipc://"))
    sock.bind(endpoint)


def _bind_private(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """Bind an ipc endpoint whose socket file only this user may open (mode 0600)."""
    if not endpoint.startswith("ipc://"):
        raise ValueError(f"{endpoint}: a private endpoint must be ipc://")
    path = endpoint.removeprefix("ipc://")
    _clear_ipc(path)
    previous = os.umask(0o177)  # created 0600 from the start: no window with wider access
    try:
        sock.bind(endpoint)
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)


def _clear_ipc(path: str) -> None:
    """Remove a socket file left by a dead process; refuse to steal a live one's."""
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
            return
    raise RuntimeError(f"{path}: another process is listening there")


def run(config: Config) -> int:
    """The process body: serve until SIGTERM/SIGINT, then exit 0."""
    gateway: Gateway | None = None
    requested = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        requested = True
        if gateway is not None:
            gateway.stop()  # seen within one poll timeout

    # Before binding: a stop during start-up is a clean exit too, not a default-action kill.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gateway = Gateway(config)
    if requested:
        gateway.stop()
    gateway.serve()
    return 0
