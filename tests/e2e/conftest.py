"""The real daemon, started as `clob serve` in a temporary directory, acting as systemd.

The fixture binds a datagram socket and passes it as NOTIFY_SOCKET, so "ready" means what
it means in production: the supervisor said READY=1 after every matcher recovered.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.notify import parse

ROOT = Path(__file__).resolve().parents[2]


def stopped(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """`proc.communicate(timeout)`; a process still running then is killed (not left behind
    by the failing test) and the timeout raised."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def interruptible() -> None:
    """`preexec_fn` of a CLI process that a test stops with SIGINT, as Ctrl-C would: SIGINT
    back to its default, for tests run as a shell's background job, which ignores SIGINT
    (and a Python child that starts with it ignored keeps ignoring it, so never stops)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# `bind(port 0)` hands out a port of the range the kernel takes outgoing connections' ports
# from (ip_local_port_range, 32768-60999 by default): a client socket of any process could
# take it between the pick and the daemon's bind (seen in CI: the gateway's market-data
# bind failed with EADDRINUSE). Below that range only listeners bind.
_LISTEN_PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, below the outgoing connections' range."""
    for _ in range(100):
        port = random.randrange(_LISTEN_PORTS.start, _LISTEN_PORTS.stop)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS}")


class Daemon:
    """One `clob serve` process tree over a data directory that outlives restarts."""

    def __init__(self, workdir: Path, extra_toml: str = "") -> None:
        self.workdir = workdir
        self.port, self.md_port = free_port(), free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.md_endpoint = f"tcp://127.0.0.1:{self.md_port}"
        self.data_dir = workdir / "data"
        self.config_path = workdir / "clobd.toml"
        self.config_path.write_text(self._config(extra_toml))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "daemon.log"
        self.notifications: list[dict[str, str]] = []
        self._sock_path = workdir / "systemd.notify"

    def _config(self, extra: str) -> str:
        return f"""
env = "test"
data_dir = "{self.data_dir}"
run_dir = "{self.workdir / "run"}"
log_level = "info"
{extra}
[gateway]
bind = "{self.endpoint}"
market_data_bind = "{self.md_endpoint}"

[supervisor]
restart_backoff_s = 0.2
stop_timeout_s = 10

[[instruments]]
symbol = "BTCUSDT"
price_decimals = 2
qty_decimals = 4
lot_size = 1

[[instruments]]
symbol = "ETHUSDT"
price_decimals = 2
qty_decimals = 4
"""

    def start(self, timeout: float = 30.0) -> None:
        self._sock_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self._sock_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self._sock_path), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--config", str(self.config_path)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.wait_for("READY", timeout)

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            self._notify.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                message = parse(self._notify.recv(4096))
            except TimeoutError:
                continue
            self.notifications.append(message)
            if key in message:
                return message
        raise AssertionError(f"no {key} from the daemon within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._notify.close()
        return code

    def kill_all(self) -> None:
        """SIGKILL the whole process tree at once, like a power cut to the processes."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._notify.close()

    def child_pids(self, name_part: str) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid), "-f", name_part], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split() if int(p) != self.proc.pid]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill_all()
