"""The durable order path end to end: real `clob serve`, real sockets, real LMDB files."""

from __future__ import annotations

import os
import signal
import threading
import time
from decimal import Decimal

import msgspec
import pytest
import zmq

from engine.messages import (
    Accepted,
    Amended,
    Cancelled,
    CancelReason,
    Filled,
    Rejected,
    RejectReason,
    Trade,
)
from gateway import protocol as p
from gateway.client import Client
from journal import Journal
from tests.e2e.conftest import Daemon


def logged_on(daemon: Daemon, account: str) -> Client:
    client = Client(daemon.endpoint, timeout=10)
    client.logon(account)
    return client


def kinds(ack: p.Ack) -> list[str]:
    return [type(e).__name__ for e in ack.events]


def test_trade_amend_cancel_across_two_accounts(daemon: Daemon) -> None:
    with logged_on(daemon, "alice") as alice, logged_on(daemon, "bob") as bob:
        sell = alice.new_order("BTCUSDT", "sell", Decimal("1.5"), Decimal("100.00"), client_order_id="a1")
        assert isinstance(sell, p.Ack) and kinds(sell) == ["Accepted"] and sell.seq == 1
        order_id = sell.events[0].order_id

        buy = bob.new_order("BTCUSDT", "buy", "1.0", "101.00", client_order_id="b1")
        assert isinstance(buy, p.Ack) and buy.seq == 2
        assert kinds(buy) == ["Accepted", "Trade", "Filled"]
        trade = buy.events[1]
        assert isinstance(trade, Trade) and trade.price == 10000 and trade.qty == 10000
        assert trade.maker_account == ""  # the counterparty is not revealed

        reports = alice.poll_reports(timeout=5)
        traded = [e for r in reports for e in r.events if isinstance(e, Trade)]
        assert traded and traded[0].maker_remaining == 5000 and traded[0].taker_account == ""

        amended = alice.amend("BTCUSDT", order_id, qty="1.2")  # total: 1.0 filled, 0.2 open
        assert isinstance(amended, p.Ack)
        assert amended.events == [Amended(order_id, "alice", "a1", 10000, 12000, 2000, True)]

        assert bob.cancel("BTCUSDT", order_id).events[0].reason == RejectReason.NOT_ORDER_OWNER
        cancelled = alice.cancel("BTCUSDT", client_order_id="a1")
        assert cancelled.events == [Cancelled(order_id, "alice", "a1", 2000, CancelReason.USER)]
        book = alice.book("BTCUSDT")
        assert book.bids == [] and book.asks == [] and book.seq == 5


def test_every_order_type_and_time_in_force(daemon: Daemon) -> None:
    with logged_on(daemon, "maker") as maker, logged_on(daemon, "taker") as taker:
        for i, price in enumerate(("200.00", "201.00", "202.00")):
            assert isinstance(maker.new_order("ETHUSDT", "sell", "1", price, client_order_id=f"m{i}"), p.Ack)

        market = taker.new_order("ETHUSDT", "buy", "1.5", order_type="market")
        assert kinds(market) == ["Accepted", "Trade", "Trade", "Filled"]  # the maker's Filled is its own

        ioc = taker.new_order("ETHUSDT", "buy", "2", "202.00", tif="ioc")
        assert kinds(ioc)[-1] == "Cancelled" and ioc.events[-1].reason == CancelReason.IOC_REMAINDER

        fok = taker.new_order("ETHUSDT", "buy", "5", "300.00", tif="fok")
        assert kinds(fok) == ["Accepted", "Cancelled"]
        assert fok.events[-1].reason == CancelReason.FOK_UNFILLABLE

        resting = taker.new_order("ETHUSDT", "buy", "1", "150.00", post_only=True)
        assert kinds(resting) == ["Accepted"]
        maker.new_order("ETHUSDT", "sell", "1", "210.00")
        crossing = taker.new_order("ETHUSDT", "buy", "1", "210.00", post_only=True)
        assert crossing.events[0].reason == RejectReason.POST_ONLY_WOULD_TAKE

        self_trade = maker.new_order("ETHUSDT", "buy", "1", "210.00", stp="cancel_newest")
        assert self_trade.events[-1].reason == CancelReason.SELF_TRADE
        assert maker.book("ETHUSDT").asks == [(21000, 10000)]


