"""Throughput of a real matcher process with durable (synced) group commits.

    python -m tests.matcher.bench_matcher [--orders 200000] [--frame 1 64] [--window 20000]
                                          [--subscribe]

A PUSH client plays the gateway: CommandBatch frames of `--frame` orders each, at most
`--window` orders sent and not yet answered (the gateway's in-flight bound), and counts
acknowledged orders per second. Every ack is durable: it comes after the matcher's synced
LMDB commit. The order flow rests and trades (two accounts around one price). With
`--subscribe` a subscriber takes every market-data message through an XSUB/XPUB proxy, as
the gateway's would; without, the matcher publishes to a proxy with no subscriber.
Not a test (pytest does not collect it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import zmq

from engine.messages import NewOrder, Side, TimeInForce
from matcher import link
from matcher.link import CommandBatch, Envelope, OutcomeBatch
from tests.matcher.conftest import Rig
from tests.matcher.harness import TS0


def _orders(n: int) -> list[NewOrder]:
    out = []
    for i in range(n):
        side = Side.BUY if (i * 7) % 5 < 2 else Side.SELL
        price = 10_000 + (i * 13) % 21 - 10
        tif = TimeInForce.IOC if i % 10 == 0 else TimeInForce.GTC
        account = "alice" if i % 3 else "bob"
        out.append(NewOrder(i + 1, TS0 + i, account, f"b{i}", side, 1 + i % 4, price, tif=tif))
    return out


def run_once(frame: int, n: int, window: int, subscribe: bool) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="clobd-bench-"))
    run_dir = Path(tempfile.mkdtemp(prefix="clm-", dir="/tmp"))
    rig = Rig(workdir / "rig", run_dir)
    received = [0]
    stop = threading.Event()
    subscriber = threading.Thread(target=_subscriber, args=(rig, received, stop), daemon=True)
    if subscribe:
        subscriber.start()
    try:
        matcher = rig.start()
        orders = _orders(n)
        frames = [
            link.encoder.encode(CommandBatch([Envelope(b"c", i, o) for i, o in enumerate(chunk, start)]))
            for start in range(0, n, frame)
            for chunk in [orders[start : start + frame]]
        ]
        cpu_before = _cpu_seconds(matcher.pid)
        elapsed, acked, refused = _pump(rig, frames, frame, n, window)
        cpu = _cpu_seconds(matcher.pid) - cpu_before
        matcher.stop()
        stopped = matcher.wait_log("event=stopped")
        commits = int(stopped.split(" batches=")[-1].split()[0])
        return {
            "frame": frame,
            "orders": acked,
            "refused": refused,
            "seconds": round(elapsed, 3),
            "orders_per_s": round(acked / elapsed),
            "commits": commits,
            "orders_per_commit": round(acked / commits, 1),
            "matcher_cpu_us_per_order": round(cpu / acked * 1e6, 2),
            "md_received": received[0],
        }
    finally:
        stop.set()
        if subscribe:
            subscriber.join()
        rig.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


def _pump(rig: Rig, frames: list[bytes], frame: int, n: int, window: int) -> tuple[float, int, int]:
    gw = rig.gateway
    assert gw.to_matcher is not None
    push, replies = gw.to_matcher, gw.replies
    acked = refused = sent = 0
    decode = link.to_gateway.decode
    started = time.perf_counter()
    position = 0
    while acked + refused < n:
        while position < len(frames) and sent - acked - refused < window:
            push.send(frames[position])
            position += 1
            sent = min(n, position * frame)
        if not replies.poll(10_000):
            raise TimeoutError("matcher stopped answering")
        message = decode(replies.recv())
        if isinstance(message, OutcomeBatch):
            acked += len(message.outcomes)
            refused += len(message.refusals)
    return time.perf_counter() - started, acked, refused


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _subscriber(rig: Rig, received: list[int], stop: threading.Event) -> None:
    sub = rig.gateway.ctx.socket(zmq.SUB)
    sub.connect(rig.gateway.proxy.downstream)
    sub.subscribe(b"")
    while not stop.is_set():
        if sub.poll(100):
            sub.recv_multipart()
            received[0] += 1
    sub.close(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--frame", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--subscribe", action="store_true")
    args = parser.parse_args()
    for frame in args.frame:
        print(run_once(frame, args.orders, args.window, args.subscribe), flush=True)


if __name__ == "__main__":
    main()
