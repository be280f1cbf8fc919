"""The gateway's side of the link, played by the tests, and a real matcher subprocess.

`FakeGateway` binds what the real gateway binds (the replies PULL and the market-data
XSUB) and connects a PUSH to the matcher, exactly as the gateway does; `MatcherProc` runs
`python -m matcher` with a config whose data lives under tmp_path. ipc paths live in a short
directory under /tmp, because a unix socket path must fit in 107 bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import zmq

from daemon.child import end_context
from daemon.config import Config, load
from engine.engine import Engine
from engine.messages import Accepted, Command, NewOrder, Side
from gateway.protocol import MarketData, market_data_decoder
from journal import Journal, Record, journal_path
from matcher import link
from matcher.link import (
    BookAnswer,
    BookQuery,
    CommandBatch,
    Envelope,
    MatcherReady,
    Outcome,
    OutcomeBatch,
    Refusal,
    StatusAnswer,
    StatusQuery,
)
from matcher.recovery import rebuild

ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "BTCUSDT"
TS0 = 1_700_000_000_000_000_000

Answer = Outcome | Refusal
A = TypeVar("A", BookAnswer, StatusAnswer)


def write_config(workdir: Path, run_dir: Path, matcher_toml: str = "") -> Path:
    path = workdir / "clobd.toml"
    path.write_text(
        f"""
env = "test"
data_dir = "{workdir / "data"}"
run_dir = "{run_dir}"
log_level = "info"

[matcher]
{matcher_toml}

