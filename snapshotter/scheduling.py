"""How the snapshotter shares the machine with the order path: its work in the background
(SCHED_IDLE), its commits in the foreground.

Following the journals and walking a whole book for a checkpoint can wait; a woken matcher
or gateway cannot. Under nice 10 a woken task may still wait for the scheduler to preempt
us; a SCHED_IDLE task gives way at once (measured under paced load with a CPU burn standing
in for checkpoints: ack p99 x1.11 niced, x0.95 under SCHED_IDLE). The price: on a CPU that
is never idle the shadows fall behind (they catch up when load drops; the journal, not the
checkpoints, is what is durable).

A commit is the exception. It writes the transaction's pages and flushes the disk that the
matchers' journals flush too, and under SCHED_IDLE every matcher wake-up suspends it part
way, for as long as no CPU is idle. Measured on the bench's grown book (about 240,000
orders, a checkpoint every 0.5 s: step 3 of bench/recovery.py run alone on the daemon a
full run leaves), committing at SCHED_IDLE: a checkpoint's commit took 2-3 ms median, and
at p90 3-4 ms on a calm VM but 7-10 ms whenever its CPUs were busy (4 runs of 7); in those
4, the orders sent in the 20 ms before a checkpoint ended were acked in over 4 ms 1.5-4.5x
as often as the other orders of the same windows. Committing under the normal policy
(still nice 10): p90 3-4 ms (3 runs), and those orders slow 0.2-1.2x as often as the rest
(7 runs). So each commit of the checkpoint store and of the order-history index runs
inside ``foreground``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from daemon.logs import log
from journal.lmdb_files import Committing

NICENESS = 10


def run_in_background(logger: logging.Logger) -> Committing:
    """Put this process in the background (SCHED_IDLE, else nice 10); what its commits are
    to run inside: ``foreground`` where it may come back for them, else nothing.

    Leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE that allows our nice value
    (systemd/clobd.service: ``LimitNICE=+10``); without either, commits stay in the
    background, as they did before.
    """
    os.nice(NICENESS)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or refused by a sandbox
        log(logger, "sched_idle_unavailable", logging.WARNING, error=str(exc), niceness=NICENESS)
        return contextlib.nullcontext
    log(logger, "sched_idle", policy="SCHED_IDLE")
    try:
        with foreground():
            pass
    except OSError as exc:
        log(logger, "foreground_commits_unavailable", logging.WARNING, error=str(exc),
            hint="allow nice 10: LimitNICE=+10 in the unit, or CAP_SYS_NICE")  # fmt: skip
        return contextlib.nullcontext
    return foreground


@contextlib.contextmanager
def foreground() -> Iterator[None]:
    """Run the block under the normal policy (at our nice value), then SCHED_IDLE again."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        yield
    finally:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
