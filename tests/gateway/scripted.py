"""A stand-in gateway for client tests: a real ROUTER socket on a thread, answering
protocol v1 requests with the real matching engine behind it (no journal, no matcher
processes). It speaks the protocol as docs/protocol.md describes it, so the client, the CLI
and the documented example client can be tested before the real gateway exists.

`reverse_batches` answers batch orders last-first (to prove matching by client_order_id);
`silent` names request types that get no answer (to provoke timeouts).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable

import zmq

from daemon.child import end_context
from engine import Engine, Instrument
from engine import messages as m
from gateway import protocol as p

INSTRUMENTS = [
    p.InstrumentInfo("BTCUSDT", 2, 6, 1, 100, 100, 1_000_000_000),
    p.InstrumentInfo("ETHUSDT", 2, 5, 1, 100, 100, 1_000_000_000),
]

Out = list[tuple[bytes, p.Reply]]


class ScriptedGateway:
    def __init__(
        self, *, reverse_batches: bool = False, silent: Iterable[str] = (), curve_secret: bytes | None = None
    ) -> None:
        self.reverse_batches = reverse_batches
        self.silent = set(silent)
        self.requests: list[p.Request] = []
        self.engines = {i.symbol: Engine(_spec(i)) for i in INSTRUMENTS}
        self.accounts: dict[bytes, str] = {}  # connection -> account
        self.outcomes: dict[tuple[str, str], p.Ack] = {}  # (account, coid) -> first answer
        self.seqs = dict.fromkeys(self.engines, 0)
        self._gseq = itertools.count(1)
        self._ctx = zmq.Context()
        self._socket = self._ctx.socket(zmq.ROUTER)
        if curve_secret is not None:
            self._socket.curve_server = True
            self._socket.curve_secretkey = curve_secret
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScriptedGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._thread.is_alive():  # never term() under a live socket: it would hang for good
            raise RuntimeError("the scripted gateway's thread did not stop")
        end_context(self._ctx, 0, 1.0)  # bounded: a stuck term is libzmq's, see there

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(20):
                    continue
                conn, frame = self._socket.recv_multipart()
                for dest, reply in self.handle(conn, frame):
                    self._socket.send_multipart([dest, p.encoder.encode(reply)], zmq.NOBLOCK)
        finally:
            self._socket.close(linger=0)  # by the thread that used it: sockets are not thread-safe

    def handle(self, conn: bytes, frame: bytes) -> Out:
        try:
            request = p.request_decoder.decode(frame)
        except Exception as exc:
            return [(conn, p.Reject(int(m.RejectReason.MALFORMED_MESSAGE), str(exc)))]
        self.requests.append(request)
        tag = type(request).__struct_config__.tag
        if tag in self.silent:
            return []
        if isinstance(request, p.Ping):
            return [(conn, p.Pong(req_id=request.req_id))]
        if isinstance(request, p.Logon):
            self.accounts[conn] = request.account
            return [(conn, p.LogonAck(request.account, INSTRUMENTS, req_id=request.req_id))]
        account = self.accounts.get(conn)
        if account is None:
            return [
                (conn, p.Reject(int(m.RejectReason.NOT_LOGGED_ON), "log on first", req_id=request.req_id))
            ]
        if isinstance(request, p.Logout):
            del self.accounts[conn]
            return [(conn, p.LogoutAck(account, req_id=request.req_id))]
        return self._trading(conn, account, request)

    def _trading(self, conn: bytes, account: str, request: p.Request) -> Out:
        req_id = request.req_id
        if isinstance(request, p.OrderBatch):
            orders = request.orders[::-1] if self.reverse_batches else request.orders
            out: Out = []
            for order in orders:
                out += self._new_order(conn, account, order, req_id)
            return out
        if isinstance(request, p.MassCancel):
            return self._mass_cancel(conn, account, request)
        symbol = getattr(request, "symbol", "")
        if symbol not in self.engines:
            text = f"unknown instrument {symbol!r}"
            return [
                (conn, p.Reject(int(m.RejectReason.UNKNOWN_INSTRUMENT), text, req_id=req_id, symbol=symbol))
            ]
        if isinstance(request, p.NewOrder):
            return self._new_order(conn, account, request, req_id)
        if isinstance(request, p.Cancel):
            cmd = m.Cancel(0, 0, account, request.order_id, request.orig_client_order_id)
            return self._run_command(conn, account, symbol, cmd, req_id, "")
        if isinstance(request, p.Amend):
            cmd = m.Amend(
                0, 0, account, request.order_id, request.orig_client_order_id, request.price, request.qty
            )
            return self._run_command(conn, account, symbol, cmd, req_id, "")
        if isinstance(request, p.OrderStatus):
            return [(conn, self._status(account, request))]
        if isinstance(request, p.BookQuery):
            bids, asks = self.engines[symbol].depth(request.depth)
            return [(conn, p.BookReply(symbol, self.seqs[symbol], bids, asks, req_id=req_id))]
        raise AssertionError(request)

    def _new_order(self, conn: bytes, account: str, o: p.NewOrder, req_id: int) -> Out:
        if o.symbol not in self.engines:
            text = f"unknown instrument {o.symbol!r}"
            reject = p.Reject(
                int(m.RejectReason.UNKNOWN_INSTRUMENT), text, req_id, o.client_order_id, o.symbol
            )
            return [(conn, reject)]
        first = self.outcomes.get((account, o.client_order_id))
        if first is not None:  # an idempotent resend: the original outcome, flagged
            return [(conn, p.Ack(first.symbol, first.seq, first.events, req_id, first.client_order_id, True))]
        cmd = m.NewOrder(
            0, 0, account, o.client_order_id, o.side, o.qty, o.price, o.order_type, o.tif, o.post_only, o.stp
        )
        out = self._run_command(conn, account, o.symbol, cmd, req_id, o.client_order_id)
        self.outcomes[(account, o.client_order_id)] = out[0][1]  # type: ignore[assignment]
        return out

    def _run_command(
        self, conn: bytes, account: str, symbol: str, cmd: m.Command, req_id: int, coid: str
    ) -> Out:
        self.seqs[symbol] += 1
        seq = self.seqs[symbol]
        cmd.seq, cmd.ts = next(self._gseq), 1_700_000_000_000_000_000 + seq
        events = self.engines[symbol].process(cmd)
        out: Out = [(conn, p.Ack(symbol, seq, [e for e in events if _concerns(e, account)], req_id, coid))]
        for other_conn, other in self.accounts.items():
            theirs = [e for e in events if other != account and _concerns(e, other)]
            if theirs:
                out.append((other_conn, p.ExecutionReport(symbol, seq, theirs)))
        return out

    def _mass_cancel(self, conn: bytes, account: str, request: p.MassCancel) -> Out:
        if request.symbol and request.symbol not in self.engines:
            text = f"unknown instrument {request.symbol!r}"
            return [(conn, p.Reject(int(m.RejectReason.UNKNOWN_INSTRUMENT), text, req_id=request.req_id))]
        symbols = [request.symbol] if request.symbol else sorted(self.engines)
        out: Out = []
        for symbol in symbols:
            out += self._run_command(conn, account, symbol, m.MassCancel(0, 0, account), request.req_id, "")
        return [*out, (conn, p.MassCancelDone(symbols, req_id=request.req_id))]

    def _status(self, account: str, request: p.OrderStatus) -> p.OrderStatusReply:
        engine = self.engines[request.symbol]
        order_id = request.order_id
        if not order_id:
            mine = engine.accounts.get(account, {})
            found = mine.get(request.orig_client_order_id)
            order_id = found.order_id if found is not None else 0
        order = engine.order(order_id) if order_id else None
        if order is None or order.account != account:
            return p.OrderStatusReply(request.symbol, False, req_id=request.req_id)
        return p.OrderStatusReply(
            request.symbol,
            True,
            order.order_id,
            order.client_order_id,
            int(order.side),
            order.price,
            order.qty,
            order.remaining,
            request.req_id,
        )


def _concerns(event: m.Event, account: str) -> bool:
    if isinstance(event, m.Trade):
        return account in (event.maker_account, event.taker_account)
    return event.account == account


def _spec(info: p.InstrumentInfo) -> Instrument:
    return Instrument(
        info.symbol,
        info.price_decimals,
        info.qty_decimals,
        info.tick_size,
        info.lot_size,
        info.min_qty,
        info.max_qty,
    )
