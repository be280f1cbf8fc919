"""The crash campaign: SIGKILL parts of a loaded daemon at random moments, then audit.

One `clob serve` over one data directory, a steady load of real clients (tests/faults/
ledger.py) trading on both instruments, and in every round one kill at a random moment:

- `gateway`, `matcher` (one of them), `snapshotter`: that child alone; the supervisor
  restarts it and the load rides through the outage, resending what was not acked;
- `supervisor`: the supervisor alone; its children stop with it (they die with their
  parent) and the campaign restarts `clob serve`, as systemd's Restart=on-failure would;
- `all`: the whole process tree at once, like a power cut to the processes; restart.

Each round waits until acks flow again before the next kill. At the end, with the daemon
calm: everything unacked is resent (the client-id index answers what was journaled), then
the ledger is audited against the journals (contiguous sequences, every ack at its seq with
its events, nothing journaled that was never sent, nothing twice) and the live daemon (a
sample of acked orders: resting with the right quantity, or gone), `clob journal verify`
passes, and `clob replay --snapshot none --compare-live` gives the live state hash.

`python -m tests.faults.campaign --rounds 30` (what `make faults` runs) prints the summary
table; tests/faults/test_crash_campaign.py runs a short version in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journal import Journal
from tests.e2e.conftest import ROOT, Daemon
from tests.faults.ledger import SYMBOLS, Ledger, Load, audit_journals, audit_live

KINDS = ("gateway", "matcher", "snapshotter", "supervisor", "all")
TIMEOUT = 1.0  # per request: a kill shows up as a timeout
PROGRESS_ACKS = 20  # acks that must arrive between kills: the daemon is serving again
PROGRESS_TIMEOUT_S = 30.0
# Checkpoints every few hundred records, so restarts recover from a checkpoint plus the
# journal's tail, and some kills land while the snapshotter writes one.
CHECKPOINT_OFTEN = """
[snapshotter]
checkpoint_interval_s = 0.3
checkpoint_every_records = 300
poll_interval_s = 0.02
"""


@dataclass
class Summary:
    seed: int
    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    acked: int = 0
    cancels_acked: int = 0
    resent: int = 0
    resent_duplicates: int = 0
    busy: int = 0
    timeouts: int = 0
    acks_verified: int = 0  # against the journals: all of them
    live_verified: int = 0  # against the live daemon: a sample
    journal_records: int = 0
    losses: int = 0  # an audit failure raises before these could be anything but 0
    duplicates: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("seed", self.seed),
            ("rounds", self.rounds),
            *((f"kills: {kind}", self.kills[kind]) for kind in KINDS),
            ("orders sent", self.sent),
            ("orders acked", self.acked),
            ("cancels acked", self.cancels_acked),
            ("acks verified against the journals", self.acks_verified),
            ("orders verified against the live book", self.live_verified),
            ("resends (timeout or BUSY)", self.resent),
            ("  of which already journaled", self.resent_duplicates),
            ("BUSY rejects", self.busy),
            ("timeouts", self.timeouts),
            ("journal records", self.journal_records),
            ("losses", self.losses),
            ("duplicates", self.duplicates),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run(workdir: Path, rounds: int, seed: int, kinds: tuple[str, ...] = KINDS) -> Summary:
    """`rounds` kills: each kind once (in a random order) first, then random kinds."""
    rng = random.Random(seed)
    first = list(kinds)
    rng.shuffle(first)
    schedule = (first + [rng.choice(kinds) for _ in range(max(0, rounds - len(kinds)))])[:rounds]
    summary = Summary(seed)
    ledger = Ledger()
    daemon = Daemon(workdir, CHECKPOINT_OFTEN)
    started = time.monotonic()
    daemon.start()
    load = Load(daemon.endpoint, ledger, random.Random(rng.random()), "o", TIMEOUT)
    try:
        load.start()
        for kind in schedule:
            _wait_for_progress(daemon, load)
            time.sleep(rng.uniform(0.1, 1.0))
            _kill(daemon, kind, rng)
            summary.kills[kind] += 1
            summary.rounds += 1
        _wait_for_progress(daemon, load)
        load.join()
        load.settle()
        journals = _journals(daemon)
        summary.acks_verified = audit_journals(journals, ledger)
        summary.live_verified = audit_live(daemon.endpoint, journals, ledger, rng, sample=150)
        _audit_cli(daemon)
        summary.journal_records = sum(map(len, journals.values()))
        assert daemon.stop() == 0, daemon.log()
    finally:
        load.stop.set()
        if daemon.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.proc.pid, signal.SIGKILL)  # orphans too, should an audit fail
    summary.sent, summary.acked = len(ledger.sent), len(ledger.acked)
    summary.cancels_acked = len(ledger.cancel_acks)
    summary.resent, summary.resent_duplicates = ledger.resent, ledger.resent_duplicates
    summary.busy, summary.timeouts = ledger.busy, ledger.timeouts
    summary.seconds = time.monotonic() - started
    return summary


def children(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """The supervisor's children table (<run_dir>/children.json): name -> row."""
    try:
        doc = json.loads((daemon.workdir / "run" / "children.json").read_text())
    except (OSError, ValueError):
        return {}
    return {row["name"]: row for row in doc["children"]}


