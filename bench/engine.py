"""Benchmark clobd's matching core against the strongest Python order books on PyPI.

    python -m bench.engine [--n 1000000] [--seed 1] [--repeat 3] [--engines clobd,matching-engine,...]

One seeded workload (about 55% passive GTC adds within 50 ticks of the mid, 30% cancels of
orders resting at that moment, 15% IOC limits priced 1-5 ticks through the touch; all buys
from one account and all sells from another) is generated against a reference book and
written to a file. Each engine then runs it in its own subprocess on its own interpreter
(see `bench.peers.worker`), and the results are tabled and checked against the reference.
Engines run in rounds, each once per round (`--repeat`, default 3), and each one's median
run is shown: a noisy shared machine then slows every engine alike, not just one.
Peers are installed into `.venv-bench/` and `.venv-bench312/` on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

if not __package__:  # run as `python bench/engine.py`: import `bench` from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import venvs
from bench.peers import wire
from bench.workload import generate

CLOBD = "clobd"
TARGET_PEER = "matching-engine"
TARGET_RATIO = 1.5  # clobd commands/s over matching-engine's
TARGET_P99_US = 10.0


class EngineSpec(NamedTuple):
    adapter: str  # key in bench.peers.adapters.ADAPTERS
    venv: venvs.VenvSpec | None  # None: the interpreter running this script (clobd's own)


ENGINES: dict[str, EngineSpec] = {
    CLOBD: EngineSpec(CLOBD, None),
    # clobd again on matching-engine's interpreter, so that pair is also compared like for
    # like (the 3.12 venv already has msgspec and sortedcontainers, via matching-engine).
    "clobd@py3.12": EngineSpec(CLOBD, venvs.PEERS_312),
    TARGET_PEER: EngineSpec(TARGET_PEER, venvs.PEERS_312),
    "limit-order-book": EngineSpec("limit-order-book", venvs.PEERS_311),
    "cython-orderbook": EngineSpec("cython-orderbook", venvs.PEERS_311),
    "pyorderbook": EngineSpec("pyorderbook", venvs.PEERS_311),
}
CHECKED = ("fills", "volume", "resting", "best_bid", "best_ask")

Result = dict[str, Any]  # a worker's JSON line, or {"engine", "error"} if it produced none


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    started = time.perf_counter()
    load = os.getloadavg()[0]  # shared machines are noisy: say how busy this one was
    with tempfile.TemporaryDirectory(prefix="clobd-bench-") as tmp:
        path = Path(tmp) / "workload.bin"
        meta = _write_workload(path, args.n, args.seed)
        pythons = _interpreters(args.engines)
        results = _median_runs(args.engines, pythons, path, args)
    problems = report(meta, results)
    print(f"\nmachine: {os.cpu_count()} cores, 1-min load average {load:.2f} at start")
    print(f"total bench time (generation, setup, all engines): {time.perf_counter() - started:.1f} s")
    return 1 if problems else 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.engine", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="commands (default 1000000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        type=lambda s: [e for e in s.split(",") if e],
        help="comma-separated subset of: " + ", ".join(ENGINES),
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every engine; each one's median by cmd/s is shown"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per engine run")
    args = parser.parse_args(argv)
    unknown = set(args.engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}")
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be >= 1")
    return args


def _write_workload(path: Path, n: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    meta, columns = generate(n, seed)
    wire.write(path, meta, columns)
    mix = meta["mix"]
    print(
        f"workload: {n:,} commands, seed {seed} ({mix['add']:,} adds, {mix['ioc']:,} IOCs, "
        f"{mix['cancel']:,} cancels), generated in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return meta


def _interpreters(engines: list[str]) -> dict[str, str | Exception]:
    """Interpreter per engine, or the setup error that rules the engine out."""
    by_venv: dict[venvs.VenvSpec, str | Exception] = {}
    out: dict[str, str | Exception] = {}
    for name in engines:
        venv = ENGINES[name].venv
        if venv is None:
            out[name] = sys.executable
            continue
        if venv not in by_venv:
            try:
                by_venv[venv] = str(venvs.ensure(venv))
            except venvs.SetupError as exc:
                by_venv[venv] = exc
        out[name] = by_venv[venv]
    return out


def _median_runs(
    engines: list[str], pythons: dict[str, str | Exception], path: Path, args: argparse.Namespace
) -> list[Result]:
    """Every engine `--repeat` times, in rounds (each engine once per round), so a slow
    spell of a shared machine hits every engine alike; each engine's median run is kept."""
    runs: dict[str, list[Result]] = {name: [] for name in engines}
    failed: dict[str, Result] = {}
    for _ in range(args.repeat):
        for name in engines:
            if name in failed:
                continue
            result = _run_engine(name, pythons[name], path, args.timeout)
            if "error" in result:
                failed[name] = result
            else:
                runs[name].append(result)
    out = []
    for name in engines:
        if name in failed:
            out.append(failed[name])
            continue
        in_order = [r["commands_per_s"] for r in runs[name]]
        median = sorted(runs[name], key=lambda r: r["commands_per_s"])[len(in_order) // 2]
        median["runs"] = in_order
        out.append(median)
    return out


def _run_engine(name: str, python: str | Exception, path: Path, timeout: float) -> Result:
    if isinstance(python, Exception):
        return {"engine": name, "error": f"not installed: {python}"}
    print(f"running {name} ...", file=sys.stderr)
    cmd = [python, "-m", "bench.peers.worker", ENGINES[name].adapter, str(path)]
    try:
        done = subprocess.run(
            cmd, cwd=venvs.ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"engine": name, "error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"engine": name, "error": f"crashed: {tail[0]}"}
    result: Result = json.loads(lines[-1])
    # The display name: one adapter may run under two interpreters.
    result["adapter"], result["engine"] = result["engine"], name
    return result


# --- report --------------------------------------------------------------------------


def report(meta: dict[str, Any], results: list[Result]) -> list[str]:
    """Print the table, target lines, warnings and footnotes; return the problems found."""
    ok = {r["engine"]: r for r in results if "error" not in r}
    clobd = ok.get(CLOBD)
    print()
    print(_table(meta, results, clobd))
    print()
    print(_kind_table(list(ok.values())))
    print()
    _print_targets(ok)
    problems = [p for r in ok.values() for p in _disagreements(meta["expected"], r)]
    if CLOBD in {r["engine"] for r in results} and clobd is None:
        problems.append("clobd produced no result")
    for problem in problems:
        print(f"WARNING: {problem}")
    if problems:
        print(
            "WARNING: engines must agree with the reference book; a difference is an engine bug, "
            "an adapter bug or a semantic gap (see bench/peers/adapters.py)."
        )
    _print_footnotes(results)
    return problems


def _table(meta: dict[str, Any], results: list[Result], clobd: Result | None) -> str:
    head = (
        "engine", "version", "interpreter", "cmd/s", "p50 µs", "p99 µs", "p99.9 µs",
        "fills", "volume", "resting", "bid", "ask", "clobd ÷ this",
    )  # fmt: skip
    exp = meta["expected"]
    rows = [
        ("reference book", "(bench model)", "", "", "", "", "",
         *(_num(exp[k]) for k in CHECKED), ""),
    ]  # fmt: skip
    for r in results:
        if "error" in r:
            rows.append((r["engine"], "", r["error"]))
            continue
        ratio = f"{clobd['commands_per_s'] / r['commands_per_s']:.2f}x" if clobd else "n/a"
        rows.append((
            r["engine"], r["version"], r["interpreter"], f"{r['commands_per_s']:,.0f}",
            f"{r['p50_us']:.2f}", f"{r['p99_us']:.2f}", f"{r['p999_us']:.2f}",
            *(_num(r[k]) for k in CHECKED), ratio,
        ))  # fmt: skip
    return _format(head, rows)


def _kind_table(results: list[Result]) -> str:
    kinds = ("add", "ioc", "cancel")
    head = ("per command kind", *(f"{k} p50 / p99 µs" for k in kinds))
    rows = [(r["engine"], *(_p50_p99(r["by_kind"].get(k)) for k in kinds)) for r in results]
    return _format(head, rows, text_columns=1)


def _p50_p99(stats: dict[str, float] | None) -> str:
    return "" if stats is None else f"{stats['p50_us']:.2f} / {stats['p99_us']:.2f}"


def _num(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _format(head: Sequence[str], rows: list[Sequence[str]], text_columns: int = 3) -> str:
    """Align columns; a short row (engine, version, error) lets its last cell run on."""
    full = [r for r in rows if len(r) == len(head)]
    widths = [max(len(x) for x in col) for col in zip(head, *full, strict=True)]

    def line(cells: Sequence[str]) -> str:
        # The first `text_columns` (names) align left, numbers right.
        out = [
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        if len(cells) < len(head):
            out[-1] = cells[-1]
        return " | ".join(out)

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _print_targets(ok: dict[str, Result]) -> None:
    clobd, peer = ok.get(CLOBD), ok.get(TARGET_PEER)
    if clobd is None:
        print("targets: not evaluated (no clobd result)")
        return
    if peer is None:
        print(f"clobd ÷ {TARGET_PEER} >= {TARGET_RATIO}x: not evaluated (no {TARGET_PEER} result)")
    else:
        ratio = clobd["commands_per_s"] / peer["commands_per_s"]
        verdict = "MET" if ratio >= TARGET_RATIO else "MISSED"
        print(
            f"clobd ÷ {TARGET_PEER} commands/s = {ratio:.2f}x (target >= {TARGET_RATIO}x): {verdict}"
            f"  [clobd on {clobd['interpreter']}, {TARGET_PEER} on {peer['interpreter']}, {peer['mode']}]"
        )
        rounds = zip(clobd.get("runs", ()), peer.get("runs", ()), strict=False)
        per_round = [f"{a / b:.2f}x" for a, b in rounds]
        if len(per_round) > 1:
            print(f"  per round (cmd/s ratio of the runs made side by side): {', '.join(per_round)}")
        same = next((r for r in ok.values() if r is not clobd and r["adapter"] == CLOBD), None)
        if same is not None and same["interpreter"] == peer["interpreter"]:
            ratio = same["commands_per_s"] / peer["commands_per_s"]
            print(
                f"  same interpreter ({peer['interpreter']}): {same['engine']} ÷ {TARGET_PEER} = {ratio:.2f}x"
            )
    p99 = clobd["p99_us"]
    verdict = "MET" if p99 < TARGET_P99_US else "MISSED"
    print(f"clobd p99 = {p99:.2f} µs (target < {TARGET_P99_US:g} µs): {verdict}")


def _disagreements(expected: dict[str, Any], r: Result) -> list[str]:
    out = [
        f"{r['engine']}: {key} = {r[key]} but the reference book has {expected[key]}"
        for key in CHECKED
        if not (key == "fills" and r[key] is None) and r[key] != expected[key]
    ]
    if r["rejects"]:
        out.append(f"{r['engine']}: {r['rejects']} commands were rejected (expected none)")
    return out


def _print_footnotes(results: list[Result]) -> None:
    print("\nnotes:")
    print(
        "- cmd/s = commands ÷ Σ per-command time; each command is timed alone with "
        "perf_counter_ns around the engine call(s). Id mapping and fill counting run outside "
        "the timed window; each engine runs in its own process with the workload gc.freeze()d."
    )
    print("- fills = maker-taker matches; volume = lots traded; resting = orders on the book at the end.")
    for r in results:
        if len(r.get("runs", ())) > 1:
            spread = ", ".join(f"{x:,.0f}" for x in r["runs"])
            print(f"- {r['engine']}: {len(r['runs'])} runs, cmd/s {spread}; the median run is shown")
    for r in results:
        if "error" not in r:
            print(f"- {r['engine']} mode: {r['mode']}")
    for note in dict.fromkeys(n for r in results for n in r.get("notes", ())):
        print(f"- {note}")


if __name__ == "__main__":
    sys.exit(main())
