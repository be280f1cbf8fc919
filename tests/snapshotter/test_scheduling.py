"""snapshotter/scheduling.py: work in the background, commits in the foreground.

Real scheduler calls, each in a thread or process of its own so the suite keeps its policy.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from snapshotter.scheduling import foreground

ROOT = Path(__file__).resolve().parents[2]


def _in_idle_thread(body: Callable[[], object]) -> dict[str, object]:
    """Run `body` in a new SCHED_IDLE thread; its policy inside and after, or what it raised."""
    seen: dict[str, object] = {}

    def run() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        try:
            seen["inside"] = body()
        except Exception as exc:  # handed to the test to look at
            seen["raised"] = exc
        seen["after"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(seen.get("raised"), PermissionError):
        pytest.skip("this user may not leave SCHED_IDLE at nice 0 (no CAP_SYS_NICE, RLIMIT_NICE)")
    return seen


def test_foreground_runs_the_block_under_the_normal_policy_then_idle_again() -> None:
    def inside() -> int:
        with foreground():
            return os.sched_getscheduler(0)

    assert _in_idle_thread(inside) == {"inside": os.SCHED_OTHER, "after": os.SCHED_IDLE}


def test_foreground_goes_back_to_idle_when_the_block_raises() -> None:
    def failing() -> None:
        with foreground():
            raise ValueError("a failed commit")

    seen = _in_idle_thread(failing)
    assert isinstance(seen["raised"], ValueError) and seen["after"] == os.SCHED_IDLE


# run_in_background in a fresh interpreter: it renices and re-schedules its process.
_BACKGROUND = """
import os, resource, sys
from daemon import logs
from snapshotter.scheduling import foreground, run_in_background
if sys.argv[1] == "drop":  # RLIMIT_NICE 0, and no CAP_SYS_NICE: nothing allows nice 10
    resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
    if os.getuid() == 0:
        os.setuid(65534)  # nobody
logs.setup()
committing = run_in_background(logs.get("snapshotter"))
print(committing is foreground, os.sched_getscheduler(0) == os.SCHED_IDLE, os.getpriority(os.PRIO_PROCESS, 0))
"""


def _background(drop: bool) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", _BACKGROUND, "drop" if drop else "keep"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_commits_come_to_the_foreground_where_the_process_may_leave_idle() -> None:
    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[1] < 10:
        pytest.skip("this user may not leave SCHED_IDLE at nice 10 (no CAP_SYS_NICE, RLIMIT_NICE < 10)")
    out, err = _background(drop=False)
    assert out == "True True 10" and "foreground_commits_unavailable" not in err


def test_commits_stay_in_the_background_where_nothing_allows_it() -> None:
    out, err = _background(drop=True)
    assert out == "False True 10"
    assert "event=foreground_commits_unavailable" in err and "LimitNICE=+10" in err