def _kill(daemon: Daemon, kind: str, rng: random.Random) -> None:
    assert daemon.proc is not None
    if kind == "all":
        daemon.kill_all()
        daemon.start()
    elif kind == "supervisor":
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        _wait_for_orphans(daemon)
        daemon.start()
    else:
        name = f"matcher-{rng.choice(SYMBOLS)}" if kind == "matcher" else kind
        pid = children(daemon)[name]["pid"]
        os.kill(pid, signal.SIGKILL)
        _wait_for_restart(daemon, name, pid)


def _wait_for_orphans(daemon: Daemon, timeout: float = 20.0) -> None:
    """The children of a SIGKILLed supervisor stop by themselves (PR_SET_PDEATHSIG)."""
    assert daemon.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-g", str(daemon.proc.pid)], capture_output=True, text=True)
        if not left.stdout.split():
            with contextlib.suppress(OSError):
                daemon._notify.close()
            return
        time.sleep(0.05)
    raise AssertionError(f"children outlived their supervisor by {timeout}s:\n{daemon.log()}")


def _wait_for_restart(daemon: Daemon, name: str, old_pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = children(daemon).get(name, {})
        if row.get("pid") not in (None, old_pid) and row.get("ready"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} (pid {old_pid}) was not restarted within {timeout}s:\n{daemon.log()}")


def _wait_for_progress(daemon: Daemon, load: Load) -> None:
    before = load.acks()
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while load.acks() < before + PROGRESS_ACKS:
        if load.error is not None:
            load.join()  # raises it
        assert time.monotonic() < deadline, f"no acks for {PROGRESS_TIMEOUT_S}s:\n{daemon.log()}"
        time.sleep(0.02)


def _journals(daemon: Daemon) -> dict[str, list[Any]]:
    out = {}
    for symbol in SYMBOLS:  # read-only readers beside the live writer: LMDB's MVCC
        with Journal(daemon.data_dir / "journal" / f"{symbol}.lmdb", readonly=True) as journal:
            out[symbol] = list(journal.read())
    return out


def clob(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(daemon.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _audit_cli(daemon: Daemon) -> None:
    verify = clob(daemon, "journal", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for symbol in SYMBOLS:
        out = clob(daemon, "replay", symbol, "--snapshot", "none", "--compare-live", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        live = json.loads(out.stdout)["live"]
        assert live["identical"] and live["seq"] > 0, live


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    args = parser.parse_args(argv)
    seed = random.randrange(2**32) if args.seed is None else args.seed
    print(f"crash campaign: {args.rounds} rounds, seed {seed} (rerun with --seed {seed})", flush=True)
    with tempfile.TemporaryDirectory(prefix="clobd-faults-") as tmp:
        summary = run(Path(tmp), args.rounds, seed)
    print(summary.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
