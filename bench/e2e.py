"""End-to-end durable throughput and latency of the real daemon.

    python bench/e2e.py [--quick] [--keep]

Load clients (their own processes, bench/e2e_load.py) send over loopback TCP through the
gateway to the matchers, which ack only after a synced LMDB commit. Each scenario gets a
fresh `clob serve` over a fresh data directory (bench/e2e_daemon.py). The machine's own
fsync latency is measured in the same run on the same filesystem, because the latency
target is relative to it. CPU time of every process over each load window says which hop
is the bottleneck when a target is missed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

if not __package__:  # run as `python bench/e2e.py`: import `bench` from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.e2e_daemon import BenchDaemon, DaemonError, cpu_seconds, machine_busy_seconds
from bench.e2e_load import LoadResult, LoadSpec, run_client
from engine.messages import RejectReason

TARGET_SINGLE = 30_000  # durable acked orders/s, one order per message (scenario 1)
TARGET_BATCH = 100_000  # with OrderBatch messages (scenario 2)
TARGET_P99_SLACK_MS = 2.0  # scenario-4 ack p99 <= fsync p99 + this
SYMBOLS = ("BTCUSDT", "ETHUSDT")
START_TIMEOUT_S = 60.0
Syncs: TypeAlias = "dict[str, array[int]]"  # "fsync"/"fdatasync" -> ns per sample


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    instruments: int  # one client process per instrument
    per_message: int  # orders per message
    window: int  # orders in flight per client
    duration_s: float
    max_rate: float  # orders/s per client the pre-encoded supply must cover
    rate: float = 0.0  # paced orders/s per client; 0: as fast as the window allows

    def spec(self, endpoint: str, symbol: str, index: int) -> LoadSpec:
        return LoadSpec(
            endpoint=endpoint, symbol=symbol, name=f"s{self.key}c{index}", per_message=self.per_message,
            window=self.window, max_orders=int(self.duration_s * self.max_rate), duration_s=self.duration_s,
            rate=self.rate,
        )  # fmt: skip


def scenarios(quick: bool) -> list[Scenario]:
    # Windows chosen below the gateway's in-flight bound (20,000 per matcher) and the
    # client-side HWM, so BUSY rejects would mean a daemon problem, not an oversized window.
    # max_rate only sizes the pre-encoded orders (a cap well above what 2 cores can ack).
    d = 2.5 if quick else 8.0
    return [
        Scenario("1", "1 instr, 1 order/msg, window 512", 1, 1, 512, d, 120_000),
        Scenario("2", "1 instr, batch 128/msg, 8 in flight", 1, 128, 1024, d, 220_000),
        Scenario("3a", "2 instr, 1 order/msg, window 512 each", 2, 1, 512, d, 80_000),
        Scenario("3b", "2 instr, batch 128/msg, 8 in flight each", 2, 128, 1024, d, 150_000),
        Scenario("4", "1 instr, paced 1,000 orders/s, 1/msg", 1, 1, 1, 2.0 if quick else 5.0, 1_000, 1_000.0),
    ]


@dataclass
class Outcome:
    scenario: Scenario
    clients: list[LoadResult] = field(default_factory=list)
    latencies: array[int] = field(default_factory=lambda: array("q"))
    cpu: dict[str, float] = field(default_factory=dict)  # process -> % of one core
    machine_pct: float = 0.0  # all cores together (200% = a 2-core machine fully busy)
    duration_s: float = 0.0  # first send to last reply
    problems: list[str] = field(default_factory=list)
    daemon_log: list[str] = field(default_factory=list)
    matchers: dict[str, dict[str, int]] = field(default_factory=dict)  # as each logged at stop
    journaled: dict[str, int] = field(default_factory=dict)  # symbol -> records on disk

    def acked_of(self, symbol: str) -> int:
        return sum(c.acked for c in self.clients if c.symbol == symbol)

    def count(self, what: str) -> int:
        return sum(getattr(c, what) for c in self.clients)

    @property
    def rejected(self) -> int:
        return self.count("engine_refused") + sum(sum(c.rejects.values()) for c in self.clients)

    @property
    def acked_per_s(self) -> float:
        return self.count("acked") / self.duration_s if self.duration_s else 0.0


# --- running a scenario ------------------------------------------------------------------


def run_scenario(sc: Scenario, root: Path) -> Outcome:
    out = Outcome(sc)
    print(f"scenario {sc.key}: {sc.title} ...", file=sys.stderr, flush=True)
    daemon = BenchDaemon(root / f"scenario-{sc.key}", list(SYMBOLS[: sc.instruments]))
    try:
        daemon.start(START_TIMEOUT_S)
        _drive(sc, daemon, out)
    except (DaemonError, RuntimeError, queue.Empty) as exc:
        out.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        if daemon.proc is not None:
            code = daemon.stop()
            if code != 0:
                out.problems.append(f"daemon exited with status {code} on SIGTERM")
        out.daemon_log = daemon.log_problems()
    _check_journals(daemon, out)
    return out


def _check_journals(daemon: BenchDaemon, out: Outcome) -> None:
    """Every ack must be a record on disk: count both, from the files, after the stop."""
    if not out.clients:
        return  # the daemon never served: the start-up problem is already recorded
    out.matchers = daemon.matcher_stats()
    try:
        out.journaled = daemon.journal_records()
    except Exception as exc:  # a missing or unreadable journal is a finding, not a crash
        out.problems.append(f"cannot read the journals: {exc}")
        return
    for symbol, records in out.journaled.items():
        acked = out.acked_of(symbol)
        if records < acked:
            out.problems.append(f"{symbol}: DURABILITY: {acked:,} acks but only {records:,} journal records")
        elif records > acked:  # durable but never acked: replies lost on the way (a crash?)
            out.problems.append(f"{symbol}: {records - acked:,} journaled orders were never acked")


def _drive(sc: Scenario, daemon: BenchDaemon, out: Outcome) -> None:
    """Start the clients, release them together, and time the daemon's processes meanwhile."""
    ctx = multiprocessing.get_context("spawn")  # no inherited zmq or interpreter state
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    specs = [sc.spec(daemon.endpoint, sym, i) for i, sym in enumerate(daemon.symbols)]
    procs = [ctx.Process(target=run_client, args=(s, ready, go, results), name=s.name) for s in specs]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)  # encoding the orders takes a few seconds at full size
        window = _CpuWindow(daemon.processes())
        go.set()
        out.clients = [results.get(timeout=sc.duration_s + 60) for _ in procs]
        out.cpu, out.machine_pct = window.close()
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    _collect(out, window.wall_s)


