"""`clob serve`: start the gateway, one matcher per instrument and the snapshotter; keep them running.

The supervisor is a thin process: it owns no socket of the order path. It starts each child
as `python -m <module> ...` with NOTIFY_SOCKET pointing at its own datagram socket, so a
child reports readiness with the systemd notify protocol (daemon/notify.py) exactly as the
supervisor then reports to systemd. Start-up order: the gateway (it binds the sockets the
matchers connect to), then every matcher (each recovers its book from its journal before
saying READY=1), then the snapshotter (ready as soon as it started: its catch-up with the
journals never delays the daemon). Only when all are ready does the supervisor tell systemd
READY=1.

A child that dies is restarted with exponential back-off and a log line; one that cannot
come up at start makes `clob serve` exit non-zero. SIGTERM/SIGINT stops intake first (the
gateway), then lets the matchers finish and commit their current batch, then the snapshotter
(so its final checkpoint covers their last commits), all within `supervisor.stop_timeout_s`,
after which stragglers are killed.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon import logs
from daemon.child import SUPERVISOR_PID_ENV
from daemon.config import Config
from daemon.notify import notify, parse

log = logs.get("supervisor")


@dataclass
class Child:
    name: str  # "gateway", "matcher-<SYMBOL>" or "snapshotter": what the child puts in CHILD=
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float = 0.0  # monotonic time of the next restart, 0 when running
    started_at: float = field(default=0.0)


class StartupFailed(Exception):
    """A child could not come up at start; the message says which and why."""


class Supervisor:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        # Start (and stop) order: gateway, matchers, snapshotter. The last is always the snapshotter.
        self.children = [self._child("gateway", "gateway")] + [
            self._child(f"matcher-{i.symbol}", "matcher", "--symbol", i.symbol) for i in config.instruments
        ]
        self.children.append(self._child("snapshotter", "snapshotter"))
        self.stopping = False
        self._notify_path = config.run_path / "supervisor.notify"
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._last_watchdog = 0.0
        self._last_status = ""
        self._gateway_serving = False  # the gateway said SERVING=1: every matcher reachable
        self._children_path = config.children_path()
        self._children_written = ""

    def _child(self, name: str, module: str, *args: str) -> Child:
        argv = [sys.executable, "-m", module, *args]
        if self.config_path is not None:
            argv += ["--config", str(Path(self.config_path).resolve())]
        return Child(name, argv)

    # --- lifecycle --------------------------------------------------------------------

    def run(self) -> int:
        # What systemd's UMask=0027 gives the unit, also outside it (`make run`, a shell):
        # journals, checkpoints and sockets are never world-readable. Only ever tightened.
        os.umask(os.umask(0o027) | 0o027)
        self._prepare()
        try:
            started = time.monotonic()
            self._start_all()
            elapsed = time.monotonic() - started
            logs.log(log, "ready", children=len(self.children), startup_ms=round(elapsed * 1000))
            instruments = len(self.config.instruments)
            notify(f"READY=1\nSTATUS=serving {instruments} instruments\nMAINPID={os.getpid()}")
            self._serve()
            return 0
        except StartupFailed as exc:
            logs.log(log, "startup_failed", level=40, reason=str(exc))
            return 1
        finally:
            self._stop_all()
            self._cleanup()

    def _prepare(self) -> None:
        for directory in (self.config.data_path, self.config.run_path):
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._notify_path.unlink(missing_ok=True)
        self._notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify_sock.bind(str(self._notify_path))
        self._notify_sock.setblocking(False)
        self._selector.register(self._notify_sock, selectors.EVENT_READ, "notify")
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, "signal")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector via the wakeup fd
        logs.log(log, "starting", pid=os.getpid(), data_dir=self.config.data_dir, run_dir=self.config.run_dir)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            logs.log(log, "stop_requested", signal=signal.Signals(signum).name)

    def _start_all(self) -> None:
        deadline = time.monotonic() + self.config.supervisor.start_timeout_s
        gateway, matchers, snapshotter = self.children[0], self.children[1:-1], self.children[-1]
        for group in ([gateway], matchers, [snapshotter]):
            for child in group:
                self._spawn(child)
            self._wait_ready(group, deadline)
        # Ready children are not enough: the gateway must also have heard every matcher.
        while not self._gateway_serving:
            self._wait_ready([gateway], deadline)
            self._wait_events(0.05)
            if time.monotonic() > deadline:
                raise StartupFailed("the gateway never saw every matcher ready")

    def _wait_ready(self, group: list[Child], deadline: float) -> None:
        while not all(c.ready for c in group):
            if self.stopping:
                raise StartupFailed("stopped during start-up")
            for child in group:
                code = child.proc.poll() if child.proc else None
                if code is not None:
                    raise StartupFailed(f"{child.name} exited with code {code} during start-up")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = ", ".join(c.name for c in group if not c.ready)
                raise StartupFailed(f"not ready after {self.config.supervisor.start_timeout_s}s: {waiting}")
            self._wait_events(min(remaining, 0.2))

    def _serve(self) -> None:
        while not self.stopping:
            self._wait_events(0.2)
            self._reap_and_restart()
            self._send_watchdog()

    # --- children ---------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self._notify_path), SUPERVISOR_PID_ENV: str(os.getpid())}
        env.pop("WATCHDOG_USEC", None)  # the watchdog is the supervisor's, not the children's
        env.pop("WATCHDOG_PID", None)
        child.proc = subprocess.Popen(child.argv, env=env, close_fds=True, start_new_session=False)
        child.ready = False
        child.restart_at = 0.0
        child.started_at = time.monotonic()
        logs.log(log, "child_started", child=child.name, pid=child.proc.pid)
        self._write_children()

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.restart_at == 0.0:
                code = child.proc.poll()
                if code is not None:
                    self._schedule_restart(child, code, now)
            elif child.restart_at and now >= child.restart_at:
                child.restarts += 1
                logs.log(log, "child_restarting", child=child.name, restarts=child.restarts)
                self._spawn(child)
        status = self._status()
        if status != self._last_status:
            notify(f"STATUS={status}")
            self._last_status = status

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        sup = self.config.supervisor
        # A child that ran for a while before dying starts its back-off again from the bottom.
        if now - child.started_at > 4 * sup.restart_backoff_max_s:
            child.backoff = 0.0
        child.backoff = min(sup.restart_backoff_max_s, max(sup.restart_backoff_s, child.backoff * 2))
        child.restart_at = now + child.backoff
        child.ready = False
        self._write_children()
        logs.log(
            log, "child_exited", level=30, child=child.name, pid=child.proc.pid if child.proc else 0,
            code=code, restart_in_s=round(child.backoff, 2),
        )  # fmt: skip

    def _status(self) -> str:
        down = [c.name for c in self.children if not c.ready]
        return "serving" if not down else "degraded: waiting for " + ", ".join(down)

    def _stop_all(self) -> None:
        notify("STOPPING=1")
        deadline = time.monotonic() + self.config.supervisor.stop_timeout_s
        # Intake first: the gateway stops taking orders; then matchers commit and exit; then the
        # snapshotter writes its final checkpoints of what they committed.
        for group in (self.children[:1], self.children[1:-1], self.children[-1:]):
            for child in group:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            for child in group:
                self._wait_exit(child, deadline)
        logs.log(log, "stopped", restarts=sum(c.restarts for c in self.children))

    def _wait_exit(self, child: Child, deadline: float) -> None:
        if child.proc is None:
            return
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logs.log(log, "child_killed", level=30, child=child.name, pid=child.proc.pid)
            child.proc.kill()
            child.proc.wait()

    # --- events -----------------------------------------------------------------------

    def _wait_events(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.data == "signal":
                while True:
                    try:
                        if not os.read(self._wakeup_r, 512):
                            break
                    except BlockingIOError:
                        break
            else:
                self._read_notifications()

    def _read_notifications(self) -> None:
        while True:
            try:
                datagram = self._notify_sock.recv(4096)
            except BlockingIOError:
                return
            message = parse(datagram)
            child = next((c for c in self.children if c.name == message.get("CHILD")), None)
            if child is None:
                continue
            if message.get("SERVING") == "1":
                self._gateway_serving = True
            if message.get("READY") == "1" and not child.ready:
                child.ready = True
                child.backoff = child.backoff if child.restarts else 0.0
                pid = child.proc.pid if child.proc else 0
                logs.log(log, "child_ready", child=child.name, pid=pid, seq=message.get("SEQ", ""))
                self._write_children()

    def _write_children(self) -> None:
        """`<run_dir>/children.json` for `clob status`: rewritten (tmp + rename) on every change."""
        rows = [
            {
                "name": c.name,
                "pid": c.proc.pid if c.proc is not None and c.restart_at == 0.0 else 0,
                "restarts": c.restarts,
                "ready": c.ready,
            }
            for c in self.children
        ]
        text = json.dumps({"supervisor_pid": os.getpid(), "children": rows}, indent=1)
        if text == self._children_written:
            return
        tmp = self._children_path.with_name(self._children_path.name + ".tmp")
        try:
            tmp.write_text(text + "\n")
            tmp.replace(self._children_path)
        except OSError as exc:
            logs.log(log, "children_file_failed", level=30, error=str(exc))
            return
        self._children_written = text

    def _send_watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not all(c.ready for c in self.children):
            return  # an unhealthy daemon stops feeding the watchdog, and systemd restarts it
        now = time.monotonic()
        if now - self._last_watchdog >= int(usec) / 2e6:
            notify("WATCHDOG=1")
            self._last_watchdog = now

    def _cleanup(self) -> None:
        # Every child is gone: their ipc socket files are stale now, so don't leave them.
        for stale in self.config.run_path.glob("*.sock"):
            stale.unlink(missing_ok=True)
        self._children_path.unlink(missing_ok=True)
        signal.set_wakeup_fd(-1)
        self._selector.close()
        self._notify_sock.close()
        self._notify_path.unlink(missing_ok=True)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)


def serve(config: Config, config_path: str | None) -> int:
    return Supervisor(config, config_path).run()
