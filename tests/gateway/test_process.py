"""Gateways with their own configuration: listed accounts, a small in-flight bound, matcher
restarts, market data, CURVE, and stopping."""

from __future__ import annotations

import contextlib
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from engine.messages import RejectReason
from gateway import protocol as P
from matcher import link
from tests.gateway.conftest import Rig, serve
from tests.gateway.harness import Client, FakeMatcher, GatewayProcess, order


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, ctx: zmq.Context[Any]) -> Iterator[Rig]:
    """Accounts alice and bob only; at most 10 commands in flight per matcher, at most 4 per
    frame (matcher.max_batch); only the BTCUSDT matcher ever says it is ready."""
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("strict"),
        extra_toml='[[accounts]]\nname = "alice"\n[[accounts]]\nname = "bob"\n[matcher]\nmax_batch = 4\n',
        gateway_toml="max_inflight_per_matcher = 10\n",
    )
    yield from serve(Rig(gateway, ctx, symbols=("BTCUSDT",), probe="alice"))


def busy_until_ready(c: Client, symbol: str = "BTCUSDT", seconds: float = 5.0) -> None:
    """Until an order gets through rather than BUSY (the gateway has seen MatcherReady)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        c.send(order("probe", symbol=symbol))
        if c.silent(50):
            return
        reply = c.recv()
        assert isinstance(reply, P.Reject) and reply.code == RejectReason.BUSY, reply
    raise AssertionError("never ready")


def test_only_listed_accounts_may_log_on(strict: Rig) -> None:
    c = strict.client()
    reply = c.ask(P.Logon(account="mallory", req_id=3))
    assert isinstance(reply, P.Reject) and (reply.code, reply.req_id) == (RejectReason.UNKNOWN_ACCOUNT, 3)
    after = c.ask(order("m1"))
    assert isinstance(after, P.Reject) and after.code == RejectReason.NOT_LOGGED_ON
    assert c.logon("bob").account == "bob"


def test_instrument_without_a_ready_matcher_is_busy(strict: Rig) -> None:
    reply = strict.client("alice").ask(order("e1", symbol="ETHUSDT", req_id=2))
    assert isinstance(reply, P.Reject)
    assert (reply.code, reply.text, reply.symbol, reply.client_order_id, reply.req_id) == (
        RejectReason.BUSY, "instrument not available", "ETHUSDT", "e1", 2)


def test_frames_never_exceed_the_matchers_batch(strict: Rig) -> None:
    c = strict.client("alice")
    m = strict.matchers["BTCUSDT"]
    c.send(P.OrderBatch(orders=[order(f"k{i}") for i in range(10)]))
    frames = [m.recv_batch() for _ in range(3)]
    assert [len(f) for f in frames] == [4, 4, 2]
    m.answer([e for f in frames for e in f])
    assert all(isinstance(c.recv(), P.Ack) for _ in range(10))


def test_inflight_bound_matcher_restart_and_heartbeats(strict: Rig, ctx: zmq.Context[Any]) -> None:
    c = strict.client("alice")
    m = strict.matchers["BTCUSDT"]
    c.send(order("first"))
    sent = m.recv_batch()
    for i in range(15):
        c.send(order(f"f{i}"))
    got, _ = m.recv_commands(9)
    sent += got
    rejects = [c.recv() for _ in range(6)]
    assert len(sent) == 10 and all(isinstance(r, P.Reject) and r.code == RejectReason.BUSY for r in rejects)
    assert [r.client_order_id for r in rejects] == [f"f{i}" for i in range(9, 15)]  # type: ignore[union-attr]

    m.ready()  # a heartbeat from the same process changes nothing
    time.sleep(0.1)
    busy = c.ask(order("hb"))
    assert isinstance(busy, P.Reject) and busy.code == RejectReason.BUSY

    m.answer(sent[:4])  # room for four more
    assert all(isinstance(c.recv(), P.Ack) for _ in range(4))
    for i in range(5):
        c.send(order(f"g{i}"))
    assert len(m.recv_commands(4)[0]) == 4
    assert isinstance(c.recv(), P.Reject)

    # The matcher dies (its socket goes away): BUSY "not available", not a silent queue.
    m.close()
    deadline = time.monotonic() + 3
    while True:
        reply = c.ask(order("dead"))
        assert isinstance(reply, P.Reject) and reply.code == RejectReason.BUSY
        if reply.text == "instrument not available":
            break
        assert time.monotonic() < deadline, reply
    # A new process: ready again, and what the dead one owed no longer counts.
    strict.matchers["BTCUSDT"] = m2 = FakeMatcher(ctx, strict.gateway.config, "BTCUSDT", pid=2)
    m2.ready()
    busy_until_ready(c)
    for i in range(9):
        c.send(order(f"h{i}"))
    assert len(m2.recv_commands(10)[0]) == 10  # the probe + 9


def test_market_data_is_proxied_to_subscribers(strict: Rig, ctx: zmq.Context[Any]) -> None:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    topic = P.trades_topic("test", "BTCUSDT")
    sub.subscribe(topic)
    sub.connect(strict.gateway.md_endpoint)
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.connect(strict.gateway.config.market_data_endpoint())
    body = P.encoder.encode(P.MarketData("BTCUSDT", 5, 1, []))
    try:
        for _ in range(100):  # subscriptions travel upstream asynchronously
            pub.send_multipart([P.orders_topic("test", "BTCUSDT"), b"filtered out"])
            pub.send_multipart([topic, body])
            if sub.poll(50):
                break
        assert sub.recv_multipart() == [topic, body]
    finally:
        sub.close()
        pub.close()


def test_sigterm_exits_zero_quickly_with_a_reject_summary(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    gateway = GatewayProcess(tmp_path)
    try:
        c = Client(ctx, gateway.endpoint)
        for _ in range(50):
            c.send(b"\xc1")
        for _ in range(50):
            assert isinstance(c.recv(), P.Reject)
        c.close()
        code, seconds, err = gateway.terminate()
    finally:
        gateway.close()
    assert code == 0, err
    assert seconds < 3, seconds
    lines = [line for line in err.splitlines() if "event=rejects" in line]
    assert len(lines) == 1 and "MALFORMED_MESSAGE:50" in lines[0], err
    assert "event=stopped" in err


# --- CURVE --------------------------------------------------------------------------------


Keys = dict[str, tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def curve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Keys]]:
    keys = {name: zmq.curve_keypair() for name in ("alice", "bob")}
    accounts = "".join(
        f'[[accounts]]\nname = "{name}"\ncurve_public_key = "{public.decode()}"\n'
        for name, (public, _) in keys.items()
    )
    gateway = GatewayProcess(tmp_path_factory.mktemp("curve"), extra_toml=accounts,
                             gateway_toml='curve = "on"\n')
    yield gateway, keys
    code, seconds, log = gateway.terminate()  # the ZAP thread stops cleanly too
    gateway.close()
    assert code == 0 and seconds < 3, log


def curve_client(ctx: zmq.Context[Any], gateway: GatewayProcess, key: tuple[bytes, bytes]) -> Client:
    server_public, _ = zmq.auth.load_certificate(Path(gateway.config.gateway.curve_keys_dir) / "server.key")
    return Client(ctx, gateway.endpoint, curve_serverkey=server_public, curve_publickey=key[0],
                  curve_secretkey=key[1])


def test_curve_keys_are_created_private(curve: tuple[GatewayProcess, Any]) -> None:
    keys_dir = Path(curve[0].config.gateway.curve_keys_dir)
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys_dir / "server.key_secret").stat().st_mode) == 0o600


def test_curve_key_decides_the_account(curve: tuple[GatewayProcess, Any], ctx: zmq.Context[Any]) -> None:
    gateway, keys = curve
    alice = curve_client(ctx, gateway, keys["alice"])
    try:
        assert alice.logon("alice").account == "alice"
        assert alice.ask(P.Ping(req_id=1)) == P.Pong(1)
        wrong = alice.ask(P.Logon(account="bob"))  # alice's key cannot be bob
        assert isinstance(wrong, P.Reject) and wrong.code == RejectReason.UNKNOWN_ACCOUNT
        after = alice.ask(order("x1"))  # the failed logon ended the session
        assert isinstance(after, P.Reject) and after.code == RejectReason.NOT_LOGGED_ON
    finally:
        alice.close()


def test_curve_unknown_key_cannot_connect(curve: tuple[GatewayProcess, Any], ctx: zmq.Context[Any]) -> None:
    gateway, _ = curve
    stranger = curve_client(ctx, gateway, zmq.curve_keypair())
    plain = Client(ctx, gateway.endpoint)  # no CURVE at all
    try:
        for c in (stranger, plain):
            # Between a refused handshake and the reconnect there is no connection to queue
            # on, so the send itself may time out: refused before the logon is even sent.
            with contextlib.suppress(zmq.Again):
                c.send(P.Logon(account="alice"))
            assert c.silent(500)
    finally:
        stranger.close()
        plain.close()


def test_curve_protects_market_data_too(curve: tuple[GatewayProcess, Any], ctx: zmq.Context[Any]) -> None:
    gateway, keys = curve
    server_public, _ = zmq.auth.load_certificate(Path(gateway.config.gateway.curve_keys_dir) / "server.key")
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.connect(gateway.config.market_data_endpoint())
    subs = {}
    for name, key in (("alice", keys["alice"]), ("stranger", zmq.curve_keypair())):
        sub = subs[name] = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = server_public, *key
        sub.subscribe(b"")
        sub.connect(gateway.md_endpoint)
    try:
        for _ in range(200):  # the CURVE handshake can take a while on a loaded machine
            pub.send_multipart([b"t", b"x"])
            if subs["alice"].poll(50):
                break
        assert subs["alice"].poll(0), "no market data reached the CURVE subscriber"
        assert subs["alice"].recv_multipart() == [b"t", b"x"]
        assert not subs["stranger"].poll(200)
    finally:
        pub.close()
        for sub in subs.values():
            sub.close()


def test_bad_or_unknown_matcher_messages_are_survived(strict: Rig) -> None:
    m = strict.matchers["BTCUSDT"]
    m.send(link.MatcherReady("XRPUSDT", 0, 99))
    m.send(link.OutcomeBatch("XRPUSDT", [], []))
    m.replies.send(b"\xc1 not a link message")
    c = strict.client("alice")
    assert c.ask(P.Ping(req_id=4)) == P.Pong(4)
