"""`clob snapshot take` asks the running daemon for a checkpoint, and lists it."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.client import Client
from tests.e2e.conftest import ROOT, Daemon


def test_snapshot_take_checkpoints_what_moved(daemon: Daemon) -> None:
    with Client(daemon.endpoint, timeout=10) as client:
        client.logon("alice")
        for i in range(5):
            client.new_order("BTCUSDT", "buy", "1", f"{90 + i}.00")
    taken = json.loads(clob(daemon, "snapshot", "take", "--json"))
    assert [(t["symbol"], t["seq"]) for t in taken] == [("BTCUSDT", 5)]
    listed = json.loads(clob(daemon, "snapshot", "list", "BTCUSDT", "--json"))
    assert taken[0]["snapshot_id"] in {s["snapshot_id"] for s in listed}


def clob(daemon: Daemon, *args: str) -> str:
    command = [sys.executable, "-m", "cli", *args, "--config", str(daemon.config_path)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout
