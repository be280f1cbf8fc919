"""Slow parties against the real daemon: a client that never reads its replies, a market-data
subscriber that stops reading, a matcher frozen with SIGSTOP. The others keep trading, the
gateway's memory stays bounded, and every acked order is in the journal."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import msgspec
import zmq

from engine.messages import Accepted, RejectReason
from gateway import protocol as p
from gateway.client import Client, Subscriber
from journal import Journal
from journal.record import Record
from tests.faults.conftest import Daemon

GATEWAY = "[-]m gateway"  # pgrep patterns of the children's command lines
MATCHER_BTC = "matcher --symbol BTCUSDT"
MAX_GROWTH_KIB = 64 * 1024
enc = msgspec.msgpack.encode


def only_pid(d: Daemon, pattern: str) -> int:
    (pid,) = d.child_pids(pattern)
    return pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def journal_records(d: Daemon, symbol: str) -> list[Record]:
    with Journal(d.data_dir / "journal" / f"{symbol}.lmdb", readonly=True) as journal:
        return list(journal.read())


def order(symbol: str, coid: str, price: int, side: int = 1) -> p.NewOrder:
    return p.NewOrder(symbol=symbol, client_order_id=coid, side=side, qty=1, price=price)  # type: ignore[arg-type]


class Trader(threading.Thread):
    """A well-behaved client placing one order at a time on both instruments until stopped."""

    def __init__(self, d: Daemon, account: str, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
                 max_orders: int = 300) -> None:  # fmt: skip
        super().__init__(name=account, daemon=True)
        self.d, self.account, self.symbols, self.max_orders = d, account, symbols, max_orders
        self.stop = threading.Event()
        self.acked: dict[str, tuple[str, int]] = {}  # client_order_id -> (symbol, seq)
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with Client(self.d.endpoint, timeout=15) as client:
                client.logon(self.account)
                for i in range(self.max_orders):
                    if self.stop.is_set():
                        break
                    symbol, coid = self.symbols[i % len(self.symbols)], f"{self.account}-{i}"
                    reply = client.request(order(symbol, coid, 100 + i % 7))
                    if isinstance(reply, p.Ack) and isinstance(reply.events[0], Accepted):
                        self.acked[coid] = (symbol, reply.seq)
                    else:
                        self.failures.append(repr(reply))
        except Exception as exc:  # asserted on by the test
            self.failures.append(repr(exc))

    def finish(self, at_least: int = 10, within_s: float = 10.0) -> None:
        """Stop, once it has `at_least` acks or after `within_s`. Its first BTCUSDT order may
        have queued behind the whole flood (it went in after the first batch): stopping it
        the moment the flood is journaled left it with 7 acks once, in CI."""
        deadline = time.monotonic() + within_s
        while len(self.acked) < at_least and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.join(timeout=30)
        assert not self.is_alive()
        assert not self.failures, self.failures[:3]
        assert len(self.acked) >= 10, "the well-behaved client hardly traded"


def assert_in_journal(d: Daemon, acked: dict[str, tuple[str, int]]) -> None:
    by_symbol = {s: journal_records(d, s) for s in {s for s, _ in acked.values()}}
    for records in by_symbol.values():
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
    for coid, (symbol, seq) in acked.items():
        assert by_symbol[symbol][seq - 1].command.client_order_id == coid


def test_a_client_that_never_reads_does_not_stop_the_others(live: Daemon) -> None:
    gw = only_pid(live, GATEWAY)
    before = rss_kib(gw)
    mute: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    mute.linger = 0
    mute.rcvhwm = 1  # and it never calls recv: replies back up towards the gateway
    mute.sndhwm = 100_000
    mute.connect(live.endpoint)
    trader = Trader(live, "steady")
    batches, per_batch = 40, 400  # 16,000 acks: more than the gateway queues towards one client
    try:
        mute.send(enc(p.Logon(account="mute", req_id=1)))
        trader.start()
        deadline = time.monotonic() + 15
        for b in range(batches):
            orders = [order("BTCUSDT", f"mute-{b}-{i}", 50 + i % 10) for i in range(per_batch)]
            mute.send(enc(p.OrderBatch(orders=orders, req_id=2 + b)))
            if time.monotonic() > deadline:
                break
        sent = (b + 1) * per_batch
        # Every order the mute client sent is journaled although it reads none of its acks.
        mute_orders: list[Record] = []
        while time.monotonic() < deadline + 15:
            mute_orders = [r for r in journal_records(live, "BTCUSDT") if r.command.account == "mute"]
            if len(mute_orders) >= sent:
                break
            time.sleep(0.2)
        assert len({r.command.client_order_id for r in mute_orders}) == len(mute_orders) == sent
        trader.finish()
        grown = rss_kib(gw) - before
        assert grown < MAX_GROWTH_KIB, f"gateway RSS grew by {grown} KiB"
    finally:
        trader.stop.set()
        mute.close(0)
    assert_in_journal(live, trader.acked)
    assert only_pid(live, GATEWAY) == gw
    with Client(live.endpoint, timeout=10) as again:  # the account works from a new connection
        again.logon("mute")
        assert again.order_status("BTCUSDT", client_order_id="mute-0-0").found


def test_a_subscriber_that_stops_reading_does_not_stop_trading(live: Daemon) -> None:
    gw = only_pid(live, GATEWAY)
    before = rss_kib(gw)
    stuck: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    stuck.linger = 0
    stuck.rcvhwm = 1
    stuck.subscribe(b"")
    stuck.connect(live.md_endpoint)
    reading = Subscriber(live.md_endpoint, env="test", symbols=["ETHUSDT"], topics=["orders"], timeout=10)
    try:
        with Client(live.endpoint, timeout=15) as client:
            client.logon("md")
            # Both subscriptions have reached the gateway once the reader sees an order.
            deadline = time.monotonic() + 10
            got: p.MarketData | None = None
            while got is None and time.monotonic() < deadline:
                ack = client.request(order("ETHUSDT", f"md-probe-{time.monotonic_ns()}", 90))
                assert isinstance(ack, p.Ack)
                try:
                    got = reading.recv(timeout=0.5).data
                except TimeoutError:
                    continue
            assert got is not None, "the reading subscriber never got market data"
            # Far more market data than the stuck subscriber's queues hold.
            last = 0
            for b in range(80):  # 40,000 messages: far more than the stuck queues hold
                orders = [order(s, f"md-{b}-{s}-{i}", 80 + i % 9) for s in ("BTCUSDT", "ETHUSDT")
                          for i in range(250)]  # fmt: skip
                for reply in client.send_batch(orders):
                    assert isinstance(reply, p.Ack) and isinstance(reply.events[0], Accepted), reply
                    if reply.symbol == "ETHUSDT":
                        last = max(last, reply.seq)
                if time.monotonic() > deadline + 20:
                    break
        # The reader still gets everything, up to the last order, in sequence.
        seen = got.seq
        gaps = []
        until = time.monotonic() + 20
        while seen < last and time.monotonic() < until:
            update = reading.recv(timeout=max(0.1, until - time.monotonic()))
            seen = update.data.seq
            if update.gap is not None:
                gaps.append(update.gap)
        assert seen == last and not gaps, (seen, last, gaps[:3])
        grown = rss_kib(gw) - before
        assert grown < MAX_GROWTH_KIB, f"gateway RSS grew by {grown} KiB"
    finally:
        reading.close()
        stuck.close(0)
    assert only_pid(live, GATEWAY) == gw


class TightDaemon(Daemon):
    """max_inflight_per_matcher = 200, so a frozen matcher's clients soon get BUSY."""

    def _config(self, extra: str) -> str:
        return super()._config(extra).replace("[gateway]\n", "[gateway]\nmax_inflight_per_matcher = 200\n", 1)


