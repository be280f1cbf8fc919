"""A real `clob serve` for the end-to-end bench: fresh data dir, free ports, READY over
NOTIFY_SOCKET (as systemd would see it), and the CPU time of each of its processes.

The same approach as tests/e2e/conftest.py, copied in its minimal form so the bench does
not import pytest fixtures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from daemon.notify import parse
from journal import Journal, journal_path

ROOT = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DaemonError(RuntimeError):
    """The daemon did not start, or died; the message ends with its log's tail."""


class BenchDaemon:
    """One `clob serve` process tree serving `symbols` over `workdir/data`."""

    def __init__(self, workdir: Path, symbols: list[str]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.symbols = symbols
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.data_dir = workdir / "data"
        self.log_path = workdir / "daemon.log"
        self.config_path = workdir / "clobd.toml"
        self.config_path.write_text(self._config(free_port()))
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock_path = workdir / "notify.sock"
        self._notify: socket.socket | None = None

    def _config(self, md_port: int) -> str:
        # Two decimals and one-unit ticks/lots: the workload works in integer units.
        instruments = "".join(
            f'\n[[instruments]]\nsymbol = "{s}"\nprice_decimals = 2\nqty_decimals = 4\n' for s in self.symbols
        )
        return (
            f'env = "bench"\ndata_dir = "{self.data_dir}"\nrun_dir = "{self.workdir / "run"}"\n'
            f'log_level = "info"\n\n[gateway]\nbind = "{self.endpoint}"\n'
            f'market_data_bind = "tcp://127.0.0.1:{md_port}"\n{instruments}'
        )

    def start(self, timeout: float = 60.0) -> None:
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self._sock_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self._sock_path), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--config", str(self.config_path)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self._notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            self._notify.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                if "READY" in parse(self._notify.recv(4096)):
                    return
        raise DaemonError(f"no READY within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL the whole group if it does not stop in time."""
        assert self.proc is not None
        code: int
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=10)
        if self._notify is not None:
            self._notify.close()
        return code

    def processes(self) -> dict[str, int]:
        """Name -> pid: "supervisor", "gateway", "matcher-<SYMBOL>"."""
        assert self.proc is not None
        out = {"supervisor": self.proc.pid}
        for pid in _children(self.proc.pid):
            argv = _cmdline(pid)
            if "gateway" in argv:
                out["gateway"] = pid
            elif "matcher" in argv and "--symbol" in argv:
                out[f"matcher-{argv[argv.index('--symbol') + 1]}"] = pid
        return out

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def log_problems(self) -> list[str]:
        """Log lines at warning level or above (the config above asks for key=value logs)."""
        if not self.log_path.exists():
            return []
        marks = ("level=warning", "level=error", "level=critical", "Traceback")
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if any(m in line for m in marks)]

    def matcher_stats(self) -> dict[str, dict[str, int]]:
        """Symbol -> the counters each matcher logs when it stops (batches = group commits)."""
        out: dict[str, dict[str, int]] = {}
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if fields.get("event") == "stopped" and fields.get("proc", "").startswith("matcher."):
                counters = {k: int(v) for k, v in fields.items() if k in ("batches", "commands", "seq")}
                out[fields["proc"].removeprefix("matcher.")] = counters
        return out

    def journal_records(self) -> dict[str, int]:
        """Symbol -> records in its journal, read from the files after the daemon stopped."""
        out = {}
        for symbol in self.symbols:
            with Journal.open(journal_path(self.data_dir / "journal", symbol), readonly=True) as journal:
                out[symbol] = journal.count()
        return out


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads), 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds summed over all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return (total - idle) / _CLK_TCK, total / _CLK_TCK
