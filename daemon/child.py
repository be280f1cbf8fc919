"""What every child process of `clob serve` does around its own work: one exclusive lock
file, a bounded end for its ZeroMQ context, and a `__main__` that loads the config, sets up
logs and turns failures into exit codes with one log line each."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from daemon import config as daemon_config
from daemon import logs

EXIT_CANNOT_START = 1
SUPERVISOR_PID_ENV = "CLOBD_SUPERVISOR_PID"  # set by the supervisor for the children it starts
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class LockHeld(Exception):
    """Another live process holds the lock; the message names the file and why."""


def exclusive_lock(path: Path) -> int:
    """Open (creating) `path` and hold a non-blocking exclusive flock on it, as a file
    descriptor kept for the process's life. The kernel releases it however the process
    dies, so a SIGKILLed holder never blocks its restart. OSError if the file can't be
    opened; LockHeld if someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise LockHeld(f"{path} ({exc.strerror})") from exc
    return fd


def die_with_parent() -> None:
    """Have the kernel send us SIGTERM when the process that started us dies.

    A SIGKILLed supervisor cannot stop its children, and orphans would keep the ports and
    journal locks that the next `clob serve` needs (outside systemd nobody else reaps them).
    SIGTERM, not SIGKILL: each child's usual clean stop (commit the current batch, final
    checkpoint) still runs. If the supervisor died before this call, we are already an
    orphan: the prctl would wait for the wrong parent, so stop now instead.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not Linux, or refused: the supervisor's own stop still covers a clean exit
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if expected is not None and expected != str(os.getppid()):
        os.kill(os.getpid(), signal.SIGTERM)


def end_context(ctx: zmq.Context[Any], linger_ms: int | None, within_s: float) -> bool:
    """Close the sockets still open in `ctx` (each with `linger_ms`, or None: its own
    linger) and terminate it; False if that took longer than `within_s`, and we stopped
    waiting.

    libzmq 4.3.5 can block in zmq_ctx_term for good after a ROUTER answered a peer that was
    closing its connection, whatever the lingers (seen here: about 1 close in 25 in a
    loop that answers a logout). The caller is on its way out and everything it acked is
    committed, so a stuck term must not turn a clean stop into a SIGKILL at the
    supervisor's deadline. The term runs on a daemon thread, which process exit ends.
    """
    done = threading.Event()

    def destroy() -> None:
        ctx.destroy(linger=linger_ms)
        done.set()

    threading.Thread(target=destroy, name="zmq-context-end", daemon=True).start()
    return done.wait(within_s)


def main(logger_name: str, config_path: str | None, run: Callable[[daemon_config.Config], int]) -> int:
    """Load the config, set up logs and `run`; a bad config or a bug is one log line and
    EXIT_CANNOT_START (the supervisor logs the exit and restarts the child)."""
    die_with_parent()
    logger = logs.get(logger_name)
    try:
        config = daemon_config.load(config_path)
    except daemon_config.ConfigError as exc:
        logs.setup()
        logs.log(logger, "cannot_start", logging.ERROR, reason=str(exc))
        return EXIT_CANNOT_START
    logs.setup(config.log_level, config.log_format)
    try:
        return run(config)
    except Exception:  # a bug: say so in one line and let the supervisor restart us
        logger.exception("crashed")
        return EXIT_CANNOT_START
