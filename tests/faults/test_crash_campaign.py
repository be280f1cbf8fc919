"""The crash campaign's short version (every process kind killed once), and its regressions."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tests.faults.campaign import KINDS, Summary, children, run
from tests.faults.conftest import Daemon


def test_every_kind_of_kill_loses_nothing(tmp_path: Path) -> None:
    """Each kind killed twice (the first five rounds cover every kind, then at random)."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(2**32)))
    print(f"\ncrash campaign seed={seed} (rerun with CRASH_SEED={seed})")
    summary: Summary = run(tmp_path, rounds=2 * len(KINDS), seed=seed)
    print(summary.table())
    assert summary.rounds == 2 * len(KINDS) and all(summary.kills[kind] >= 1 for kind in KINDS)
    assert summary.acked > len(KINDS) * 20 and summary.acks_verified >= summary.acked
    assert summary.live_verified > 0


def test_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """Regression: a SIGKILLed supervisor left its children running, holding the ports and
    journal locks, so the next `clob serve` could not start."""
    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        assert daemon.proc is not None
        kids = [row["pid"] for row in children(daemon).values()]
        assert len(kids) == 4 and all(map(_alive, kids)), kids  # gateway, 2 matchers, snapshotter
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in kids):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in kids), daemon.log()
        daemon._notify.close()
        daemon.start()  # the ports and locks are free again
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.proc.pid, signal.SIGKILL)  # orphans too, should the test fail


def _alive(pid: int) -> bool:
    # Zombies count as gone: they hold no socket or lock any more.
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return bool(state.strip()) and not state.strip().startswith("Z")