def test_bad_input_is_rejected_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(daemon.endpoint)
    raw.setsockopt(zmq.RCVTIMEO, 5000)
    enc = msgspec.msgpack.encode

    def reject_code(payload: bytes | list[bytes]) -> int:
        if isinstance(payload, list):
            raw.send_multipart(payload)
        else:
            raw.send(payload)
        reply = p.reply_decoder.decode(raw.recv())
        assert isinstance(reply, p.Reject), reply
        return reply.code

    with logged_on(daemon, "good") as good:
        order = {
            "type": "new_order",
            "symbol": "BTCUSDT",
            "client_order_id": "x",
            "side": 1,
            "qty": 1,
            "price": 1,
        }
        assert reject_code(enc(order)) == RejectReason.NOT_LOGGED_ON
        raw.send(enc({"type": "logon", "account": "raw"}))
        assert isinstance(p.reply_decoder.decode(raw.recv()), p.LogonAck)
        cases: list[tuple[bytes | list[bytes], int]] = [
            (b"\xc1\xff not msgpack", RejectReason.MALFORMED_MESSAGE),
            (enc({"type": "no_such_type"}), RejectReason.MALFORMED_MESSAGE),
            (enc(order | {"qty": "ten"}), RejectReason.MALFORMED_MESSAGE),
            (enc(order | {"color": "red"}), RejectReason.MALFORMED_MESSAGE),
            (enc(order | {"side": 3}), RejectReason.MALFORMED_MESSAGE),
            (enc(order | {"symbol": "NOPE"}), RejectReason.UNKNOWN_INSTRUMENT),
            (b"x" * (2 << 20), RejectReason.MESSAGE_TOO_LARGE),
            ([b"two", b"frames"], RejectReason.MALFORMED_MESSAGE),
        ]
        for payload, code in cases:
            assert reject_code(payload) == code, payload[:40]
        # Engine-level refusals travel inside a journaled Ack.
        off_tick = good.new_order("BTCUSDT", "buy", qty_units=1, price_units=0, client_order_id="z")
        assert isinstance(off_tick, p.Ack) and off_tick.events[0].reason == RejectReason.INVALID_PRICE
        huge = good.new_order("BTCUSDT", "buy", qty_units=2**64 - 1, price_units=2**64 - 1)
        assert huge.events[0].reason == RejectReason.QUANTITY_OUT_OF_RANGE
        # ...and the daemon still trades.
        assert kinds(good.new_order("BTCUSDT", "buy", "1", "50.00")) == ["Accepted"]
    raw.close(0)


def test_a_resent_client_order_id_is_answered_not_placed_twice_even_after_restart(
    daemon: Daemon,
) -> None:
    with logged_on(daemon, "alice") as alice:
        first = alice.new_order("BTCUSDT", "buy", "1", "90.00", client_order_id="once")
        again = alice.new_order("BTCUSDT", "buy", "1", "90.00", client_order_id="once")
        assert again.duplicate and again.seq == first.seq and again.events == first.events
    assert daemon.stop() == 0
    daemon.start()
    with logged_on(daemon, "alice") as alice:
        after = alice.new_order("BTCUSDT", "buy", "1", "90.00", client_order_id="once")
        assert after.duplicate and after.seq == first.seq
        assert alice.book("BTCUSDT").bids == [(9000, 10000)]


def test_kill9_of_a_matcher_loses_no_acked_order_and_half_applies_nothing(daemon: Daemon) -> None:
    acked: dict[str, int] = {}  # client_order_id -> journal seq
    sent: set[str] = set()
    stop = threading.Event()

    def flow() -> None:
        with logged_on(daemon, "flow") as client:
            i = 0
            while not stop.is_set():
                coid = f"k{i}"
                sent.add(coid)
                try:
                    reply = client.new_order("BTCUSDT", "buy", qty_units=1, price_units=1000 + i % 50,
                                             client_order_id=coid, timeout=0.5)  # fmt: skip
                except TimeoutError:
                    client.close()  # the reply may come late: start a fresh connection
                    client = logged_on(daemon, "flow")
                    continue
                if isinstance(reply, p.Ack):
                    acked[coid] = reply.seq
                i += 1

    worker = threading.Thread(target=flow)
    worker.start()
    try:
        time.sleep(1.0)
        (pid,) = daemon.child_pids("matcher --symbol BTCUSDT")
        os.kill(pid, signal.SIGKILL)
        time.sleep(2.5)  # the supervisor restarts it (back-off 0.2 s) and the flow resumes
    finally:
        stop.set()
        worker.join(timeout=30)
    assert len(acked) > 50
    (new_pid,) = daemon.child_pids("matcher --symbol BTCUSDT")
    assert new_pid != pid

    with logged_on(daemon, "flow") as client:
        # Every acked order rests with its full quantity (no trades in this flow).
        for coid in list(acked)[:: max(1, len(acked) // 200)]:
            status = client.order_status("BTCUSDT", client_order_id=coid)
            assert status.found and status.remaining == 1
        # A resend of every order sent is answered from the journal or placed now: never twice.
        for coid in sorted(sent - set(acked)):
            client.new_order("BTCUSDT", "buy", qty_units=1, price_units=999, client_order_id=coid)
    assert daemon.stop() == 0
    with Journal(daemon.data_dir / "journal" / "BTCUSDT.lmdb", readonly=True) as journal:
        records = list(journal.read())
    assert [r.seq for r in records] == list(range(1, len(records) + 1))  # contiguous, nothing torn
    coids = [r.command.client_order_id for r in records]
    assert len(coids) == len(set(coids)), "an order was placed twice"
    assert set(coids) <= sent
    for coid, seq in acked.items():
        assert records[seq - 1].command.client_order_id == coid
        assert isinstance(records[seq - 1].events[0], Accepted)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(daemon: Daemon, signum: int) -> None:
    assert daemon.proc is not None
    started = time.monotonic()
    daemon.proc.send_signal(signum)
    assert daemon.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 15
    assert not list(daemon.workdir.glob("run/*.sock"))


_ = (Filled, Rejected)  # imported for readers of the event shapes above
