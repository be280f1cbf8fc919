"""Logon, sessions and strict decoding: every bad input gets the right Reject, and nobody
else notices."""

from __future__ import annotations

import pytest

from engine.messages import RejectReason
from gateway import protocol as P
from tests.gateway.conftest import Rig
from tests.gateway.harness import Client, order, raw


def trade_ok(gw: Rig, client: Client, cid: str) -> None:
    """`client` still gets an order through and its Ack back."""
    client.send(order(cid, req_id=77))
    items = gw.matchers["BTCUSDT"].recv_batch()
    assert [e.command.client_order_id for e in items] == [cid]  # type: ignore[union-attr]
    gw.matchers["BTCUSDT"].answer(items)
    ack = client.recv()
    assert isinstance(ack, P.Ack) and ack.client_order_id == cid and ack.req_id == 77


def test_logon_ack_lists_every_instrument(gw: Rig) -> None:
    c = gw.client()
    ack = c.ask(P.Logon(account="alice", req_id=5))
    assert isinstance(ack, P.LogonAck)
    assert (ack.account, ack.req_id, ack.protocol_version) == ("alice", 5, P.PROTOCOL_VERSION)
    btc, eth = ack.instruments
    assert (btc.symbol, btc.price_decimals, btc.qty_decimals, btc.lot_size, btc.min_qty) == (
        "BTCUSDT", 2, 6, 100, 100)
    assert eth.symbol == "ETHUSDT"


@pytest.mark.parametrize("msg", [
    order("x1"),
    P.Cancel(symbol="BTCUSDT", order_id=1),
    P.MassCancel(),
    P.OrderStatus(symbol="BTCUSDT", order_id=1),
    P.BookQuery(symbol="BTCUSDT"),
])
def test_anything_before_logon_is_refused(gw: Rig, msg: P.Request) -> None:
    msg.req_id = 31
    reply = gw.client().ask(msg)
    assert isinstance(reply, P.Reject)
    assert (reply.code, reply.req_id) == (RejectReason.NOT_LOGGED_ON, 31)
    assert gw.matchers["BTCUSDT"].idle(100)


def test_empty_account_name_is_refused(gw: Rig) -> None:
    reply = gw.client().ask(P.Logon(account=""))
    assert isinstance(reply, P.Reject) and reply.code == RejectReason.UNKNOWN_ACCOUNT


def test_unsupported_protocol_version_is_refused(gw: Rig) -> None:
    reply = gw.client().ask(P.Logon(account="alice", protocol_version=99))
    assert isinstance(reply, P.Reject) and reply.code == RejectReason.MALFORMED_MESSAGE
    assert "99" in reply.text


def test_ping_is_answered_with_or_without_logon(gw: Rig) -> None:
    assert gw.client().ask(P.Ping(req_id=7)) == P.Pong(req_id=7)
    assert gw.client("alice").ask(P.Ping(req_id=8)) == P.Pong(req_id=8)


GOOD = {"type": "new_order", "symbol": "BTCUSDT", "client_order_id": "b", "side": 1, "qty": 100,
        "price": 1, "req_id": 55}

MALFORMED = {
    "not msgpack": b"\xc1\xc1\xc1",
    "truncated": raw(GOOD)[:-3],
    "not a map": raw([1, 2, 3]),
    "no type": raw({k: v for k, v in GOOD.items() if k != "type"}),
    "unknown type tag": raw({**GOOD, "type": "launch_missiles"}),
    "unknown field": raw({**GOOD, "account": "bob"}),
    "wrong type": raw({**GOOD, "qty": "100"}),
    "bad enum": raw({**GOOD, "side": 7}),
    "missing field": raw({k: v for k, v in GOOD.items() if k != "qty"}),
    "float for an int": raw({**GOOD, "qty": 1e300}),
    "nested too deep": raw({**GOOD, "client_order_id": [[[[[[[[[[[]]]]]]]]]]]}),
    "trailing bytes": raw(GOOD) + b"\x00",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_messages_are_refused_and_others_keep_trading(gw: Rig, name: str) -> None:
    bad, good = gw.client("mallory"), gw.client("alice")
    reply = bad.ask(MALFORMED[name])
    assert isinstance(reply, P.Reject), reply
    assert reply.code == RejectReason.MALFORMED_MESSAGE
    assert reply.text  # msgspec's own explanation
    # The req_id comes back whenever it can be read, so the client can match the Reject.
    readable = name not in ("not msgpack", "truncated", "not a map", "trailing bytes")
    assert reply.req_id == (55 if readable else 0)
    trade_ok(gw, good, f"after-{name}")
    trade_ok(gw, bad, f"bad-recovers-{name}")  # one bad message does not end a session


def test_extreme_ints_pass_through_untouched(gw: Rig) -> None:
    """msgpack's extremes decode (msgspec takes -2**63 .. 2**64-1); range checks are the
    engine's, which rejects them durably, so the gateway forwards them unchanged."""
    c = gw.client("alice")
    c.send(raw({**GOOD, "qty": 2**64 - 1, "price": -(2**63), "req_id": 2**64 - 1}))
    (env,) = gw.matchers["BTCUSDT"].recv_batch()
    assert (env.command.qty, env.command.price, env.req_id) == (2**64 - 1, -(2**63), 2**64 - 1)  # type: ignore[union-attr]
    trade_ok(gw, c, "after-extremes")


def test_oversize_frame_is_refused(gw: Rig) -> None:
    bad, good = gw.client("mallory"), gw.client("alice")
    reply = bad.ask(raw({**GOOD, "client_order_id": "x" * 20_000}))
    assert isinstance(reply, P.Reject) and reply.code == RejectReason.MESSAGE_TOO_LARGE
    trade_ok(gw, good, "after-oversize")


@pytest.mark.parametrize("frames", [[b"", raw(GOOD)], [raw(GOOD), raw(GOOD)], [b"a", b"b", b"c"]])
def test_wrong_frame_count_is_refused(gw: Rig, frames: list[bytes]) -> None:
    bad, good = gw.client("mallory"), gw.client("alice")
    bad.sock.send_multipart(frames)
    reply = bad.recv()
    assert isinstance(reply, P.Reject) and reply.code == RejectReason.MALFORMED_MESSAGE
    assert bad.silent(100)  # one reply per bad message, and no desynchronised leftovers
    trade_ok(gw, good, "after-frames")
    trade_ok(gw, bad, "bad-after-frames")


def test_unknown_instrument(gw: Rig) -> None:
    c = gw.client("alice")
    reply = c.ask(order("u1", symbol="DOGEUSDT", req_id=4))
    assert isinstance(reply, P.Reject)
    assert (reply.code, reply.symbol, reply.client_order_id, reply.req_id) == (
        RejectReason.UNKNOWN_INSTRUMENT, "DOGEUSDT", "u1", 4)
