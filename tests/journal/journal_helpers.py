"""Sample records for the journal tests, and the code their child processes run.

The crash, concurrent-reader and write-failure tests need real separate processes (SIGKILL,
a second LMDB opener, a per-process file-size limit), so this file doubles as a script:
``python -m tests.journal.journal_helpers <mode> ...``; ``spawn`` starts it from the repo root.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    Cancelled,
    CancelReason,
    Command,
    Event,
    Filled,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Trade,
)
from journal import Journal, JournalWriteError, Record

REPO = Path(__file__).resolve().parents[2]
TS0 = 1_700_000_000_000_000_000


# --- sample data ----------------------------------------------------------------------------


def every_command(seq: int = 1, ts: int = TS0) -> list[Command]:
    """One of each command type, non-default values wherever possible."""
    return [
        NewOrder(
            seq=seq,
            ts=ts,
            account="acct-é",  # non-ASCII on purpose
            client_order_id="cl-1",
            side=Side.SELL,
            qty=2**62,
            price=123_456_789,
            order_type=OrderType.LIMIT,
            tif=TimeInForce.FOK,
            post_only=True,
            stp=SelfTradePrevention.DECREMENT_AND_CANCEL,
        ),
        Cancel(seq=seq, ts=ts, account="a", order_id=0, orig_client_order_id="cl-1"),
        Amend(seq=seq, ts=ts, account="a", order_id=42, price=99, qty=7),
        MassCancel(seq=seq, ts=ts, account="a"),
    ]


def every_event() -> list[Event]:
    """One of each event type."""
    return [
        Accepted(7, "a", "cl-1", Side.BUY, 100, 5, OrderType.MARKET, TimeInForce.IOC),
        Rejected("a", "cl-2", RejectReason.STORAGE_FAILURE, "disk full", order_id=3),
        Trade(1, 100, 2, Side.BUY, 6, "m", 0, 7, "a", 3),
        Cancelled(7, "a", "cl-1", 3, CancelReason.SELF_TRADE),
        Amended(6, "m", "cl-0", 101, 9, 4, priority_kept=False),
        Filled(6, "m", "cl-0", 9),
    ]


def sample_record(seq: int) -> Record:
    """A deterministic record per seq, so a reader can check content, not just presence."""
    ts = TS0 + seq
    account = f"acct-{seq % 7}"
    kind = seq % 4
    if kind == 0:
        qty, price = 10 + seq % 5, 1000 + seq % 9
        command: Command = NewOrder(seq, ts, account, f"c{seq}", Side.BUY, qty, price)
        events: list[Event] = [
            Accepted(seq, account, f"c{seq}", Side.BUY, price, qty, OrderType.LIMIT, TimeInForce.GTC)
        ]
    elif kind == 1:
        command = NewOrder(seq, ts, account, f"c{seq}", Side.SELL, 3, 999, tif=TimeInForce.IOC)
        events = [
            Accepted(seq, account, f"c{seq}", Side.SELL, 999, 3, OrderType.LIMIT, TimeInForce.IOC),
            Trade(seq, 1000, 3, Side.SELL, seq - 1, "acct-x", 7, seq, account, 0),
            Filled(seq, account, f"c{seq}", 3),
        ]
    elif kind == 2:
        command = Cancel(seq, ts, account, order_id=seq - 2)
        events = [Cancelled(seq - 2, account, f"c{seq - 2}", 5, CancelReason.USER)]
    else:
        command = Amend(seq, ts, account, order_id=seq - 3, qty=2)
        events = [Rejected(account, "", RejectReason.UNKNOWN_ORDER, "no such order", seq - 3)]
    return Record(seq=seq, ts=ts, command=command, events=events)


def batch(first: int, n: int) -> list[Record]:
    return [sample_record(seq) for seq in range(first, first + n)]


# --- child processes ------------------------------------------------------------------------


def spawn(*args: object) -> subprocess.Popen[str]:
    """Start ``python -m tests.journal.journal_helpers *args``, stdout/stderr piped."""
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.journal.journal_helpers", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _writer(path: str, batches: str, batch_size: str, map_size: str) -> None:
    """Append batches forever-ish; after each commit print the last committed seq."""
    size = int(batch_size)
    with Journal.open(path, map_size=int(map_size)) as journal:
        print("ready", journal.last_seq(), flush=True)
        for _ in range(int(batches)):
            journal.append(batch(journal.last_seq() + 1, size))
            # Printed only after append returned: every printed seq was acked as durable.
            print(journal.last_seq(), flush=True)


def _reader(path: str, target: str, map_size: str, timeout: str) -> None:
    """Tail the journal read-only until ``target``; report what was seen as JSON."""
    deadline = time.monotonic() + float(timeout)
    next_seq, observed = 1, []
    with Journal.open(path, readonly=True, map_size=int(map_size)) as journal:
        print("ready", flush=True)
        while next_seq <= int(target):
            if time.monotonic() > deadline:
                sys.exit(f"reader timed out at seq {next_seq}")
            observed.append(journal.last_seq())
            for record in journal.read(next_seq):
                if record != sample_record(next_seq):
                    sys.exit(f"reader: wrong record at {next_seq}: {record}")
                next_seq += 1
    print(json.dumps({"next_seq": next_seq, "observed_last_seqs": observed}), flush=True)


def _fsize(path: str) -> None:
    """Make a real write fail (EFBIG via RLIMIT_FSIZE), then retry the same seq after lifting it."""
    result: dict[str, object] = {}
    with Journal.open(path, map_size=1 << 20) as journal:
        journal.append(batch(1, 10))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of EFBIG
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.stat(path).st_size, hard))
        try:
            journal.append(batch(11, 2000))  # needs the file to grow
            result["error"] = None
        except JournalWriteError as exc:
            result["error"] = str(exc)
        result["after_failure"] = [journal.last_seq(), journal.count()]
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        journal.append(batch(11, 2000))
        result["after_retry"] = [journal.last_seq(), journal.count()]
        result["content_ok"] = list(journal.read()) == batch(1, 2010)
    print(json.dumps(result), flush=True)


def _append(path: str, first: str, n: str) -> None:
    """A second writer process: append ``n`` records from ``first``."""
    with Journal.open(path) as journal:
        journal.append(batch(int(first), int(n)))
        print(journal.last_seq(), flush=True)


_MODES = {"writer": _writer, "reader": _reader, "fsize": _fsize, "append": _append}

if __name__ == "__main__":
    _MODES[sys.argv[1]](*sys.argv[2:])
