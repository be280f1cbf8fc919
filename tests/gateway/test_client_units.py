"""gateway/client.py without the real gateway: conversions, request encoding, and reply
matching against real ZeroMQ ROUTER sockets (scripted in the test, or `ScriptedGateway`)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.auth

from daemon.child import end_context
from daemon.config import GatewayConfig
from engine.messages import (
    Accepted,
    Cancelled,
    CancelReason,
    Filled,
    OrderType,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Trade,
)
from gateway import client as c
from gateway import protocol as p
from tests.gateway.scripted import INSTRUMENTS, ScriptedGateway

BTC = INSTRUMENTS[0]  # price_decimals 2, qty_decimals 6, lot 100
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway() -> Iterator[ScriptedGateway]:
    with ScriptedGateway(reverse_batches=True) as gw:
        yield gw


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bare ROUTER: the test itself reads requests and scripts the replies."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)
    end_context(ctx, 0, 1.0)


def offline_client() -> c.Client:
    """A client that knows the instruments without a logon (nobody listens on its endpoint)."""
    client = c.Client("tcp://127.0.0.1:9", timeout=0.2)
    client.instruments = {i.symbol: i for i in INSTRUMENTS}
    return client


def reply(sock: zmq.Socket[bytes], conn: bytes, *messages: p.Reply) -> None:
    for msg in messages:
        sock.send_multipart([conn, p.encoder.encode(msg)])


def take(sock: zmq.Socket[bytes]) -> tuple[bytes, p.Request]:
    assert sock.poll(2000), "no request arrived"
    conn, frame = sock.recv_multipart()
    return conn, p.request_decoder.decode(frame)


# --- conversions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "units"),
    [
        ({"price": "50000.5"}, 5000050),
        ({"price": Decimal("0.01")}, 1),
        ({"price": "1.500"}, 150),  # trailing zeros beyond the decimals are no extra precision
        ({"price": "1e2"}, 10000),
        ({"qty": "0.0001"}, 100),
        ({"qty": " 2 "}, 2_000_000),
    ],
)
def test_to_units_converts_decimal_and_text(kwargs: dict[str, object], units: int) -> None:
    assert c.to_units(BTC, **kwargs) == units  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"price": "1.001"}, ValueError, "more than 2 decimal places"),
        ({"qty": Decimal("0.0000001")}, ValueError, "more than 6 decimal places"),
        ({"price": "abc"}, ValueError, "not a decimal number"),
        ({"price": "NaN"}, ValueError, "not a finite number"),
        ({"qty": "Infinity"}, ValueError, "not a finite number"),
        ({"price": 1.5}, TypeError, "floats are inexact"),
        ({"qty": 3}, TypeError, "qty_units="),
        ({"qty": True}, TypeError, "Decimal or decimal text"),
        ({}, TypeError, "exactly one"),
        ({"price": "1", "qty": "1"}, TypeError, "exactly one"),
    ],
)
def test_to_units_refuses_inexact_or_ambiguous_input(
    kwargs: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        c.to_units(BTC, **kwargs)  # type: ignore[arg-type]


def test_from_units_gives_decimals_with_the_instrument_precision() -> None:
    assert c.from_units(BTC, price=5000050) == Decimal("50000.50")
    assert str(c.from_units(BTC, qty=100)) == "0.000100"
    assert isinstance(c.from_units(BTC, qty=1), Decimal)
    for text in ("0.01", "123.45", "99999999.99"):
        assert c.from_units(BTC, price=c.to_units(BTC, price=text)) == Decimal(text)
    with pytest.raises(TypeError):
        c.from_units(BTC)


def test_decimal_book_converts_levels() -> None:
    book = c.decimal_book(BTC, p.BookReply("BTCUSDT", 7, [(4999900, 500000)], [(5000000, 100)]))
    assert book.seq == 7
    assert book.bids == [c.Level(Decimal("49999.00"), Decimal("0.500000"))]
    assert book.asks[0].qty == Decimal("0.000100")


@pytest.mark.parametrize(
    ("kind", "value", "member"),
    [
        (Side, "buy", Side.BUY),
        (Side, "SELL", Side.SELL),
        (Side, "s", Side.SELL),
        (Side, 1, Side.BUY),
        (TimeInForce, "ioc", TimeInForce.IOC),
        (TimeInForce, TimeInForce.FOK, TimeInForce.FOK),
        (OrderType, "Market", OrderType.MARKET),
        (SelfTradePrevention, "cancel-both", SelfTradePrevention.CANCEL_BOTH),
        (SelfTradePrevention, "decrement_and_cancel", SelfTradePrevention.DECREMENT_AND_CANCEL),
        (SelfTradePrevention, "oldest", SelfTradePrevention.CANCEL_OLDEST),
    ],
)
def test_parse_enum_accepts_members_values_names_and_aliases(
    kind: type, value: object, member: object
) -> None:
    assert c.parse_enum(kind, value) is member  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["hold", 0, 3, True, 1.0, ""])
def test_parse_enum_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match="use one of buy, sell"):
        c.parse_enum(Side, value)  # type: ignore[arg-type]


def test_defaults_match_the_daemon_config() -> None:
    assert GatewayConfig().bind == c.DEFAULT_ENDPOINT
    assert GatewayConfig().market_data_bind == c.DEFAULT_MARKET_DATA_ENDPOINT


# --- request building -------------------------------------------------------------------


def test_make_order_builds_a_request_the_gateway_decodes() -> None:
    with offline_client() as client:
        order = client.make_order(
            "BTCUSDT", "sell", "0.25", "50000.01", tif="ioc", stp="cancel-oldest", client_order_id="abc"
        )
        client.send(order)
    frame = p.encoder.encode(order)
    decoded = p.request_decoder.decode(frame)
    assert decoded == p.NewOrder(
        symbol="BTCUSDT",
        client_order_id="abc",
        side=Side.SELL,
        qty=250_000,
        price=5_000_001,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.IOC,
        post_only=False,
        stp=SelfTradePrevention.CANCEL_OLDEST,
        req_id=1,
    )
    # A plain msgpack map with a "type" tag: what docs/protocol.md promises other languages.
    raw = msgspec.msgpack.decode(frame)
    assert raw["type"] == "new_order" and raw["side"] == 2 and raw["qty"] == 250_000


def test_make_order_raw_units_market_and_generated_ids() -> None:
    with offline_client() as client, offline_client() as other:
        market = client.make_order("BTCUSDT", Side.BUY, qty_units=300, order_type="market")
        assert (market.qty, market.price, market.order_type) == (300, 0, OrderType.MARKET)
        ids = {client.make_order("BTCUSDT", "buy", "1", "1").client_order_id for _ in range(100)}
        ids.add(market.client_order_id)
        assert len(ids) == 101
        assert other.next_client_order_id() not in ids  # a random prefix per client instance
        units = client.make_order("ZZZ", "buy", qty_units=1, price_units=2)  # no conversion: no lookup
        assert (units.qty, units.price) == (1, 2)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("BTCUSDT", "buy", "1"), {}, ValueError, "needs a price"),
        (("BTCUSDT", "buy", "1", "5"), {"order_type": "market"}, ValueError, "takes no price"),
        (("BTCUSDT", "buy", "1", "5"), {"qty_units": 5}, TypeError, "not both"),
        (("BTCUSDT", "buy"), {"price_units": 5}, TypeError, "give qty"),
        (("BTCUSDT", "buy"), {"qty_units": 1.0, "price_units": 5}, TypeError, "must be an int"),
        (("BTCUSDT", "buy", "1.0000001", "5"), {}, ValueError, "more than 6 decimal places"),
        (("XYZ", "buy", "1", "5"), {}, ValueError, "unknown symbol 'XYZ'"),
        (("BTCUSDT", "hold", "1", "5"), {}, ValueError, "not a valid Side"),
    ],
)
def test_make_order_refuses_bad_input_before_sending(
    args: tuple[object, ...], kwargs: dict[str, object], error: type, message: str
) -> None:
    with offline_client() as client, pytest.raises(error, match=re.escape(message)):
        client.make_order(*args, **kwargs)  # type: ignore[arg-type]


def test_make_amend_and_order_references() -> None:
    with offline_client() as client:
        amend = client.make_amend("BTCUSDT", client_order_id="x", qty="0.5")
        assert (amend.orig_client_order_id, amend.qty, amend.price, amend.order_id) == ("x", 500_000, 0, 0)
        with pytest.raises(ValueError, match="new price and/or quantity"):
            client.make_amend("BTCUSDT", order_id=3)
        with pytest.raises(ValueError, match="exactly one"):
            client.make_amend("BTCUSDT", order_id=3, client_order_id="x", price="1")
        with pytest.raises(ValueError, match="exactly one"):
            client.cancel("BTCUSDT")


def test_curve_needs_both_keys() -> None:
    public, secret = zmq.curve_keypair()
    with pytest.raises(ValueError, match="both"):
        c.Client("tcp://127.0.0.1:9", curve_server_key=public)
    with pytest.raises(ValueError, match="both"):
        c.Client("tcp://127.0.0.1:9", curve_keypair=(public, secret))


# --- reply matching against a ROUTER the test scripts -----------------------------------


def test_replies_are_matched_by_req_id_and_the_rest_is_queued(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with c.Client(endpoint, timeout=2) as client:
        first = client.send(p.Ping())
        second = client.send(p.Ping())
        conn, _ = take(sock)
        take(sock)
        report = p.ExecutionReport("BTCUSDT", 9, [Filled(1, "a", "x", 100)])
        reply(sock, conn, report, p.Pong(req_id=second), p.Pong(req_id=first))
        assert client.wait_reply(first) == p.Pong(req_id=first)
        # what arrived meanwhile stays, in order: the report, then the other reply
        assert client.recv_any() == report
        assert client.recv_any() == p.Pong(req_id=second)
        with pytest.raises(TimeoutError, match=re.escape(f"no reply from {endpoint} within 0.05 s")):
            client.recv_any(timeout=0.05)


def test_a_second_reply_with_the_same_req_id_is_not_swallowed(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with c.Client(endpoint, timeout=2) as client:
        first, second = client.send(p.Ping()), client.send(p.Ping())
        conn, _ = take(sock)
        late = p.Reject(int(RejectReason.BUSY), "late", req_id=first)
        reply(sock, conn, p.Pong(req_id=first), late, p.Pong(req_id=second))
        assert client.wait_reply(second) == p.Pong(req_id=second)  # both earlier ones are queued
        assert client.wait_reply(first) == p.Pong(req_id=first)
        assert list(client.inbox) == [late]


def test_exec_reports_that_arrive_during_a_call_are_kept(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with c.Client(endpoint, timeout=2) as client:
        req_id = client.send(p.Ping())
        conn, _ = take(sock)
        reports = [p.ExecutionReport("BTCUSDT", n, []) for n in (3, 4)]
        reply(sock, conn, reports[0], p.Pong(req_id=req_id), reports[1])
        client.wait_reply(req_id)
        got = client.events()
        assert got[0] == reports[0]  # kept while waiting for the pong
        while len(got) < 2:  # the one sent after the pong may still be in flight
            got += client.poll_reports(2)
        assert got == reports
        assert client.events() == []
        assert client.poll_reports(0.05) == []


def test_batch_replies_are_matched_by_client_order_id(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with c.Client(endpoint, timeout=2) as client:
        client.instruments = {i.symbol: i for i in INSTRUMENTS}
        orders = [
            client.make_order("BTCUSDT", "buy", qty_units=100, price_units=n, client_order_id=f"o{n}")
            for n in (1, 2)
        ]
        ack = p.Ack("BTCUSDT", 5, [], client_order_id="o2")
        reject = p.Reject(int(RejectReason.BUSY), "busy", client_order_id="o1", symbol="BTCUSDT")
        stray = p.Ack("BTCUSDT", 6, [], client_order_id="zzz")

        def answer() -> None:
            conn, batch = take(sock)
            assert isinstance(batch, p.OrderBatch) and [o.req_id for o in batch.orders] == [batch.req_id] * 2
            for msg in (ack, stray, reject):
                msg.req_id = batch.req_id
            reply(sock, conn, ack, stray, reject)

        _with_answer(answer, lambda: client.send_batch(orders), expect=[reject, ack])
        assert list(client.inbox) == [stray]


def test_a_reject_without_client_order_id_answers_the_whole_batch(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, endpoint = router
    with c.Client(endpoint, timeout=2) as client:
        orders = [client.make_order("BTCUSDT", "buy", qty_units=100, price_units=1) for _ in range(3)]
        reject = p.Reject(int(RejectReason.MESSAGE_TOO_LARGE), "too many orders")

        def answer() -> None:
            conn, batch = take(sock)
            reject.req_id = batch.req_id
            reply(sock, conn, reject)

        _with_answer(answer, lambda: client.send_batch(orders), expect=[reject] * 3)
        with pytest.raises(ValueError, match="its own"):
            client.send_batch([orders[0], orders[0]])


def test_mass_cancel_collects_until_done_or_refused(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, endpoint = router
    ack = p.Ack("BTCUSDT", 3, [Cancelled(1, "a", "x", 100, CancelReason.MASS_CANCEL)])
    busy = p.Reject(int(RejectReason.BUSY), "busy", symbol="ETHUSDT")
    unknown = p.Reject(int(RejectReason.UNKNOWN_INSTRUMENT), "no XYZ", symbol="XYZ")

    def answer(*messages: p.Reply) -> Callable[[], None]:
        def script() -> None:
            conn, request = take(sock)
            for msg in messages:
                msg.req_id = request.req_id
            reply(sock, conn, *messages)

        return script

    with c.Client(endpoint, timeout=2) as client:
        # BUSY for one instrument does not end it; MassCancelDone does
        done = p.MassCancelDone(["BTCUSDT", "ETHUSDT"])
        _with_answer(answer(ack, busy, done), client.mass_cancel, expect=[ack, busy])
        # refused as a whole: the one reject is the answer
        _with_answer(answer(unknown), lambda: client.mass_cancel("XYZ"), expect=[unknown])


def test_garbage_from_the_gateway_is_a_protocol_error(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with c.Client(endpoint, timeout=2) as client:
        client.send(p.Ping())
        conn, _ = take(sock)
        sock.send_multipart([conn, b"\xc1not msgpack"])
        with pytest.raises(c.ProtocolError, match="undecodable"):
            client.recv_any()


def _with_answer(answer: Callable[[], None], call: Callable[[], object], expect: object) -> None:
    # The client call blocks, so the scripted side answers from a thread.
    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert call() == expect
    finally:
        thread.join(5)


# --- against the scripted gateway (real engine behind a ROUTER) --------------------------


def test_logon_order_book_status_cancel(gateway: ScriptedGateway) -> None:
    with c.Client(gateway.endpoint, timeout=2) as client:
        ack = client.logon("alice")
        assert ack.account == client.account == "alice"
        assert client.instrument("BTCUSDT") == BTC
        placed = client.new_order("BTCUSDT", "sell", "0.5", "50000", client_order_id="s1")
        assert isinstance(placed, p.Ack) and placed.client_order_id == "s1" and placed.seq == 1
        accepted = placed.events[0]
        assert isinstance(accepted, Accepted) and (accepted.price, accepted.qty) == (5_000_000, 500_000)
        assert c.rejection(placed) is None
        book = c.decimal_book(BTC, client.book("BTCUSDT", depth=5))
        assert book.asks == [c.Level(Decimal("50000.00"), Decimal("0.500000"))] and book.bids == []
        status = client.order_status("BTCUSDT", client_order_id="s1")
        assert status.found and status.order_id == accepted.order_id and status.remaining == 500_000
        cancelled = client.cancel("BTCUSDT", client_order_id="s1")
        assert isinstance(cancelled, p.Ack) and isinstance(cancelled.events[0], Cancelled)
        missing = client.cancel("BTCUSDT", order_id=999)
        assert c.rejection(missing) == (RejectReason.UNKNOWN_ORDER, "no such open order")
        with pytest.raises(c.RequestRejected, match="UNKNOWN_INSTRUMENT") as info:
            client.book("XYZ")
        assert info.value.code == RejectReason.UNKNOWN_INSTRUMENT
        assert client.ping() > 0


def test_resend_is_answered_with_the_original_outcome(gateway: ScriptedGateway) -> None:
    with c.Client(gateway.endpoint, timeout=2) as client:
        client.logon("alice")
        first = client.new_order("BTCUSDT", "buy", "1", "100", client_order_id="dup")
        again = client.new_order("BTCUSDT", "buy", "1", "100", client_order_id="dup")
        assert isinstance(first, p.Ack) and isinstance(again, p.Ack)
        assert again.duplicate and not first.duplicate
        assert (again.seq, again.events) == (first.seq, first.events)


def test_fills_of_resting_orders_arrive_as_exec_reports(gateway: ScriptedGateway) -> None:
    with c.Client(gateway.endpoint, timeout=2) as maker, c.Client(gateway.endpoint, timeout=2) as taker:
        maker.logon("alice")
        taker.logon("bob")
        maker.new_order("BTCUSDT", "sell", "0.5", "50000")
        took = taker.new_order("BTCUSDT", "buy", "0.2", "50001", tif="ioc")
        assert isinstance(took, p.Ack) and [type(e) for e in took.events] == [Accepted, Trade, Filled]
        reports = maker.poll_reports(2)
        assert len(reports) == 1 and reports[0].req_id == 0
        trade = reports[0].events[0]
        assert (
            isinstance(trade, Trade) and trade.maker_account == "alice" and trade.maker_remaining == 300_000
        )
        # while a call waits, a new report is queued, not lost
        taker.new_order("BTCUSDT", "buy", "0.1", "50000")
        maker.ping()
        assert len(maker.events()) == 1


def test_pipelined_orders_with_send_nowait_and_recv_any(gateway: ScriptedGateway) -> None:
    with c.Client(gateway.endpoint, timeout=2) as client:
        client.logon("alice")
        sent = {
            client.send_nowait(client.make_order("BTCUSDT", "buy", qty_units=100, price_units=100 + n))
            for n in range(200)
        }
        got = {client.recv_any().req_id for _ in range(200)}
        assert got == sent


def test_batches_mass_cancel_and_not_logged_on(gateway: ScriptedGateway) -> None:
    with c.Client(gateway.endpoint, timeout=2) as client:
        early = client.new_order("BTCUSDT", "buy", qty_units=100, price_units=100)
        assert isinstance(early, p.Reject) and early.code == RejectReason.NOT_LOGGED_ON
        client.logon("alice")
        orders = [client.make_order(s, "buy", "1", "10") for s in ("BTCUSDT", "ETHUSDT", "BTCUSDT")]
        orders.append(client.make_order("XYZ", "buy", qty_units=100, price_units=1000))
        replies = client.send_batch(orders)  # the gateway answers these last-first
        assert [r.client_order_id for r in replies] == [o.client_order_id for o in orders]
        assert [type(r) for r in replies] == [p.Ack, p.Ack, p.Ack, p.Reject]
        cancelled = client.mass_cancel()
        assert [(r.symbol, len(r.events)) for r in cancelled] == [("BTCUSDT", 2), ("ETHUSDT", 1)]
        assert client.mass_cancel("BTCUSDT")[0].events == []


def test_timeouts_are_clear(tmp_path: Path) -> None:
    with ScriptedGateway(silent={"ping"}) as gw, c.Client(gw.endpoint, timeout=0.1) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"within 0.1 s \(req_id=1\); is clobd running\?"):
            client.ping()
        assert time.monotonic() - start < 1
        client.logon("alice")  # the late Pong (if any) never confuses the next call


def test_curve_end_to_end(tmp_path: Path) -> None:
    server_public, server_secret = zmq.curve_keypair()
    public_file, _ = zmq.auth.create_certificates(str(tmp_path), "server")
    _, client_secret_file = zmq.auth.create_certificates(str(tmp_path), "client")
    with ScriptedGateway(curve_secret=server_secret) as gw:
        server_key, keypair = c.curve_keys_from_files(client_secret_file, public_file)
        assert len(server_key) == 40 and len(keypair[1]) == 40
        with c.Client(
            gw.endpoint, curve_server_key=server_public, curve_keypair=keypair, timeout=2
        ) as client:
            assert client.ping() > 0
        # the wrong server key: the handshake fails, so nothing ever answers
        wrong = c.Client(gw.endpoint, curve_server_key=server_key, curve_keypair=keypair, timeout=0.3)
        with wrong, pytest.raises(TimeoutError):
            wrong.ping()
    with pytest.raises(ValueError, match="no secret key"):
        c.curve_keys_from_files(public_file, public_file)


# --- asyncio ----------------------------------------------------------------------------


def test_async_client_has_the_same_behaviour(gateway: ScriptedGateway) -> None:
    async def scenario() -> None:
        async with (
            c.AsyncClient(gateway.endpoint, timeout=2) as maker,
            c.AsyncClient(gateway.endpoint, timeout=2) as taker,
        ):
            await maker.logon("alice")
            await taker.logon("bob")
            rest = await maker.new_order("BTCUSDT", "sell", "1", "100.5")
            assert isinstance(rest, p.Ack) and c.rejection(rest) is None
            took = await taker.new_order("BTCUSDT", "buy", "0.4", "101", tif="ioc")
            assert isinstance(took, p.Ack) and isinstance(took.events[1], Trade)
            reports = await maker.poll_reports(2)
            assert isinstance(reports[0].events[0], Trade)
            batch = [taker.make_order("ETHUSDT", "buy", "0.001", "10") for _ in range(3)]
            assert [type(r) for r in await taker.send_batch(batch)] == [p.Ack] * 3
            assert len((await taker.book("ETHUSDT")).bids) == 1
            assert [r.symbol for r in await taker.mass_cancel()] == ["BTCUSDT", "ETHUSDT"]
            status = await maker.order_status("BTCUSDT", client_order_id=rest.client_order_id)
            assert status.remaining == 600_000
            amended = await maker.amend("BTCUSDT", client_order_id=rest.client_order_id, qty="0.8")
            assert c.rejection(amended) is None
            assert c.rejection(await maker.cancel("BTCUSDT", client_order_id=rest.client_order_id)) is None
            req_ids = [await maker.send_nowait(p.Ping()) for _ in range(5)]
            assert sorted([(await maker.recv_any()).req_id for _ in range(5)]) == req_ids
            assert await maker.ping() > 0
            assert await maker.events() == []

    asyncio.run(scenario())


def test_async_client_timeout() -> None:
    async def scenario() -> None:
        with ScriptedGateway(silent={"ping"}) as gw:
            client = c.AsyncClient(gw.endpoint, timeout=0.1)
            with pytest.raises(TimeoutError, match=r"within 0\.1 s"):
                await client.ping()
            client.close()

    asyncio.run(scenario())


def test_a_send_that_cannot_be_queued_times_out_in_both_clients() -> None:
    # Nothing listens there: requests queue up to the high-water mark, then a send must
    # fail with TimeoutError after `timeout` rather than block for good.
    nowhere = "tcp://127.0.0.1:9"

    def fill(send: Callable[[], object]) -> str:
        for _ in range(300_000):  # bounded: far above the client's high-water mark
            try:
                send()
            except TimeoutError as exc:
                return str(exc)
        raise AssertionError("every send was queued")

    with c.Client(nowhere, timeout=0.05) as client:
        assert "send queue full" in fill(lambda: client.send_nowait(p.Ping()))

    async def scenario() -> str:
        async with c.AsyncClient(nowhere, timeout=0.05) as client:
            for _ in range(300_000):
                try:
                    await client.send_nowait(p.Ping())
                except TimeoutError as exc:
                    return str(exc)
        raise AssertionError("every send was queued")

    assert "send queue full" in asyncio.run(scenario())


# --- market data --------------------------------------------------------------------------


def test_gap_detector() -> None:
    gaps = c.GapDetector()
    assert gaps.observe("A", 10) is None  # joins mid-stream: only a baseline
    assert gaps.observe("A", 11) is None
    assert gaps.observe("A", 11) is None  # a repeat is no gap
    assert gaps.observe("A", 14) == c.Gap("A", 12, 14)
    assert gaps.observe("A", 13) is None  # late and old: ignored
    assert gaps.observe("B", 1) is None
    gaps.expect("C", 5)  # e.g. from a BookReply.seq
    assert gaps.observe("C", 7) == c.Gap("C", 6, 7)


def test_subscriber_filters_exact_topics_and_detects_gaps() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")

    def publish(topic: bytes, seq: int, symbol: str = "BTC") -> None:
        pub.send_multipart([topic, p.encoder.encode(p.MarketData(symbol, seq, 0, []))])

    with c.Subscriber(f"tcp://127.0.0.1:{port}", env="dev", symbols=["BTC"], timeout=2) as sub:
        first = None
        while first is None:  # ZeroMQ's slow joiner: publish until the subscription is live
            publish(p.orders_topic("dev", "BTC"), 1)
            with suppress(TimeoutError):
                first = sub.recv(timeout=0.02)
        publish(p.orders_topic("dev", "BTCUSDT"), 50, "BTCUSDT")  # shares the prefix: dropped here
        publish(p.trades_topic("dev", "BTC"), 2)
        publish(p.orders_topic("dev", "BTC"), 2)
        publish(p.orders_topic("dev", "BTC"), 5)
        updates = []
        while len(updates) < 3:
            update = sub.recv()
            if update.data.seq != 1:  # leftovers of the warm-up loop
                updates.append(update)
        assert [(u.kind, u.data.symbol, u.data.seq, u.gap) for u in updates] == [
            ("trades", "BTC", 2, None),
            ("orders", "BTC", 2, None),
            ("orders", "BTC", 5, c.Gap("BTC", 3, 5)),
        ]
        assert updates[0].topic == "dev.clob.trades.v1.BTC"
    pub.close(linger=0)
    end_context(ctx, 0, 1.0)


# --- the example client in docs/protocol.md ----------------------------------------------


def doc_example() -> str:
    text = (ROOT / "docs" / "protocol.md").read_text()
    match = re.search(r"<!-- example-client -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/protocol.md lost its example client block"
    return match.group(1)


def test_the_documented_example_client_trades(gateway: ScriptedGateway, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(doc_example())
    env = {**os.environ, "CLOB_ENDPOINT": gateway.endpoint}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=20)
    assert run.returncode == 0, run.stderr
    assert "accepted order" in run.stdout and "resting at 100.25" in run.stdout
    assert [type(r).__name__ for r in gateway.requests] == ["Logon", "NewOrder", "Cancel"]
