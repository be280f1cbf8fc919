"""Clients that come and go: the gateway's session table follows them and stays bounded.

ZeroMQ does not tell the gateway that a peer left, so sessions of clients that closed
without a word used to stay forever (`clob status` counted every CLI command ever run).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.status import ask
from daemon.config import load
from engine.messages import RejectReason
from gateway import protocol as p
from gateway.client import Client
from tests.faults.conftest import Daemon


def sessions(d: Daemon) -> int:
    reply = ask(load(d.config_path), timeout=10)
    assert reply is not None, d.log()
    return reply.sessions


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, "")
    d.config_path.write_text(d.config_path.read_text().replace(
        "[gateway]\n", "[gateway]\nmax_sessions = 4\n"))  # fmt: skip
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill_all()


def test_a_closing_client_logs_out(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as staying:
        staying.logon("alice")
        for i in range(30):
            with Client(daemon.endpoint, timeout=10) as passing:
                passing.logon(f"visitor{i % 3}")
                assert passing.ping() > 0  # round-trip seconds
        assert sessions(daemon) == 1  # the 30 visitors are gone, alice stays
        assert isinstance(staying.new_order("BTCUSDT", "buy", "1", "100.00"), p.Ack)
    assert sessions(daemon) == 0
    assert "event=logout account=visitor0" in daemon.log()


def test_an_explicit_logout_is_acknowledged_and_ends_the_session(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as client:
        client.logon("alice")
        reply = client.request(p.Logout())
        assert isinstance(reply, p.LogoutAck) and reply.account == "alice"
        refused = client.new_order("BTCUSDT", "buy", qty_units=1, price_units=100)
        assert isinstance(refused, p.Reject) and refused.code == RejectReason.NOT_LOGGED_ON


def test_silent_vanishers_are_evicted_least_recently_active_first(small: Daemon) -> None:
    clients = [Client(small.endpoint, timeout=10) for _ in range(6)]
    try:
        for i, client in enumerate(clients[:4]):
            client.logon(f"acct{i}")
        # acct0 is the oldest logon but trades now: acct1 becomes the least recently active.
        assert isinstance(clients[0].new_order("BTCUSDT", "buy", qty_units=1, price_units=100), p.Ack)
        clients[4].logon("acct4")
        clients[5].logon("acct5")
        assert sessions(small) == 4
        for evicted in (clients[1], clients[2]):
            refused = evicted.new_order("BTCUSDT", "buy", qty_units=1, price_units=100)
            assert isinstance(refused, p.Reject) and refused.code == RejectReason.NOT_LOGGED_ON
        for kept in (clients[0], clients[3], clients[4], clients[5]):
            assert isinstance(kept.new_order("BTCUSDT", "buy", qty_units=1, price_units=100), p.Ack)
        clients[1].logon("acct1")  # an evicted client simply logs on again
        assert isinstance(clients[1].new_order("BTCUSDT", "buy", qty_units=1, price_units=100), p.Ack)
    finally:
        for client in clients:
            client.account = None  # vanish silently: no logout
            client.close()
    deadline = time.monotonic() + 5  # the gateway summarises evictions once a second
    while "event=sessions_evicted" not in small.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "event=sessions_evicted count=3" in small.log() and "max_sessions reached" in small.log()
