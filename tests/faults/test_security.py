"""Security against the real daemon: CURVE admits only registered keys, an account never
reaches another's orders, the admin endpoint is not on the trading socket, and what the
daemon writes is not readable by other users."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.auth

from engine.messages import Accepted, Rejected, RejectReason
from gateway import admin
from gateway import protocol as p
from gateway.client import Client, MarketUpdate, Subscriber, curve_keys_from_files
from tests.faults.conftest import Daemon

ROOT = Path(__file__).resolve().parents[2]
enc = msgspec.msgpack.encode


def keys_generate(directory: Path, name: str) -> dict[str, str]:
    """`clob keys generate`, as an operator or a client runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "generate", "--dir", str(directory), "--name", name, "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    made: dict[str, str] = json.loads(out.stdout)
    return made


class CurveDaemon(Daemon):
    """The test daemon with `[gateway] curve = "on"` and alice and bob registered by key."""

    def __init__(self, workdir: Path, client_keys: dict[str, str]) -> None:
        accounts = "".join(
            f'[[accounts]]\nname = "{name}"\ncurve_public_key = "{key}"\n'
            for name, key in client_keys.items()
        )
        super().__init__(workdir, accounts)

    def _config(self, extra: str) -> str:
        return super()._config(extra).replace("[gateway]\n", '[gateway]\ncurve = "on"\n', 1)

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CurveDaemon, Path]]:
    work = tmp_path_factory.mktemp("curve")
    client_dir = work / "client-keys"
    registered = {name: keys_generate(client_dir, name)["public_key"] for name in ("alice", "bob")}
    keys_generate(client_dir, "mallory")  # a well-formed key pair nobody registered
    previous = os.umask(0o022)  # the usual login umask: what the daemon must not rely on
    try:
        d = CurveDaemon(work, registered)
        d.start()
    finally:
        os.umask(previous)
    yield d, client_dir
    if d.proc is not None and d.proc.poll() is None:
        d.kill_all()


def curve_client(d: CurveDaemon, client_dir: Path, name: str, timeout: float = 10) -> Client:
    server_key, keypair = curve_keys_from_files(
        str(client_dir / f"{name}.key_secret"), str(d.keys_dir / "server.key")
    )
    return Client(d.endpoint, curve_server_key=server_key, curve_keypair=keypair, timeout=timeout)


def test_only_a_registered_key_gets_an_answer(secured: tuple[CurveDaemon, Path]) -> None:
    d, client_dir = secured
    with curve_client(d, client_dir, "alice") as alice:
        assert alice.logon("alice").account == "alice"
        assert alice.ping() >= 0
    # A valid key pair that no account lists: the handshake fails, nothing is ever answered.
    with curve_client(d, client_dir, "mallory", timeout=2) as mallory:
        with pytest.raises(TimeoutError):
            mallory.ping()
        with pytest.raises(TimeoutError):
            mallory.logon("alice")
    # No CURVE at all, and CURVE with a made-up server key: no answer either.
    with Client(d.endpoint, timeout=2) as plain, pytest.raises(TimeoutError):
        plain.ping()
    public, _ = zmq.curve_keypair()
    alice_public, alice_secret = zmq.auth.load_certificate(str(client_dir / "alice.key_secret"))
    assert alice_secret is not None
    wrong_server = Client(d.endpoint, curve_server_key=public, curve_keypair=(alice_public, alice_secret),
                          timeout=2)  # fmt: skip
    with wrong_server, pytest.raises(TimeoutError):
        wrong_server.ping()


def test_market_data_reaches_only_registered_keys(secured: tuple[CurveDaemon, Path]) -> None:
    d, client_dir = secured
    server = str(d.keys_dir / "server.key")

    def subscriber(name: str) -> Subscriber:
        server_key, pair = curve_keys_from_files(str(client_dir / f"{name}.key_secret"), server)
        return Subscriber(d.md_endpoint, env="test", symbols=["ETHUSDT"], topics=["orders"],
                          curve_server_key=server_key, curve_keypair=pair)  # fmt: skip

    with subscriber("bob") as bob_md, subscriber("mallory") as mallory_md, \
            curve_client(d, client_dir, "alice") as alice:  # fmt: skip
        alice.logon("alice")
        got: MarketUpdate | None = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:  # until bob's subscription is in
            assert isinstance(alice.new_order("ETHUSDT", "buy", qty_units=100, price_units=50), p.Ack)
            try:
                got = bob_md.recv(timeout=0.5)
            except TimeoutError:
                continue
        assert got is not None and got.data.symbol == "ETHUSDT"
        with pytest.raises(TimeoutError):
            mallory_md.recv(timeout=1.0)


def test_a_key_logs_on_only_as_its_own_account(secured: tuple[CurveDaemon, Path]) -> None:
    d, client_dir = secured
    with curve_client(d, client_dir, "bob") as bob:
        reply = bob.request(p.Logon(account="alice"))
        assert isinstance(reply, p.Reject) and reply.code == RejectReason.UNKNOWN_ACCOUNT
        order = bob.request(p.NewOrder(symbol="BTCUSDT", client_order_id="x", side=1, qty=1, price=100))
        assert isinstance(order, p.Reject) and order.code == RejectReason.NOT_LOGGED_ON


