"""Real processes and sockets for the gateway tests: the gateway runs as a subprocess, the
test plays the matchers (a PULL bound where a matcher binds, a PUSH to the gateway's reply
socket) and the clients (DEALER sockets)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from daemon import config as cfg
from daemon import notify
from engine import messages as E
from gateway import protocol as P
from matcher import link
from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 3000

INSTRUMENTS = """
[[instruments]]
symbol = "BTCUSDT"
price_decimals = 2
qty_decimals = 6
lot_size = 100
min_qty = 100

[[instruments]]
symbol = "ETHUSDT"
"""


class GatewayProcess:
    """`python -m gateway --config FILE`, started and waited for (READY=1 over NOTIFY_SOCKET)."""

    def __init__(self, tmp: Path, extra_toml: str = "", gateway_toml: str = "") -> None:
        # ipc paths must fit in sun_path (108 bytes): pytest's tmp_path can be too long.
        self.short = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
        self.port, self.md_port = free_port(), free_port()
        text = (
            f'env = "test"\ndata_dir = "{tmp / "data"}"\nrun_dir = "{self.short / "run"}"\n'
            f"{extra_toml}\n{INSTRUMENTS}\n[gateway]\n"
            f'bind = "tcp://127.0.0.1:{self.port}"\n'
            f'market_data_bind = "tcp://127.0.0.1:{self.md_port}"\n{gateway_toml}\n'
        )
        self.config_path = tmp / "clobd.toml"
        self.config_path.write_text(text)
        self.config = cfg.load(self.config_path)
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.md_endpoint = f"tcp://127.0.0.1:{self.md_port}"
        self.log_path = tmp / "gateway.log"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        notify_path = str(self.short / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
            ns.bind(notify_path)
            ns.settimeout(15)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONPATH=str(REPO))
            # A file, not a pipe: nobody reads a pipe while the tests run, and a full one
            # would block the gateway's logging.
            with self.log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gateway", "--config", str(self.config_path)],
                    cwd=REPO, env=env, stderr=log,
                )
            try:
                fields = notify.parse(ns.recv(4096))
            except TimeoutError:
                proc.kill()
                proc.wait()
                raise AssertionError(f"gateway not ready: {self.log()}") from None
        assert fields == {"READY": "1", "CHILD": "gateway"}
        return proc

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self) -> tuple[int, float, str]:
        """SIGTERM; (exit code, seconds to exit, the log)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=10)
        return code, time.monotonic() - start, self.log()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # A gateway that hit a bug answers "internal error" and logs it: never in these tests.
        assert "_failed" not in self.log(), self.log()
        shutil.rmtree(self.short, ignore_errors=True)


class FakeMatcher:
    """The matcher's two sockets, driven by the test."""

    def __init__(self, ctx: zmq.Context[Any], config: cfg.Config, symbol: str, pid: int = 4242) -> None:
        self.ctx, self.config, self.symbol, self.pid = ctx, config, symbol, pid
        self.commands = ctx.socket(zmq.PULL)
        self.commands.linger = 0
        self.commands.bind(config.matcher_endpoint(symbol))
        self.replies = ctx.socket(zmq.PUSH)
        self.replies.linger = 0
        self.replies.connect(config.replies_endpoint())

    def ready(self, seq: int = 0) -> None:
        self.send(link.MatcherReady(self.symbol, seq, self.pid))

    def send(self, msg: link.ToGateway) -> None:
        self.replies.send(link.encoder.encode(msg))

    def recv(self, timeout_ms: int = TIMEOUT_MS) -> link.ToMatcher:
        if not self.commands.poll(timeout_ms):
            raise AssertionError(f"matcher {self.symbol}: nothing received")
        return link.to_matcher.decode(self.commands.recv())

    def recv_batch(self, timeout_ms: int = TIMEOUT_MS) -> list[link.Envelope]:
        msg = self.recv(timeout_ms)
        assert isinstance(msg, link.CommandBatch), msg
        return msg.items

    def recv_commands(self, n: int, timeout_ms: int = TIMEOUT_MS) -> tuple[list[link.Envelope], int]:
        """At least `n` commands; (commands, frames they came in)."""
        items: list[link.Envelope] = []
        frames = 0
        while len(items) < n:
            items += self.recv_batch(timeout_ms)
            frames += 1
        return items, frames

    def idle(self, timeout_ms: int = 300) -> bool:
        return not self.commands.poll(timeout_ms)

    def answer(self, envelopes: list[link.Envelope], seq0: int = 1) -> None:
        """Accept every command (an Accepted event per order), as one OutcomeBatch."""
        outcomes = [accepted(env, seq0 + i) for i, env in enumerate(envelopes)]
        self.send(link.OutcomeBatch(self.symbol, outcomes, []))

    def close(self) -> None:
        self.commands.close()
        self.replies.close()


def accepted(env: link.Envelope, seq: int) -> link.Outcome:
    cmd = env.command
    assert isinstance(cmd, E.NewOrder)
    event = E.Accepted(seq, cmd.account, cmd.client_order_id, cmd.side, cmd.price, cmd.qty,
                       cmd.order_type, cmd.tif)
    return link.Outcome(env.conn, env.req_id, cmd.account, cmd.client_order_id, seq, [event])


class Client:
    """A DEALER speaking the public protocol."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, **sockopts: Any) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        # A DEALER with no live connection blocks in send for good (a refused CURVE key):
        # a test must fail with zmq.Again instead of hanging the suite.
        self.sock.sndtimeo = TIMEOUT_MS
        for name, value in sockopts.items():
            setattr(self.sock, name, value)
        self.sock.connect(endpoint)

    def send(self, msg: Any) -> None:
        self.sock.send(msg if isinstance(msg, bytes) else P.encoder.encode(msg))

    def recv(self, timeout_ms: int = TIMEOUT_MS) -> P.Reply:
        if not self.sock.poll(timeout_ms):
            raise AssertionError("client: no reply")
        return P.reply_decoder.decode(self.sock.recv())

    def silent(self, timeout_ms: int = 300) -> bool:
        return not self.sock.poll(timeout_ms)

    def ask(self, msg: Any, timeout_ms: int = TIMEOUT_MS) -> P.Reply:
        self.send(msg)
        return self.recv(timeout_ms)

    def logon(self, account: str) -> P.LogonAck:
        reply = self.ask(P.Logon(account=account, req_id=1))
        assert isinstance(reply, P.LogonAck), reply
        return reply

    def close(self) -> None:
        self.sock.close()


def order(cid: str, symbol: str = "BTCUSDT", side: int = 1, qty: int = 100, price: int = 10_000,
          req_id: int = 0) -> P.NewOrder:
    return P.NewOrder(symbol=symbol, client_order_id=cid, side=E.Side(side), qty=qty, price=price,
                      req_id=req_id)


def raw(obj: Any) -> bytes:
    """msgpack of a plain dict/list, for messages the typed encoder would not produce."""
    return msgspec.msgpack.encode(obj)
