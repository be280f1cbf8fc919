"""Run one engine over a workload file and print one JSON result line on stdout.

    python -m bench.peers.worker ENGINE WORKLOAD_FILE

Started by `bench.engine` in a fresh process per engine, with that engine's interpreter,
so no engine inherits another's heap, GC state or warmed caches.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from bench.peers import wire
from bench.peers.adapters import ADAPTERS, Adapter

Command = tuple[int, int, int, int, int]


def run(adapter: Adapter, commands: list[Command]) -> tuple[array[int], int]:
    """Feed every command; return per-command latencies (ns) and the loop's wall time (ns)."""
    ops = (adapter.add, adapter.ioc, adapter.cancel)  # indexed by wire.ADD/IOC/CANCEL
    prepare, observe = adapter.prepare, adapter.observe
    latencies = array("q")
    record = latencies.append
    clock = time.perf_counter_ns
    start = clock()
    for kind, cid, side, price, qty in commands:
        key = prepare(kind, cid, side)
        op = ops[kind]
        t0 = clock()
        result = op(key, side, price, qty)
        t1 = clock()
        record(t1 - t0)
        observe(kind, cid, result)
    return latencies, clock() - start


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def by_kind(commands: list[Command], latencies: array[int]) -> dict[str, dict[str, float]]:
    """p50/p99 (µs) per command kind: where an engine spends its time, not just how much."""
    groups: dict[int, list[int]] = {wire.ADD: [], wire.IOC: [], wire.CANCEL: []}
    for cmd, ns in zip(commands, latencies, strict=True):
        groups[cmd[0]].append(ns)
    out = {}
    for kind, name in ((wire.ADD, "add"), (wire.IOC, "ioc"), (wire.CANCEL, "cancel")):
        ordered = sorted(groups[kind])
        if ordered:
            out[name] = {"p50_us": percentile(ordered, 0.5) / 1e3, "p99_us": percentile(ordered, 0.99) / 1e3}
    return out


def summarize(
    adapter: Adapter, commands: list[Command], latencies: array[int], wall_ns: int
) -> dict[str, Any]:
    ordered = sorted(latencies)
    busy_ns = sum(ordered)
    bid, ask = adapter.best()
    return {
        "engine": adapter.name,
        "version": adapter.version(),
        "interpreter": f"{platform.python_implementation()} {platform.python_version()}",
        "mode": adapter.mode,
        "notes": list(adapter.notes),
        "n": len(ordered),
        # Throughput over the timed calls only; the untimed bookkeeping is in wall_s.
        "commands_per_s": len(ordered) * 1e9 / busy_ns,
        "busy_s": busy_ns / 1e9,
        "wall_s": wall_ns / 1e9,
        "p50_us": percentile(ordered, 0.50) / 1e3,
        "p99_us": percentile(ordered, 0.99) / 1e3,
        "p999_us": percentile(ordered, 0.999) / 1e3,
        "max_us": ordered[-1] / 1e3,
        "by_kind": by_kind(commands, latencies),
        "fills": adapter.fills if adapter.reports_fills else None,
        "volume": adapter.volume,
        "rejects": adapter.rejects,
        "resting": adapter.resting(),
        "best_bid": bid,
        "best_ask": ask,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ADAPTERS:
        print(f"usage: worker {{{','.join(ADAPTERS)}}} WORKLOAD_FILE", file=sys.stderr)
        return 2
    workload = wire.read(Path(argv[1]))
    adapter = ADAPTERS[argv[0]]()
    commands: list[Command] = list(zip(*(workload.columns[c] for c in wire.COLUMNS), strict=True))
    del workload
    # The million command tuples are the bench's, not the engine's: move them out of the
    # collector's sight so no engine pays for scanning them in its full collections.
    gc.collect()
    gc.freeze()
    latencies, wall_ns = run(adapter, commands)
    adapter.finish()
    print(json.dumps(summarize(adapter, commands, latencies, wall_ns)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