[[instruments]]
symbol = "{SYMBOL}"
price_decimals = 2
qty_decimals = 4
"""
    )
    return path


class MatcherProc:
    """`python -m matcher --symbol BTCUSDT --config ...` as a child; its log in a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "matcher", "--symbol", SYMBOL, "--config", str(self.config_path)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                stdout=log_file,
                stderr=log_file,
                preexec_fn=preexec_fn,
            )
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text` (a line may follow the reply it is about)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged; log:\n{self.log()}")
            time.sleep(0.01)
        return self.log()


class MarketDataProxy:
    """XSUB (bound where matchers publish) -> XPUB (inproc), in a thread, like the gateway's.

    A proxy that polls its XSUB all the time matters: a bound socket attaches a new peer
    only when its owner touches it, so an idle XSUB would hand the matcher's PUB our
    subscription only after its first message, which the PUB would drop.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.downstream = f"inproc://market-data-{id(self)}"
        self._xsub = ctx.socket(zmq.XSUB)
        self._xsub.bind(endpoint)
        self._xpub = ctx.socket(zmq.XPUB)
        self._xpub.bind(self.downstream)
        self._control = ctx.socket(zmq.PAIR)
        self._control.bind(f"inproc://control-{id(self)}")
        self._steer = ctx.socket(zmq.PAIR)
        self._steer.connect(f"inproc://control-{id(self)}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        zmq.proxy_steerable(self._xsub, self._xpub, None, self._steer)
        for sock in (self._xsub, self._xpub, self._steer):
            sock.close(linger=0)

    def stop(self) -> None:
        self._control.send(b"TERMINATE")
        self._thread.join(5)
        self._control.close(linger=0)


class FakeGateway:
    """Bound replies + market data (through a proxy), a PUSH to the matcher, and a stamper."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = zmq.Context()
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.bind(config.replies_endpoint())
        self.proxy = MarketDataProxy(self.ctx, config.market_data_endpoint())
        self.md = self.ctx.socket(zmq.SUB)
        self.md.connect(self.proxy.downstream)
        self.md.subscribe(b"")
        self.to_matcher: zmq.Socket[bytes] | None = None
        self.seq = 0
        self.req_id = 0
        self.pending: list[link.ToGateway] = []  # replies received while waiting for something else

    def close(self) -> None:
        self.proxy.stop()
        end_context(self.ctx, 0, 1.0)

    def connect(self) -> None:
        """A fresh PUSH per matcher run: a dead peer's queued frames are not ours to resend."""
        if self.to_matcher is not None:
            self.to_matcher.close(linger=0)
        self.to_matcher = self.ctx.socket(zmq.PUSH)
        self.to_matcher.connect(self.config.matcher_endpoint(SYMBOL))

    # --- commands -----------------------------------------------------------------------

    def order(self, account: str, coid: str, side: Side, qty: int, price: int, **fields: Any) -> NewOrder:
        self.seq += 1
        return NewOrder(self.seq, TS0 + self.seq, account, coid, side, qty, price, **fields)

    def stamp(self) -> tuple[int, int]:
        """The next gateway (seq, ts), for commands built by hand."""
        self.seq += 1
        return self.seq, TS0 + self.seq

    def send(self, commands: Sequence[Command], conn: bytes = b"conn-1") -> list[int]:
        """One CommandBatch frame; the req_ids given to its envelopes, in order."""
        ids = []
        items = []
        for command in commands:
            self.req_id += 1
            ids.append(self.req_id)
            items.append(Envelope(conn, self.req_id, command))
        self.send_raw(link.encoder.encode(CommandBatch(items)))
        return ids

    def send_raw(self, frame: bytes) -> None:
        assert self.to_matcher is not None
        self.to_matcher.send(frame)

    # --- replies ------------------------------------------------------------------------

    def recv(self, timeout: float = 10.0) -> link.ToGateway:
        if self.pending:
            message: link.ToGateway = self.pending.pop(0)
            return message
        if not self.replies.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply from the matcher within {timeout}s")
        decoded: link.ToGateway = link.to_gateway.decode(self.replies.recv())
        return decoded

    def wait_ready(self, timeout: float = 20.0) -> MatcherReady:
        message = self.recv(timeout)
        assert isinstance(message, MatcherReady), message
        return message

    def answers(self, req_ids: Iterable[int], timeout: float = 20.0) -> dict[int, Answer]:
        """Every Outcome/Refusal for `req_ids`, and any other that came meanwhile.

        Other replies (answers to queries, MatcherReady) are kept for later `recv`s.
        """
        wanted = set(req_ids)
        got: dict[int, Answer] = {}
        deadline = time.monotonic() + timeout
        kept: list[link.ToGateway] = []
        while wanted - got.keys():
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(message, OutcomeBatch):
                got.update((o.req_id, o) for o in message.outcomes)
                got.update((r.req_id, r) for r in message.refusals)
            else:
                kept.append(message)
        self.pending.extend(kept)
        return got

    def submit(self, commands: Sequence[Command], conn: bytes = b"conn-1") -> list[Answer]:
        """Send one batch and wait for its answers, in the batch's order."""
        ids = self.send(commands, conn)
        got = self.answers(ids)
        return [got[i] for i in ids]

    def outcomes(self, commands: Sequence[Command], conn: bytes = b"conn-1") -> list[Outcome]:
        """`submit` for commands that must all be journaled (no refusal)."""
        answers = self.submit(commands, conn)
        assert all(isinstance(a, Outcome) for a in answers), answers
        return answers  # type: ignore[return-value]

    def book(self, depth: int = 50) -> BookAnswer:
        self.req_id += 1
        self.send_raw(link.encoder.encode(BookQuery(b"q", self.req_id, depth)))
        return self._answer_to(self.req_id, BookAnswer)

    def status(self, account: str, order_id: int = 0, coid: str = "") -> StatusAnswer:
        self.req_id += 1
        self.send_raw(link.encoder.encode(StatusQuery(b"q", self.req_id, account, order_id, coid)))
        return self._answer_to(self.req_id, StatusAnswer)

    def _answer_to(self, req_id: int, kind: type[A]) -> A:
        kept: list[link.ToGateway] = []
        while True:
            message = self.recv()
            if isinstance(message, kind) and message.req_id == req_id:
                self.pending.extend(kept)
                return message
            kept.append(message)

    # --- market data --------------------------------------------------------------------

    def market_data(self, n: int, timeout: float = 10.0) -> list[tuple[str, MarketData]]:
        out: list[tuple[str, MarketData]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            if not self.md.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise TimeoutError(f"got {len(out)} of {n} market-data messages")
            topic, payload = self.md.recv_multipart()
            out.append((topic.decode(), market_data_decoder.decode(payload)))
        return out

    def no_market_data(self, wait: float = 0.2) -> bool:
        return not self.md.poll(int(wait * 1000))


def journal_file(config: Config) -> Path:
    return journal_path(config.journal_dir(), SYMBOL)


def replay(config: Config) -> tuple[Engine, int]:
    """The book the journal holds, rebuilt in this process (raises on any mismatch)."""
    with Journal.open(journal_file(config), readonly=True) as journal:
        recovered = rebuild(journal, config.instrument(SYMBOL).spec())
        return recovered.engine, recovered.seq


def journaled(config: Config) -> list[Record]:
    with Journal.open(journal_file(config), readonly=True) as journal:
        return list(journal.read())


def load_config(path: Path) -> Config:
    return load(path)


def buy_sell(n: int, gateway: FakeGateway, account: str = "acct", prefix: str = "o") -> list[NewOrder]:
    """`n` resting, non-crossing orders: buys below 10_000, sells above."""
    out: list[NewOrder] = []
    for i in range(n):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        price = 10_000 - 1 - i % 50 if side == Side.BUY else 10_000 + 1 + i % 50
        out.append(gateway.order(account, f"{prefix}{i}", side, 1 + i % 5, price))
    return out


def order_id(outcome: Outcome) -> int:
    """The engine order id an accepted NewOrder got."""
    event = outcome.events[0]
    assert isinstance(event, Accepted), outcome
    return event.order_id


def coid_of(record: Record) -> str:
    command = record.command
    assert isinstance(command, NewOrder), record
    return command.client_order_id
