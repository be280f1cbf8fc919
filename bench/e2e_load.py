"""The load client of the end-to-end bench: one process per instrument, on raw sockets.

Each process logs on twice (a buyer and a seller account), so the few crossing orders
really trade instead of being stopped by self-trade prevention. The sockets are plain
DEALERs speaking `gateway.protocol` (the same bytes `gateway.client.Client` sends) because
one process polls both connections and sends pre-encoded bytes. Every message is encoded
before the start signal and replies are decoded with the protocol's own decoder, so the
client spends its CPU on sockets and decoding only: on a 2-core machine whatever the
client burns is taken from the gateway and the matcher.

Latency is per order, from the send of its message (time.perf_counter_ns) to the receipt
of its `Ack`; for an `OrderBatch` every order counts from the batch's send.
"""

from __future__ import annotations

import gc
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from daemon.child import end_context
from engine.messages import Rejected, Side, TimeInForce
from gateway import protocol as p

MID = 1_000_000  # price units (10,000.00); far from zero so no price goes non-positive
DEPTH = 50  # resting orders land 1..DEPTH ticks away from the mid
CROSS_SHARE = 0.05  # this share are IOCs priced through the touch: they trade or vanish
CROSS_TICKS = 5
MAX_QTY = 100
DRAIN_TIMEOUT_S = 15.0  # after the last send, how long to wait for the outstanding acks
_HWM = 100_000  # as gateway.client: far above any window used here
_NB = int(zmq.NOBLOCK)


@dataclass(frozen=True)
class LoadSpec:
    endpoint: str
    symbol: str
    name: str  # unique per client: prefixes its accounts and client order ids
    per_message: int  # 1: one NewOrder per message; more: OrderBatch of that many
    window: int  # orders sent and not yet answered, at most
    max_orders: int
    duration_s: float  # stop sending after this long (or after max_orders)
    rate: float = 0.0  # orders/s, paced; 0: as fast as the window allows
    seed: int = 1


@dataclass
class LoadResult:
    name: str
    symbol: str
    sent: int = 0
    acked: int = 0
    engine_refused: int = 0  # acks whose events hold a Rejected (journaled, no effect)
    rejects: Counter[int] = field(default_factory=Counter)  # gateway/matcher Reject by code
    exec_reports: int = 0
    unanswered: int = 0
    latencies_ns: bytes = b""  # array('q') of per-order ack latencies
    first_send_ns: int = 0
    last_reply_ns: int = 0
    max_gap_ns: int = 0  # longest silence between two replies while orders were outstanding
    acks_per_second: list[int] = field(default_factory=list)  # [n] = acks in second n of the run
    cpu_s: float = 0.0
    error: str = ""


def _order(spec: LoadSpec, rng: random.Random, i: int, buy: bool, req_id: int) -> p.NewOrder:
    """A GTC resting 1..DEPTH ticks off the mid, or (CROSS_SHARE of them) an IOC through it."""
    sign = 1 if buy else -1
    if rng.random() < CROSS_SHARE:
        price, tif = MID + sign * CROSS_TICKS, TimeInForce.IOC
    else:
        price, tif = MID - sign * rng.randint(1, DEPTH), TimeInForce.GTC
    return p.NewOrder(
        symbol=spec.symbol, client_order_id=f"{spec.name}-{i}", side=Side.BUY if buy else Side.SELL,
        qty=rng.randint(1, MAX_QTY) * 100, price=price, tif=tif, req_id=req_id,
    )  # fmt: skip


def messages(spec: LoadSpec) -> list[tuple[int, bytes, int]]:
    """(account index 0 buyer / 1 seller, encoded message, orders in it); req_id = index + 1.

    Messages alternate buy and sell (a batch is one account's, so one side). Encoded one
    message at a time: only the bytes are kept, not millions of order objects.
    """
    rng = random.Random(f"{spec.seed}:{spec.name}")
    per = spec.per_message
    out: list[tuple[int, bytes, int]] = []
    for m, start in enumerate(range(0, spec.max_orders, per)):
        buy = m % 2 == 0
        chunk = [_order(spec, rng, i, buy, m + 1) for i in range(start, min(start + per, spec.max_orders))]
        request: p.Request = chunk[0] if per == 1 else p.OrderBatch(orders=chunk, req_id=m + 1)
        out.append((0 if buy else 1, p.encoder.encode(request), len(chunk)))
    return out


