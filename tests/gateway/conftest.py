from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from daemon.child import end_context
from engine.messages import RejectReason
from gateway import protocol as P
from matcher import link
from tests.gateway.harness import Client, FakeMatcher, GatewayProcess


class Rig:
    """One gateway with a ready fake matcher per instrument, shared by a test module."""

    def __init__(self, gateway: GatewayProcess, ctx: zmq.Context[Any],
                 symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), probe: str = "probe") -> None:
        self.gateway = gateway
        self.ctx = ctx
        self.probe = probe  # the account that checks readiness
        self.matchers = {s: FakeMatcher(ctx, gateway.config, s) for s in symbols}
        self.clients: list[Client] = []
        for m in self.matchers.values():
            m.ready()
            self.wait_ready(m)

    def wait_ready(self, matcher: FakeMatcher) -> None:
        """Until the gateway routes to `matcher` (a BookQuery gets through to it)."""
        probe = self.client(self.probe)
        for _ in range(100):
            probe.send(P.BookQuery(symbol=matcher.symbol, req_id=9))
            if not probe.silent(50):
                reply = probe.recv()
                assert isinstance(reply, P.Reject) and reply.code == RejectReason.BUSY, reply
                continue
            query = matcher.recv()
            assert isinstance(query, link.BookQuery)
            # Answered, as a real matcher would: a query counts as in flight until then.
            matcher.send(link.BookAnswer(matcher.symbol, query.conn, query.req_id, 0, [], []))
            assert isinstance(probe.recv(), P.BookReply)
            break
        else:
            raise AssertionError(f"{matcher.symbol}: gateway never saw MatcherReady")
        self.clients.remove(probe)
        probe.close()

    def client(self, account: str | None = None, **sockopts: Any) -> Client:
        c = Client(self.ctx, self.gateway.endpoint, **sockopts)
        self.clients.append(c)
        if account is not None:
            c.logon(account)
        return c

    def tidy(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        for m in self.matchers.values():
            while m.commands.poll(0):
                m.commands.recv()


@pytest.fixture(scope="session")
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    end_context(context, 0, 1.0)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, ctx: zmq.Context[Any]) -> Iterator[Rig]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("gw"), gateway_toml="max_message_bytes = 16384\n"
                             "max_batch_orders = 64\n")
    yield from serve(Rig(gateway, ctx))


def serve(rig: Rig) -> Iterator[Rig]:
    yield rig
    rig.tidy()
    for m in rig.matchers.values():
        m.close()
    rig.gateway.close()


@pytest.fixture
def gw(rig: Rig) -> Iterator[Rig]:
    yield rig
    rig.tidy()