class _CpuWindow:
    """CPU time of the daemon's processes and of the whole machine over the load window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.busy0, self.total0 = machine_busy_seconds()
        self.wall0 = time.perf_counter()
        self.wall_s = 0.0

    def close(self) -> tuple[dict[str, float], float]:
        """(process -> % of one core, machine % with 100 per core)."""
        self.wall_s = time.perf_counter() - self.wall0
        busy1, total1 = machine_busy_seconds()
        # A process that died meanwhile (and was restarted under another pid) reads as nan.
        cpu = {
            name: 100 * (cpu_seconds(pid) - self.cpu0[name]) / self.wall_s if _alive(pid) else math.nan
            for name, pid in self.pids.items()
        }
        machine = 100 * (os.cpu_count() or 1) * (busy1 - self.busy0) / max(total1 - self.total0, 1e-9)
        return cpu, machine


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _collect(out: Outcome, wall: float) -> None:
    for c in out.clients:
        out.latencies.frombytes(c.latencies_ns)
        out.cpu[f"client {c.name}"] = 100 * c.cpu_s / wall
        if c.error:
            out.problems.append(f"client {c.name}: {c.error}")
        if c.unanswered:
            out.problems.append(f"client {c.name}: {c.unanswered} orders never answered")
    started = [c.first_send_ns for c in out.clients if c.first_send_ns]
    ended = [c.last_reply_ns for c in out.clients if c.last_reply_ns]
    if started and ended:
        out.duration_s = (max(ended) - min(started)) / 1e9


# --- fsync --------------------------------------------------------------------------------


def measure_sync(directory: Path, samples: int, sync: str) -> array[int]:
    """ns per small append + `os.fsync`/`os.fdatasync`, in `directory` (the data dirs' fs)."""
    call = os.fsync if sync == "fsync" else os.fdatasync
    path = directory / f"{sync}-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = array("q")
    record = b"x" * 64  # about one journal record
    try:
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            os.write(fd, record)
            call(fd)
            out.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return out


# --- report -------------------------------------------------------------------------------


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile in ns (nan for no samples)."""
    if not sorted_ns:
        return float("nan")
    return float(sorted_ns[min(len(sorted_ns) - 1, int(q / 100 * len(sorted_ns)))])


def fmt_ns(ns: float) -> str:
    if ns != ns:
        return "n/a"
    return f"{ns / 1e3:,.0f} µs" if ns < 1e6 else f"{ns / 1e6:,.2f} ms"


def pcts(samples: Sequence[int]) -> tuple[float, float, float]:
    s = sorted(samples)
    return percentile(s, 50), percentile(s, 99), percentile(s, 99.9)


def table(head: Sequence[str], rows: list[Sequence[str]], text_columns: int = 1) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return " | ".join(c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)])


def results_table(outcomes: list[Outcome], syncs: Syncs) -> str:
    head = ("scenario", "clients", "acked/s", "p50", "p99", "p99.9", "sent", "acked", "rejected", "duration")
    rows: list[Sequence[str]] = []
    for o in outcomes:
        p50, p99, p999 = pcts(o.latencies)
        rows.append((
            f"{o.scenario.key}. {o.scenario.title}", str(len(o.clients)), f"{o.acked_per_s:,.0f}",
            fmt_ns(p50), fmt_ns(p99), fmt_ns(p999), f"{o.count('sent'):,}", f"{o.count('acked'):,}",
            f"{o.rejected:,}", f"{o.duration_s:.2f} s",
        ))  # fmt: skip
    for name, samples in syncs.items():
        p50, p99, p999 = pcts(samples)
        rows.append((f"5. {name} of a 64 B append (same fs)", "", "", fmt_ns(p50), fmt_ns(p99),
                     fmt_ns(p999), f"{len(samples):,}", "", "", ""))  # fmt: skip
    return table(head, rows)


def cpu_table(outcomes: list[Outcome]) -> str:
    names = list(dict.fromkeys(n for o in outcomes for n in o.cpu if not n.startswith("client")))
    head = ("scenario", *names, "clients (each)", "machine, all cores")
    rows: list[Sequence[str]] = []
    for o in outcomes:
        clients = [f"{v:.0f}" for n, v in o.cpu.items() if n.startswith("client")]
        cells = [_pct(o.cpu.get(n)) for n in names]
        rows.append((o.scenario.key, *cells, " + ".join(clients) or "-", f"{o.machine_pct:.0f}"))
    return table(head, rows)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return "died" if math.isnan(value) else f"{value:.0f}"


def commit_lines(outcomes: list[Outcome]) -> list[str]:
    """Group commits per matcher: the orders each synced commit carried, and the check that
    the journal on disk holds exactly the acked orders."""
    out = []
    for o in outcomes:
        for symbol, stats in o.matchers.items():
            commits, commands = stats.get("batches", 0), stats.get("commands", 0)
            per_s = commits / o.duration_s if o.duration_s else 0.0
            records = o.journaled.get(symbol)
            check = "= acked" if records == o.acked_of(symbol) else f"!= {o.acked_of(symbol):,} acked"
            out.append(
                f"{o.scenario.key:>3} {symbol}: {commits:,} commits ({per_s:,.0f}/s), "
                f"{commands / max(commits, 1):,.1f} orders/commit; journal {records:,} records {check}"
            )
    return out


def timeline_lines(outcomes: list[Outcome]) -> list[str]:
    """Acks in each second of the run and the longest silence between replies: a rate that
    sinks as the book grows, or a long silence, points at a stall rather than a steady cost."""
    out = []
    for o in outcomes:
        per_second = [
            sum(col) for col in itertools.zip_longest(*(c.acks_per_second for c in o.clients), fillvalue=0)
        ]
        gap = max((c.max_gap_ns for c in o.clients), default=0)
        rates = " ".join(f"{n / 1000:.0f}k" if n >= 1000 else str(n) for n in per_second)
        out.append(
            f"{o.scenario.key:>3}: acks per second [{rates}]; longest silence between replies {fmt_ns(gap)}"
        )
    return out


def target_lines(by_key: dict[str, Outcome], syncs: Syncs) -> list[str]:
    out = []
    throughput = (("1", TARGET_SINGLE, "one order per message"), ("2", TARGET_BATCH, "batch messages"))
    for key, target, what in throughput:
        o = by_key.get(key)
        rate = o.acked_per_s if o else 0.0
        verdict = "MET" if o and not o.problems and rate >= target else "MISSED"
        out.append(f"target >= {target:,} durable acked orders/s, {what} (scenario {key}): "
                   f"{rate:,.0f}/s {verdict}")  # fmt: skip
    o4 = by_key.get("4")
    sync_p99 = pcts(syncs["fsync"])[1] if syncs.get("fsync") else float("nan")
    ack_p99 = pcts(o4.latencies)[1] if o4 else float("nan")
    bound = sync_p99 + TARGET_P99_SLACK_MS * 1e6
    verdict = "MET" if o4 and not o4.problems and ack_p99 <= bound else "MISSED"
    out.append(
        f"target scenario-4 ack p99 <= fsync p99 + {TARGET_P99_SLACK_MS:g} ms: {fmt_ns(ack_p99)} vs "
        f"{fmt_ns(sync_p99)} + {TARGET_P99_SLACK_MS:g} ms = {fmt_ns(bound)} {verdict}"
    )
    return out


def report(outcomes: list[Outcome], syncs: Syncs) -> list[str]:
    """Print everything; return the problems (daemon or client failures)."""
    print()
    print(results_table(outcomes, syncs))
    print("\nCPU over each load window, % of one core (this machine: "
          f"{os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%):")  # fmt: skip
    print(cpu_table(outcomes))
    print("\nsynced group commits (matcher counters at stop) and journals read back from disk:")
    for line in commit_lines(outcomes):
        print(line)
    print("\nover time (last second is partial: the drain after the final send):")
    for line in timeline_lines(outcomes):
        print(line)
    print()
    for line in target_lines({o.scenario.key: o for o in outcomes}, syncs):
        print(line)
    problems = [f"scenario {o.scenario.key}: {p}" for o in outcomes for p in o.problems]
    for o in outcomes:
        for reason, n in sorted(sum((c.rejects for c in o.clients), Counter[int]()).items()):
            print(f"scenario {o.scenario.key}: {n:,} rejected with {_reason(reason)}")
        if o.count("engine_refused"):
            print(f"scenario {o.scenario.key}: {o.count('engine_refused'):,} orders refused by the engine")
        for line in o.daemon_log[:10]:
            print(f"scenario {o.scenario.key} daemon log: {line}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    _notes(outcomes)
    return problems


def _reason(code: int) -> str:
    try:
        return RejectReason(code).name
    except ValueError:
        return f"code {code}"


def _notes(outcomes: list[Outcome]) -> None:
    trades = sum(o.count("exec_reports") for o in outcomes)
    print("\nnotes:")
    print("- latency: client-side, perf_counter_ns from the send of an order's message to its Ack; "
          "acked/s = acks ÷ (first send .. last reply). Every ack follows a synced LMDB commit.")  # fmt: skip
    print("- workload: alternating buy/sell GTC limits 1-50 ticks off the mid (the book grows), "
          "5% IOCs priced 5 ticks through; buyer and seller are separate accounts on separate "
          f"connections, so crosses trade ({trades:,} execution reports to makers in all).")  # fmt: skip
    print("- one load process per instrument, each with 2 connections; every process (gateway, "
          "matchers, supervisor, clients) shares this machine's cores.")  # fmt: skip


# --- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/e2e.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="short scenarios (the whole run well under 40 s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="clobd-e2e-"))
    try:
        outcomes, syncs = _run_all(scenarios(args.quick), root, 500 if args.quick else 2000)
        problems = report(outcomes, syncs)
    finally:
        if args.keep:
            print(f"\ndata directories and daemon logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine: {os.cpu_count()} cores, 1-min load average {load:.2f} at start")
    print(f"total e2e bench time: {time.perf_counter() - started:.1f} s")
    return 1 if problems else 0


def _run_all(scs: list[Scenario], root: Path, sync_samples: int) -> tuple[list[Outcome], Syncs]:
    outcomes = []
    syncs: Syncs = {}
    for sc in scs:
        outcomes.append(run_scenario(sc, root))
        if sc.rate:  # beside the latency scenario, with no daemon running
            syncs = {name: measure_sync(root, sync_samples, name) for name in ("fsync", "fdatasync")}
    return outcomes, syncs


if __name__ == "__main__":
    sys.exit(main())
