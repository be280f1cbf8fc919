"""The local admin endpoint: `clob status` and `clob book --watch`, against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import zmq

from engine.messages import RejectReason
from gateway import admin
from gateway import protocol as p
from gateway.client import Client
from tests.e2e.conftest import ROOT, Daemon, interruptible, stopped


def clob(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(daemon.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_status_admin_socket_and_book_watch(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as client:
        client.logon("alice")
        for coid, side, qty, price in [("a1", "buy", "1", "100.00"), ("a2", "buy", "2", "99.50"),
                                       ("a3", "sell", "1", "101.25")]:  # fmt: skip
            assert isinstance(client.new_order("BTCUSDT", side, qty, price, client_order_id=coid), p.Ack)
        assert isinstance(client.new_order("ETHUSDT", "sell", "3", "2000.00", client_order_id="e1"), p.Ack)

    done = clob(daemon, "status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    rows = {row["symbol"]: row for row in doc["instruments"]}
    btc, eth = rows["BTCUSDT"], rows["ETHUSDT"]
    assert btc["answered"] and btc["ready"] and eth["answered"]
    assert (btc["seq"], btc["resting_orders"]) == (3, 3)
    assert Decimal(btc["best_bid"]) == Decimal("100.00") and Decimal(btc["best_ask"]) == Decimal("101.25")
    assert (eth["seq"], eth["resting_orders"], eth["best_bid"]) == (1, 1, None)
    assert Decimal(eth["best_ask"]) == Decimal("2000.00")
    assert btc["batches"] > 0 and btc["commands"] == 3 and btc["last_batch"] >= 1
    assert btc["commit_p99_us"] >= btc["commit_p50_us"] > 0
    pids = set(daemon.child_pids("matcher"))
    assert btc["matcher_pid"] in pids and eth["matcher_pid"] in pids
    children = {c["name"]: c for c in doc["children"]}
    assert set(children) == {"gateway", "matcher-BTCUSDT", "matcher-ETHUSDT", "snapshotter"}
    assert all(c["pid"] > 0 and c["ready"] and c["restarts"] == 0 for c in children.values())
    assert children["matcher-BTCUSDT"]["pid"] == btc["matcher_pid"]
    assert doc["gateway_pid"] == children["gateway"]["pid"]

    assert btc["checkpoint_seq"] is None and btc["snapshotter_lag"] is None  # none taken yet

    # A checkpoint at seq 3, then one more order: its age, and the snapshotter's lag of 1.
    assert clob(daemon, "snapshot", "take").returncode == 0
    with Client(daemon.endpoint, timeout=10) as client:
        client.logon("alice")
        assert isinstance(client.new_order("BTCUSDT", "buy", "1", "99.00", client_order_id="a4"), p.Ack)
    again = json.loads(clob(daemon, "status", "--json").stdout)
    btc = {r["symbol"]: r for r in again["instruments"]}["BTCUSDT"]
    assert (btc["seq"], btc["checkpoint_seq"], btc["snapshotter_lag"]) == (4, 3, 1)
    assert 0 <= btc["checkpoint_age_s"] < 60

    text = clob(daemon, "status")
    assert text.returncode == 0 and "BTCUSDT" in text.stdout and "snapshotter" in text.stdout

    # The admin socket: a file only the owner may open, and not what the trading port speaks.
    sock_path = daemon.workdir / "run" / "admin.sock"
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(daemon.endpoint)
        dealer.send(admin.encoder.encode(admin.StatusRequest(req_id=7)))
        assert dealer.poll(5000)
        reply = p.reply_decoder.decode(dealer.recv())
    finally:
        dealer.close()
    assert isinstance(reply, p.Reject) and reply.code == RejectReason.MALFORMED_MESSAGE
    assert reply.req_id == 7

    # `clob book --watch`, not on a terminal: successive snapshots, and Ctrl-C exits 0.
    out_path = daemon.workdir / "watch.out"
    with out_path.open("w") as out:
        watch = subprocess.Popen(
            [sys.executable, "-m", "cli", "book", "BTCUSDT", "--watch", "--interval", "0.2",
             "--config", str(daemon.config_path)],
            cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
        )  # fmt: skip
        started = time.monotonic()
        while time.monotonic() - started < 10:
            if time.monotonic() - started >= 1.5 and out_path.read_text().count("BTCUSDT  seq") >= 2:
                break
            assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
            time.sleep(0.1)
        watch.send_signal(signal.SIGINT)
        _, err = stopped(watch, 10)
    printed = out_path.read_text()
    assert watch.returncode == 0, err
    assert printed.count("BTCUSDT  seq 4") >= 2 and "-" * 40 in printed
    assert "\x1b[" not in printed and "100.00" in printed


def test_status_without_daemon_exits_3(tmp_path: Path) -> None:
    d = Daemon(tmp_path)  # configured, never started
    done = subprocess.run(
        [sys.executable, "-m", "cli", "status", "--timeout", "0.5", "--config", str(d.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr


def test_replay_compare_live_matches_the_running_book(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as alice, Client(daemon.endpoint, timeout=10) as bob:
        alice.logon("alice")
        bob.logon("bob")
        for i in range(30):
            price = f"{100 + i % 7}.00"
            assert isinstance(alice.new_order("BTCUSDT", "buy", "2", price, client_order_id=f"b{i}"), p.Ack)
            assert isinstance(bob.new_order("BTCUSDT", "sell", "1", price, client_order_id=f"s{i}"), p.Ack)
        assert isinstance(alice.cancel("BTCUSDT", client_order_id="b3"), p.Ack)

    done = clob(daemon, "replay", "BTCUSDT", "--compare-live", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    live = doc["live"]
    assert live["seq"] == doc["last_seq"] == 61
    assert live["identical"] and live["state_hash"] == doc["state_hash"]
    assert live["level_differences"] == []
    assert live["matcher_pid"] in daemon.child_pids("matcher")

    text = clob(daemon, "replay", "BTCUSDT", "--compare-live")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "replay is IDENTICAL to the live book" in text.stdout
    assert f"seq 61, state hash {live['state_hash']}" in text.stdout

    refused = clob(daemon, "replay", "BTCUSDT", "--compare-live", "--to-seq", "5")
    assert refused.returncode == 2 and "leave --to-seq out" in refused.stderr
