"""The gateway alone: a pipelined client -> the real gateway process -> a fake matcher that
accepts every command at once (no engine, no journal). Not a test; run by hand:

    .venv/bin/python -m tests.gateway.bench_gateway [--orders 200000] [--batch 1|64] [--window 4000]
                                                   [--matcher fake|real]

Prints acked orders per second and the gateway's CPU per order. All three processes share
this machine's cores, as in the daemon (gateway + matcher + load client on 2 cores). With
`--matcher real` the matcher is `python -m matcher` (engine + synced LMDB journal): the
daemon's order path end to end. The orders never cross (they all rest).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from daemon.child import end_context
from daemon.config import Config
from engine import messages as E
from gateway import protocol as P
from matcher import link
from tests.gateway.harness import REPO, GatewayProcess


def fake_matcher(config: Config, symbol: str, stop: Any) -> None:
    """Accept everything: one Accepted event per order, one OutcomeBatch per CommandBatch."""
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(config.matcher_endpoint(symbol))
    push = ctx.socket(zmq.PUSH)
    push.connect(config.replies_endpoint())
    push.send(link.encoder.encode(link.MatcherReady(symbol, 0, 1)))
    decode, encode = link.to_matcher.decode, link.encoder.encode
    seq = 0
    while not stop.is_set():
        if not pull.poll(100):
            continue
        batch = decode(pull.recv())
        outcomes = []
        for env in batch.items:  # type: ignore[union-attr]
            c = env.command
            seq += 1
            event = E.Accepted(seq, c.account, c.client_order_id, c.side, c.price, c.qty, c.order_type, c.tif)
            outcomes.append(link.Outcome(env.conn, env.req_id, c.account, c.client_order_id, seq, [event]))
        push.send(encode(link.OutcomeBatch(symbol, outcomes, [])))
    end_context(ctx, 0, 1.0)


def messages(n_orders: int, batch: int) -> list[bytes]:
    def new(i: int) -> P.NewOrder:
        side = 1 + i % 2  # buys below 10_025, sells from there: nothing trades
        return P.NewOrder(symbol="BTCUSDT", client_order_id=f"c{i}", side=E.Side(side), qty=100,
                          price=10_000 + 25 * (side - 1) + i % 25, req_id=i)

    if batch == 1:
        return [P.encoder.encode(new(i)) for i in range(n_orders)]
    return [P.encoder.encode(P.OrderBatch(orders=[new(i + j) for j in range(batch)]))
            for i in range(0, n_orders, batch)]


def drive(endpoint: str, payloads: list[bytes], per_message: int, window: int) -> float:
    """Send with at most `window` orders unanswered; seconds until every Ack arrived."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.sndhwm = sock.rcvhwm = 0
    sock.connect(endpoint)
    sock.send(P.encoder.encode(P.Logon(account="bench")))
    assert isinstance(P.reply_decoder.decode(sock.recv()), P.LogonAck)
    wait_ready(sock)
    total = len(payloads) * per_message
    sent = acked = 0
    nb = int(zmq.NOBLOCK)
    start = time.perf_counter()
    it = iter(payloads)
    while acked < total:
        while sent < total and sent - acked < window:
            sock.send(next(it), nb)
            sent += per_message
        sock.poll(1000)
        try:
            while True:
                reply = sock.recv(nb)
                acked += 1
        except zmq.Again:
            pass
    elapsed = time.perf_counter() - start
    assert P.reply_decoder.decode(reply).__class__ is P.Ack
    end_context(ctx, 0, 1.0)
    return elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all threads (libzmq's I/O thread included)."""
    return _cpu(Path(f"/proc/{pid}/stat"))


def main_thread_seconds(pid: int) -> float:
    return _cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(sock: zmq.Socket[bytes]) -> None:
    """Until the matcher answers through the gateway (it may still be recovering)."""
    for _ in range(200):
        sock.send(P.encoder.encode(P.BookQuery(symbol="BTCUSDT")))
        if isinstance(P.reply_decoder.decode(sock.recv()), P.BookReply):
            return
        time.sleep(0.05)
    raise RuntimeError("the matcher never became ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--window", type=int, default=4000)
    parser.add_argument("--matcher", choices=("fake", "real"), default="fake")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    gateway = GatewayProcess(tmp, gateway_toml="max_batch_orders = 512\n")
    stop = multiprocessing.Event()
    if args.matcher == "fake":
        matcher: Any = multiprocessing.Process(target=fake_matcher, args=(gateway.config, "BTCUSDT", stop))
        matcher.start()
    else:
        matcher = subprocess.Popen([sys.executable, "-m", "matcher", "--symbol", "BTCUSDT", "--config",
                                    str(gateway.config_path)], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        payloads = messages(args.orders, args.batch)
        pid = gateway.proc.pid
        cpu0, main0 = cpu_seconds(pid), main_thread_seconds(pid)
        elapsed = drive(gateway.endpoint, payloads, args.batch, args.window)
        cpu, main = cpu_seconds(pid) - cpu0, main_thread_seconds(pid) - main0
        print(f"batch={args.batch}: {args.orders} orders acked in {elapsed:.2f} s = "
              f"{args.orders / elapsed:,.0f} orders/s ({len(payloads) / elapsed:,.0f} client messages/s); "
              f"gateway CPU {cpu / args.orders * 1e6:.1f} us/order "
              f"({main / args.orders * 1e6:.1f} in its Python thread, the rest in libzmq's I/O thread)")
    finally:
        stop.set()
        if args.matcher == "fake":
            matcher.join()
        else:
            matcher.terminate()
            matcher.wait()
        gateway.terminate()
        gateway.close()


if __name__ == "__main__":
    main()