def test_a_frozen_matcher_costs_only_its_own_instrument(tmp_path: Path) -> None:
    d = TightDaemon(tmp_path)
    d.start()
    try:
        _frozen_matcher(d)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill_all()


def _frozen_matcher(d: Daemon) -> None:
    gw, btc = only_pid(d, GATEWAY), only_pid(d, MATCHER_BTC)
    before = rss_kib(gw)
    n = 500
    with Client(d.endpoint, timeout=20) as frozen_side, Client(d.endpoint, timeout=20) as other_side:
        frozen_side.logon("frozen")
        other_side.logon("other")
        assert isinstance(frozen_side.request(order("BTCUSDT", "warm-up", 100)), p.Ack)
        eth_acked: dict[str, tuple[str, int]] = {}
        coid_of: dict[int, str] = {}
        replies: dict[str, p.Reply] = {}
        os.kill(btc, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            for i in range(n):
                coid_of[frozen_side.send(order("BTCUSDT", f"f-{i}", 100 + i % 5))] = f"f-{i}"
            i = 0
            while time.monotonic() - stopped < 3.0 and i < 5000:  # ETHUSDT trades on meanwhile
                reply = other_side.request(order("ETHUSDT", f"o-{i}", 100 + i % 5))
                assert isinstance(reply, p.Ack) and isinstance(reply.events[0], Accepted), reply
                eth_acked[f"o-{i}"] = ("ETHUSDT", reply.seq)
                i += 1
            assert eth_acked
            time.sleep(max(0.0, 3.0 - (time.monotonic() - stopped)))  # frozen ~3 s in any case
            while True:  # what BTCUSDT answered while frozen: only the gateway's BUSY
                try:
                    reply = frozen_side.recv(timeout=0.2)
                except TimeoutError:
                    break
                replies[coid_of[reply.req_id]] = reply
            assert replies, "no BUSY although far more than max_inflight_per_matcher were sent"
            for reply in replies.values():
                assert isinstance(reply, p.Reject) and reply.code == RejectReason.BUSY, reply
        finally:
            os.kill(btc, signal.SIGCONT)
        until = time.monotonic() + 30
        while len(replies) < n and time.monotonic() < until:
            reply = frozen_side.recv(timeout=max(0.1, until - time.monotonic()))
            replies[coid_of[reply.req_id]] = reply
        assert len(replies) == n
        acked = {c: ("BTCUSDT", r.seq) for c, r in replies.items() if isinstance(r, p.Ack)}
        busy = {c for c, r in replies.items() if isinstance(r, p.Reject)}
        assert acked and busy and len(acked) + len(busy) == n
        assert all(r.code == RejectReason.BUSY for r in replies.values() if isinstance(r, p.Reject))
        assert all(isinstance(r.events[0], Accepted) for r in replies.values() if isinstance(r, p.Ack))
        # The daemon carries on: the same processes, both instruments trading.
        assert isinstance(frozen_side.request(order("BTCUSDT", "after", 100)), p.Ack)
        assert isinstance(other_side.request(order("ETHUSDT", "after", 100)), p.Ack)
    assert only_pid(d, GATEWAY) == gw and only_pid(d, MATCHER_BTC) == btc
    grown = rss_kib(gw) - before
    assert grown < MAX_GROWTH_KIB, f"gateway RSS grew by {grown} KiB"
    assert d.stop() == 0
    # Every acked order is journaled at its seq; a BUSY one (nothing happened) is not.
    assert_in_journal(d, acked | eth_acked)
    btc_coids = {r.command.client_order_id for r in journal_records(d, "BTCUSDT")}
    assert not busy & btc_coids, sorted(busy & btc_coids)[:5]
