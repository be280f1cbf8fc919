"""`clob serve` under a fake systemd: the notify protocol as clobd.service relies on it.

The test binds the datagram socket systemd would (NOTIFY_SOCKET), sets WATCHDOG_USEC as
WatchdogSec= does, and records every datagram with the time it arrived and, for READY=1,
the daemon's log as it stood at that moment. It checks what Type=notify and WatchdogSec=
depend on: READY=1 only once every matcher has rebuilt its book (and then orders trade at
once), STATUS= lines, WATCHDOG=1 at about WATCHDOG_USEC/2 while healthy, pings that stop
while a killed matcher is down and resume once the supervisor has restarted it, and
STOPPING=1 then exit 0 on SIGTERM.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.notify import parse
from gateway import protocol as p
from gateway.client import Client
from tests.e2e.conftest import ROOT, free_port

SYMBOLS = ("BTCUSDT", "ETHUSDT")
WATCHDOG_USEC = 400_000
ORDERS_PER_SYMBOL = 1_000  # 2,000 in all: recovery replays them, so it takes a visible while


@dataclass
class Notification:
    at: float  # time.monotonic() when it arrived
    fields: dict[str, str]
    log: str  # the daemon's log at that moment (READY=1 only; "" otherwise)


class FakeSystemd:
    """Starts `clob serve` as systemd would for Type=notify and records what it says."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.config_path = workdir / "clobd.toml"
        self.config_path.write_text(
            f"""
env = "test"
data_dir = "{workdir / "data"}"
run_dir = "{workdir / "run"}"

[gateway]
bind = "{self.endpoint}"
market_data_bind = "tcp://127.0.0.1:{free_port()}"

[supervisor]
restart_backoff_s = 0.3
stop_timeout_s = 10
"""
            + "".join(f'\n[[instruments]]\nsymbol = "{s}"\nprice_decimals = 2\n' for s in SYMBOLS)
        )
        self.log_path = workdir / "daemon.log"
        self.notifications: list[Notification] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    # --- process ----------------------------------------------------------------------

    def start(self, watchdog_usec: int | None = None) -> None:
        sock_path = self.workdir / "systemd.notify"
        sock_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        self._sock.settimeout(0.05)
        self.notifications = []
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONUNBUFFERED": "1"}
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--config", str(self.config_path)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._reader = threading.Thread(target=self._read, args=(self._sock,), daemon=True)
        self._reader.start()

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                datagram = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            at = time.monotonic()
            fields = parse(datagram)
            log = self.log() if fields.get("READY") == "1" else ""
            with self._lock:
                self.notifications.append(Notification(at, fields, log))

    def wait_for(
        self, key: str, value: str | None = None, timeout: float = 20.0, after: float = 0.0
    ) -> Notification:
        """The first notification (arrived after `after`) that has `key` (= `value`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in self.received():
                if n.at >= after and key in n.fields and value in (None, n.fields[key]):
                    return n
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode} before {key}:\n{self.log()}")
            time.sleep(0.01)
        raise AssertionError(f"no {key}={value} within {timeout}s: {self.received()}\n{self.log()}")

    def wait_log(self, pattern: str, timeout: float = 20.0, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log()[start:]):
                return
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{self.log()[-6000:]}")

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.1)  # let the reader take the last datagrams
        self._close()
        return code

    def kill_all(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(timeout=2)

    def matcher_pid(self, symbol: str) -> int:
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid), "-f", f"python.* -m matcher --symbol {symbol}( |$)"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        pids = [int(pid) for pid in out.stdout.split()]
        assert len(pids) == 1, f"matcher {symbol}: pids {pids}"
        return pids[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def place_resting_orders(endpoint: str, per_symbol: int) -> None:
    """`per_symbol` non-crossing limit orders on each instrument, pipelined, all acknowledged."""
    with Client(endpoint, timeout=20) as client:
        client.logon("loader")
        req_ids = []
        for symbol in SYMBOLS:
            for i in range(per_symbol):
                side, price = ("buy", 1000 + i % 500) if i % 2 else ("sell", 2000 + i % 500)
                req_ids.append(client.send(client.make_order(symbol, side, "0.01", f"{price}.00")))
        for req_id in req_ids:
            reply = client.wait_reply(req_id, timeout=20)
            assert isinstance(reply, p.Ack) and type(reply.events[0]).__name__ == "Accepted", reply


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path)
    yield fake
    fake.kill_all()


def test_ready_only_after_every_matcher_recovered_then_trading_at_once(systemd: FakeSystemd) -> None:
    # A first run fills the journals, so the second start has real recovery to do.
    systemd.start()
    systemd.wait_for("READY")
    place_resting_orders(systemd.endpoint, ORDERS_PER_SYMBOL)
    assert systemd.stop() == 0
    first_run = len(systemd.log())

    systemd.start(watchdog_usec=WATCHDOG_USEC)
    ready = systemd.wait_for("READY", "1")
    got = systemd.received()
    assert [n for n in got if n.fields.get("READY") == "1"] == [ready]  # said once
    # The log as it stood when READY=1 arrived: every matcher had rebuilt its whole book.
    second_run = ready.log[first_run:]
    for symbol in SYMBOLS:
        recovered = re.search(rf"proc=matcher\.{symbol} event=recovered seq=(\d+) records=(\d+)", second_run)
        assert recovered, f"READY=1 before matcher {symbol} recovered:\n{second_run}"
        # seq, not records: the snapshotter's final checkpoint at stop may cover the whole journal
        assert int(recovered.group(1)) == ORDERS_PER_SYMBOL
        # (its "serving" line may come just after: the matcher announces, then logs it)
        assert f"event=child_ready child=matcher-{symbol}" in second_run
    assert "proc=supervisor event=ready" in second_run
    assert ready.fields.get("STATUS", "").startswith("serving")
    assert ready.fields.get("MAINPID") == str(systemd.proc.pid if systemd.proc else 0)

    # Orders trade the moment READY=1 is out, against the recovered books.
    with Client(systemd.endpoint, timeout=5) as client:
        client.logon("taker")
        for symbol in SYMBOLS:
            ack = client.new_order(symbol, "buy", "0.01", "2000.00", tif="ioc")
            assert isinstance(ack, p.Ack)
            assert [type(e).__name__ for e in ack.events][:2] == ["Accepted", "Trade"], ack
            assert ack.seq == ORDERS_PER_SYMBOL + 1

    stop_sent = time.monotonic()
    assert systemd.stop() == 0
    stopping = systemd.wait_for("STOPPING", "1", timeout=1, after=stop_sent)
    assert stopping.at >= stop_sent
    assert "proc=supervisor event=stopped" in systemd.log()[first_run:]


def test_watchdog_pings_stop_while_a_matcher_is_down_and_resume_after_its_restart(
    systemd: FakeSystemd,
) -> None:
    systemd.start(watchdog_usec=WATCHDOG_USEC)
    ready = systemd.wait_for("READY", "1")
    assert not [n for n in systemd.received() if "WATCHDOG" in n.fields and n.at < ready.at]

    # Healthy: a ping about every WATCHDOG_USEC/2, never a gap systemd would act on.
    time.sleep(2.0)
    pings = [n.at for n in systemd.received() if n.fields.get("WATCHDOG") == "1"]
    interval = WATCHDOG_USEC / 1e6 / 2
    assert 2.0 / interval * 0.6 <= len(pings) <= 2.0 / interval * 1.5 + 1, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < WATCHDOG_USEC / 1e6 * 0.8, f"watchdog gaps {gaps}"

    # kill -9 one matcher: the supervisor restarts it; no pings while it is down.
    log_mark = len(systemd.log())
    victim = systemd.matcher_pid("BTCUSDT")
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    degraded = systemd.wait_for("STATUS", "degraded: waiting for matcher-BTCUSDT", after=killed_at)
    systemd.wait_log(r"event=child_restarting child=matcher-BTCUSDT restarts=1", start=log_mark)
    systemd.wait_log(r"event=child_ready child=matcher-BTCUSDT", start=log_mark)
    serving = systemd.wait_for("STATUS", "serving", after=degraded.at)
    resumed = systemd.wait_for("WATCHDOG", "1", timeout=2, after=serving.at)
    assert systemd.matcher_pid("BTCUSDT") != victim
    silent = [n for n in systemd.received() if "WATCHDOG" in n.fields and degraded.at <= n.at < serving.at]
    assert not silent, "WATCHDOG=1 while a matcher was down"

    time.sleep(1.0)
    after = [n.at for n in systemd.received() if n.fields.get("WATCHDOG") == "1" and n.at >= resumed.at]
    assert len(after) >= 3, after

    # The restarted matcher is back on the order path.
    with Client(systemd.endpoint, timeout=5) as client:
        client.logon("after-restart")
        assert isinstance(client.new_order("BTCUSDT", "buy", "0.01", "100.00"), p.Ack)

    stop_sent = time.monotonic()
    assert systemd.stop() == 0
    systemd.wait_for("STOPPING", "1", timeout=1, after=stop_sent)