def test_a_reused_routing_id_does_not_inherit_a_session(secured: tuple[CurveDaemon, Path]) -> None:
    """A client may choose its ZeroMQ routing id. The gateway learns of a disconnect only when
    a send fails, so alice's session can outlive her connection: bob taking her routing id
    must still not trade as alice."""
    d, client_dir = secured
    server_key, alice_pair = curve_keys_from_files(str(client_dir / "alice.key_secret"),
                                                   str(d.keys_dir / "server.key"))  # fmt: skip
    _, bob_pair = curve_keys_from_files(str(client_dir / "bob.key_secret"), str(d.keys_dir / "server.key"))
    ctx = zmq.Context.instance()

    def dealer(pair: tuple[bytes, bytes]) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.routing_id = b"shared-routing-id"
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, pair[0], pair[1]
        sock.connect(d.endpoint)
        return sock

    def ask(sock: zmq.Socket[bytes], request: dict[str, object]) -> p.Reply:
        sock.send(enc(request))
        assert sock.poll(10_000), f"no reply to {request}"
        reply: p.Reply = p.reply_decoder.decode(sock.recv())
        return reply

    alice = dealer(alice_pair)
    assert isinstance(ask(alice, {"type": "logon", "account": "alice", "req_id": 1}), p.LogonAck)
    alice.close(0)
    order = {"type": "new_order", "symbol": "BTCUSDT", "client_order_id": "hijack", "side": 1, "qty": 1,
             "price": 100, "req_id": 2}  # fmt: skip
    deadline = time.monotonic() + 10
    reply: p.Reply | None = None
    while time.monotonic() < deadline:  # until the ROUTER has let go of alice's connection
        bob = dealer(bob_pair)
        try:
            bob.send(enc(order))
            if bob.poll(1000):
                reply = p.reply_decoder.decode(bob.recv())
                break
        finally:
            bob.close(0)
    assert isinstance(reply, p.Reject) and reply.code == RejectReason.NOT_LOGGED_ON, reply
    with curve_client(d, client_dir, "alice") as again:
        again.logon("alice")
        status = again.order_status("BTCUSDT", client_order_id="hijack")
        assert not status.found


def test_one_account_cannot_see_cancel_or_amend_another_accounts_order(
    secured: tuple[CurveDaemon, Path],
) -> None:
    d, client_dir = secured
    with curve_client(d, client_dir, "alice") as alice, curve_client(d, client_dir, "bob") as bob:
        alice.logon("alice")
        bob.logon("bob")
        placed = alice.new_order("BTCUSDT", "sell", qty_units=700, price_units=12_300,
                                 client_order_id="secret-1")  # fmt: skip
        assert isinstance(placed, p.Ack) and isinstance(placed.events[0], Accepted)
        order_id = placed.events[0].order_id

        for by_id, by_coid in ((order_id, ""), (0, "secret-1")):
            seen = bob.order_status("BTCUSDT", order_id=by_id, client_order_id=by_coid)
            # Not found, and nothing of alice's order leaks through the reply's other fields.
            assert seen == p.OrderStatusReply("BTCUSDT", False, req_id=seen.req_id), seen
        cancel = bob.cancel("BTCUSDT", order_id=order_id)
        assert isinstance(cancel, p.Ack) and isinstance(cancel.events[0], Rejected)
        assert cancel.events[0].reason == RejectReason.NOT_ORDER_OWNER
        amend = bob.amend("BTCUSDT", order_id=order_id, qty_units=100, price_units=1)
        assert isinstance(amend, p.Ack) and isinstance(amend.events[0], Rejected)
        assert amend.events[0].reason == RejectReason.NOT_ORDER_OWNER
        by_name = bob.cancel("BTCUSDT", client_order_id="secret-1")  # bob's own namespace: no such order
        assert isinstance(by_name, p.Ack) and by_name.events[0].reason == RejectReason.UNKNOWN_ORDER
        for reply in bob.mass_cancel():
            assert isinstance(reply, p.Ack) and reply.events == [], reply

        mine = alice.order_status("BTCUSDT", order_id=order_id)
        assert (mine.found, mine.price, mine.qty, mine.remaining) == (True, 12_300, 700, 700)
        assert alice.book("BTCUSDT").asks == [(12_300, 700)]
        assert not alice.events(), "alice heard of bob's attempts"


def test_the_admin_endpoint_is_not_on_the_trading_socket(secured: tuple[CurveDaemon, Path]) -> None:
    d, client_dir = secured
    request = admin.StatusRequest(req_id=5)
    with curve_client(d, client_dir, "alice") as alice:
        before = alice.request(request)  # type: ignore[arg-type]  # exactly what is tried
        alice.logon("alice")
        after = alice.request(request)  # type: ignore[arg-type]
    for reply in (before, after):
        assert isinstance(reply, p.Reject) and reply.code == RejectReason.MALFORMED_MESSAGE, reply
    sock = d.workdir / "run" / "admin.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_keys_generate_writes_a_private_secret(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        made = keys_generate(tmp_path / "keys", "client")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(made["secret_file"]).stat().st_mode) == 0o600


def _world_accessible(root: Path) -> list[str]:
    """Everything under `root` (root included) that other users could read, write or enter.
    Public key files are public by design."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o007 and not path.name.endswith(".key"):
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def test_the_servers_curve_secret_is_private(secured: tuple[CurveDaemon, Path]) -> None:
    d, _ = secured
    assert stat.S_IMODE(d.keys_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((d.keys_dir / "server.key_secret").stat().st_mode) == 0o600


def test_nothing_the_daemon_writes_is_world_accessible(secured: tuple[CurveDaemon, Path]) -> None:
    d, client_dir = secured
    with curve_client(d, client_dir, "alice") as alice:
        alice.logon("alice")
        assert isinstance(alice.new_order("ETHUSDT", "buy", qty_units=100, price_units=100), p.Ack)
    assert d.stop() == 0  # the snapshotter writes its checkpoints on the way out
    try:
        assert (d.data_dir / "checkpoints.lmdb").exists()
        assert (d.data_dir / "journal" / "ETHUSDT.lmdb").exists()
        found = _world_accessible(d.data_dir) + _world_accessible(d.workdir / "run")
        assert not found, found
    finally:
        d.start()  # later tests (if any) find it serving
