"""Counters for what the gateway refuses or drops, logged as one summary line per interval.

A reject storm (a client hammering a dead instrument, a fuzzer) must not become a log
storm: the order path only counts, and `maybe_log` writes at most one line per interval.
"""

from __future__ import annotations

import logging
import time

from daemon import logs
from engine.messages import RejectReason


class Tally:
    __slots__ = ("_due", "_interval", "_logger", "drops", "evicted", "gone", "rejects")

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self._logger = logger
        self._interval = interval_s
        self._due = time.monotonic() + interval_s
        self.rejects: dict[int, int] = {}  # code -> count since the last summary
        self.drops = 0  # replies not sent because the client's queue was full
        self.gone = 0  # replies for connections that no longer exist
        self.evicted = 0  # sessions dropped for a new logon at gateway.max_sessions

    def reject(self, code: int) -> None:
        self.rejects[code] = self.rejects.get(code, 0) + 1

    def maybe_log(self, now: float) -> None:
        if now < self._due:
            return
        self._due = now + self._interval
        if self.rejects:
            counts = ",".join(f"{_name(c)}:{n}" for c, n in sorted(self.rejects.items()))
            logs.log(self._logger, "rejects", total=sum(self.rejects.values()), counts=counts)
            self.rejects.clear()
        if self.drops or self.gone:
            # A full queue means a client that stops reading; a vanished peer is routine.
            level = logging.WARNING if self.drops else logging.INFO
            logs.log(self._logger, "client_replies_dropped", level=level,
                     queue_full=self.drops, no_such_peer=self.gone)
            self.drops = self.gone = 0
        if self.evicted:
            logs.log(self._logger, "sessions_evicted", level=logging.WARNING, count=self.evicted,
                     reason="gateway.max_sessions reached, least recently active dropped")  # fmt: skip
            self.evicted = 0


class Throttle:
    """At most one log line per interval for a failure that may repeat per message; the
    line carries how many were not logged since."""

    __slots__ = ("_interval", "_next", "suppressed")

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._next = 0.0
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval
        return True


def _name(code: int) -> str:
    try:
        return RejectReason(code).name
    except ValueError:
        return str(code)