class _Session:
    """The two logged-on DEALER sockets and the bookkeeping of one load run."""

    def __init__(self, spec: LoadSpec, ctx: zmq.Context[Any]) -> None:
        self.spec = spec
        self.sockets = [self._logon(ctx, f"{spec.name}-{who}") for who in ("buyer", "seller")]
        self.poller = zmq.Poller()
        for sock in self.sockets:
            self.poller.register(sock, zmq.POLLIN)
        self.msgs = messages(spec)
        self.send_ns = array("q", bytes(8 * len(self.msgs)))
        self.latencies = array("q")
        self.outstanding = 0
        self.next = 0
        self.started_ns = 0  # set when the run starts: seconds of the run are counted from it
        self.result = LoadResult(spec.name, spec.symbol)

    def _logon(self, ctx: zmq.Context[Any], account: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        sock.sndhwm = sock.rcvhwm = _HWM
        sock.connect(self.spec.endpoint)
        sock.send(p.encoder.encode(p.Logon(account=account, req_id=1)))
        if not sock.poll(10_000):
            raise TimeoutError(f"no logon_ack for {account} from {self.spec.endpoint}")
        reply = p.reply_decoder.decode(sock.recv())
        if not isinstance(reply, p.LogonAck):
            raise RuntimeError(f"logon of {account} refused: {reply}")
        return sock

    def send_next(self) -> bool:
        """Send the next message; False if the socket would block (then drain first)."""
        who, payload, n = self.msgs[self.next]
        now = time.perf_counter_ns()
        try:
            self.sockets[who].send(payload, _NB)
        except zmq.Again:
            return False
        self.send_ns[self.next] = now
        self.next += 1
        self.outstanding += n
        self.result.sent += n
        return True

    def drain(self) -> int:
        """Handle every reply already waiting; how many there were."""
        count = 0
        for sock in self.sockets:
            while True:
                try:
                    frame = sock.recv(_NB)
                except zmq.Again:
                    break
                self._on_reply(p.reply_decoder.decode(frame), time.perf_counter_ns())
                count += 1
        return count

    def _on_reply(self, reply: p.Reply, now: int) -> None:
        res = self.result
        if isinstance(reply, p.Ack):
            self.latencies.append(now - self.send_ns[reply.req_id - 1])
            res.acked += 1
            second = (now - self.started_ns) // 1_000_000_000
            while len(res.acks_per_second) <= second:
                res.acks_per_second.append(0)
            res.acks_per_second[second] += 1
            self.outstanding -= 1
            if reply.events and isinstance(reply.events[0], Rejected):
                res.engine_refused += 1
        elif isinstance(reply, p.Reject):
            res.rejects[reply.code] += 1
            # A batch refused as a whole is one Reject without a client_order_id.
            whole = self.spec.per_message > 1 and not reply.client_order_id
            self.outstanding -= self.msgs[reply.req_id - 1][2] if whole else 1
        elif isinstance(reply, p.ExecutionReport):
            res.exec_reports += 1  # a resting order traded with the other account's IOC
        if res.last_reply_ns and now - res.last_reply_ns > res.max_gap_ns:
            res.max_gap_ns = now - res.last_reply_ns  # a stall anywhere on the path shows here
        res.last_reply_ns = now

    def wait(self, timeout_ms: int) -> None:
        if not self.drain():
            self.poller.poll(timeout_ms)

    def finish(self) -> None:
        """Wait for what is still outstanding (bounded), then fill in the result."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.outstanding > 0 and time.monotonic() < deadline:
            self.wait(100)
        self.result.unanswered = max(0, self.outstanding)
        self.result.latencies_ns = self.latencies.tobytes()
        self.result.first_send_ns = self.send_ns[0] if self.next else 0

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)


def saturate(s: _Session) -> None:
    """Keep the window full until the time or the orders run out."""
    end = s.started_ns + int(s.spec.duration_s * 1e9)
    per, window, total = s.spec.per_message, s.spec.window, len(s.msgs)
    while s.next < total and time.perf_counter_ns() < end:
        while s.next < total and s.outstanding + per <= window and s.send_next():
            pass
        s.wait(100)


def paced(s: _Session) -> None:
    """One message every 1/rate seconds on an absolute schedule (a late send does not
    shift the ones after it). Sleeping in poll, not spinning: a spinning client would take
    a core from the daemon on a 2-core machine."""
    interval = 1e9 / s.spec.rate
    start = s.started_ns
    end = start + int(s.spec.duration_s * 1e9)
    total = len(s.msgs)
    while s.next < total:
        due = start + int(s.next * interval)
        now = time.perf_counter_ns()
        if due >= end:
            break
        if now >= due:
            s.send_next()
            continue
        s.wait(max(1, (due - now) // 1_000_000))  # poll has ms resolution: up to 1 ms late


def run_client(spec: LoadSpec, ready: Queue[str], go: Event, results: Queue[LoadResult]) -> None:
    """Process entry: log on, encode, say ready, wait for `go`, run, put the result."""
    ctx: zmq.Context[Any] = zmq.Context()
    session: _Session | None = None
    said_ready = False
    try:
        session = _Session(spec, ctx)
        gc.collect()
        gc.freeze()  # a collection pass over the encoded messages would show up as latency
        ready.put(spec.name)
        said_ready = True
        go.wait()
        cpu0 = time.process_time()
        session.started_ns = time.perf_counter_ns()
        (paced if spec.rate > 0 else saturate)(session)
        session.finish()
        session.result.cpu_s = time.process_time() - cpu0
        results.put(session.result)
    except Exception as exc:  # report, don't hang the parent
        if not said_ready:
            ready.put(spec.name)
        results.put(LoadResult(spec.name, spec.symbol, error=f"{type(exc).__name__}: {exc}"))
    finally:
        if session is not None:
            session.close()
        end_context(ctx, 0, 1.0)
