"""The `clob` command line against a scripted gateway (real ZeroMQ sockets, click's CliRunner)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.auth
from click.testing import CliRunner, Result

from cli.common import connectable
from cli.main import clob
from tests.gateway.scripted import ScriptedGateway

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway() -> Iterator[ScriptedGateway]:
    with ScriptedGateway() as gw:
        yield gw


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(clob, list(args), env=env, catch_exceptions=False)


def trade(gw: ScriptedGateway, *args: str) -> Result:
    return run(*args, "--endpoint", gw.endpoint, "--timeout", "2")


# --- orders -----------------------------------------------------------------------------


def test_order_new_prints_the_ack_in_decimals(gateway: ScriptedGateway) -> None:
    rest = trade(gateway, "order", "new", "BTCUSDT", "sell", "0.5", "50000.5", "--account", "alice")
    assert rest.exit_code == 0, rest.output
    assert rest.output.splitlines()[0].startswith("resting: BTCUSDT order 1, client order id ")
    assert "accepted   order 1 sell 0.500000 @ 50000.50 limit gtc" in rest.output
    take = trade(gateway, "order", "new", "BTCUSDT", "BUY", "0.7", "--type", "market", "--account", "bob")
    assert take.exit_code == 0, take.output
    lines = take.output.splitlines()
    assert lines[0].startswith("partially filled, rest cancelled: BTCUSDT order 2")
    assert "seq 2" in lines[0]
    assert "trade 1    0.500000 @ 50000.50, aggressor buy" in take.output
    assert "cancelled  order 2: 0.200000 open, ioc remainder" in take.output


def test_order_new_json_and_resend(gateway: ScriptedGateway) -> None:
    args = (
        "order",
        "new",
        "BTCUSDT",
        "buy",
        "0.01",
        "100.25",
        "--client-order-id",
        "c1",
        "--post-only",
        "--json",
    )
    first = trade(gateway, *args)
    assert first.exit_code == 0, first.output
    doc = json.loads(first.output)
    assert doc["type"] == "ack" and doc["client_order_id"] == "c1" and doc["duplicate"] is False
    assert doc["events"] == [
        {
            "event": "accepted",
            "order_id": 1,
            "account": "demo",
            "client_order_id": "c1",
            "side": "buy",
            "price": "100.25",
            "qty": "0.010000",
            "order_type": "limit",
            "tif": "gtc",
        }
    ]
    again = json.loads(trade(gateway, *args).output)
    assert again["duplicate"] is True and again["seq"] == doc["seq"]
    human = trade(gateway, *args[:-1])
    assert "(duplicate: the original outcome of an earlier send)" in human.output


def test_order_new_refusals_and_exit_codes(gateway: ScriptedGateway) -> None:
    engine_reject = trade(gateway, "order", "new", "BTCUSDT", "buy", "0.00001", "1", "--json")
    assert engine_reject.exit_code == 1
    event = json.loads(engine_reject.output)["events"][0]
    assert (event["event"], event["reason"], event["code"]) == ("rejected", "quantity_off_lot", 5)
    human = trade(gateway, "order", "new", "BTCUSDT", "buy", "0.00001", "1")
    assert human.exit_code == 1 and "QUANTITY_OFF_LOT (5)" in human.output
    too_precise = trade(gateway, "order", "new", "BTCUSDT", "buy", "1", "1.001")
    assert too_precise.exit_code == 2 and "more than 2 decimal places" in too_precise.output
    no_price = trade(gateway, "order", "new", "BTCUSDT", "buy", "1")
    assert no_price.exit_code == 2 and "needs a PRICE" in no_price.output
    unknown = trade(gateway, "order", "new", "XYZ", "buy", "1", "1")
    assert unknown.exit_code == 2 and "unknown symbol 'XYZ'" in unknown.output
    bad_side = trade(gateway, "order", "new", "BTCUSDT", "hold", "1", "1")
    assert bad_side.exit_code == 2
    assert [type(r).__name__ for r in gateway.requests].count("NewOrder") == 2  # only the two off-lot ones


def test_gateway_reject_exits_1(gateway: ScriptedGateway) -> None:
    result = trade(gateway, "order", "mass-cancel", "XYZ")
    assert result.exit_code == 1
    assert result.output.startswith("rejected") and "UNKNOWN_INSTRUMENT (100)" in result.output
    doc = json.loads(trade(gateway, "book", "XYZ", "--json").output)
    assert (doc["type"], doc["code"], doc["reason"]) == ("reject", 100, "UNKNOWN_INSTRUMENT")


def test_cancel_amend_status_mass_cancel(gateway: ScriptedGateway) -> None:
    as_alice = ("--account", "alice")
    trade(gateway, "order", "new", "BTCUSDT", "sell", "1", "200", "--client-order-id", "a1", *as_alice)
    trade(gateway, "order", "new", "ETHUSDT", "sell", "1", "20", *as_alice)
    status = trade(gateway, "order", "status", "BTCUSDT", "--client-order-id", "a1", *as_alice)
    assert status.output.strip() == "BTCUSDT order 1 (a1): sell 1.000000 @ 200.00, 1.000000 open"
    other = trade(gateway, "order", "status", "BTCUSDT", "--client-order-id", "a1")  # account demo
    assert other.exit_code == 1 and "no open order" in other.output
    amend = trade(gateway, "order", "amend", "BTCUSDT", "--order-id", "1", "--qty", "0.4", *as_alice)
    assert amend.exit_code == 0, amend.output
    assert "amended    order 1: 0.400000 @ 200.00, 0.400000 open, priority kept" in amend.output
    both = trade(
        gateway, "order", "cancel", "BTCUSDT", "--order-id", "1", "--client-order-id", "a1", *as_alice
    )
    assert both.exit_code == 2 and "exactly one" in both.output
    cancel = trade(gateway, "order", "cancel", "BTCUSDT", "--client-order-id", "a1", *as_alice)
    assert cancel.exit_code == 0 and cancel.output.startswith("cancelled: BTCUSDT, seq 3")
    again = trade(gateway, "order", "cancel", "BTCUSDT", "--client-order-id", "a1", *as_alice)
    assert again.exit_code == 1 and "UNKNOWN_ORDER (12)" in again.output
    mass = trade(gateway, "order", "mass-cancel", *as_alice)
    assert mass.exit_code == 0
    assert mass.output.splitlines() == [
        "BTCUSDT: 0 order(s) cancelled, seq 5",
        "ETHUSDT: 1 order(s) cancelled, seq 2",
        "  cancelled  order 1: 1.00000 open, mass cancel",
    ]


def test_book_ladder_and_ping(gateway: ScriptedGateway) -> None:
    for side, price in (("buy", "99.5"), ("buy", "99"), ("sell", "101"), ("sell", "100.75")):
        trade(gateway, "order", "new", "BTCUSDT", side, "0.25", price)
    ladder = trade(gateway, "book", "BTCUSDT", "--depth", "5")
    assert ladder.exit_code == 0
    assert ladder.output.splitlines() == [
        "BTCUSDT  seq 4",
        "      price       qty",
        "ask  101.00  0.250000",
        "ask  100.75  0.250000",
        "---- spread 1.25 ----",
        "bid   99.50  0.250000",
        "bid   99.00  0.250000",
    ]
    doc = json.loads(trade(gateway, "book", "BTCUSDT", "--depth", "1", "--json").output)
    assert (doc["bids"], doc["asks"]) == ([["99.50", "0.250000"]], [["100.75", "0.250000"]])
    ping = trade(gateway, "ping")
    assert ping.exit_code == 0 and ping.output.startswith(f"pong from {gateway.endpoint} in ")


def test_no_answer_exits_3() -> None:
    with ScriptedGateway(silent={"logon", "ping"}) as gw:
        result = run(
            "order", "status", "BTCUSDT", "--order-id", "1", "--endpoint", gw.endpoint, "--timeout", "0.1"
        )
        assert result.exit_code == 3
        assert "no reply from" in result.output and "is clobd running?" in result.output


# --- configuration, environment, CURVE ---------------------------------------------------


def test_endpoint_and_account_from_config_and_environment(gateway: ScriptedGateway, tmp_path: Path) -> None:
    port = gateway.endpoint.rsplit(":", 1)[1]
    config = tmp_path / "clobd.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[gateway]\nbind = "tcp://0.0.0.0:{port}"\ncurve = "off"\n'
        '[[instruments]]\nsymbol = "BTCUSDT"\n'
    )
    result = run(
        "order",
        "new",
        "BTCUSDT",
        "buy",
        "1",
        "1",
        "--json",
        env={"CLOB_CONFIG": str(config), "CLOB_ACCOUNT": "eve"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["events"][0]["account"] == "eve"
    assert connectable("tcp://*:7001") == "tcp://127.0.0.1:7001"
    assert connectable("tcp://[::]:7001") == "tcp://[::1]:7001"
    assert connectable("tcp://10.0.0.5:7001") == "tcp://10.0.0.5:7001"
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    assert run("ping", "--config", str(bad)).exit_code == 2


def test_curve_keys_from_the_config_keys_dir(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert run("keys", "generate", "--dir", str(keys), "--name", "server").exit_code == 0
    made = run("keys", "generate", "--dir", str(tmp_path / "mine"), "--json")
    client_public = json.loads(made.output)["public_key"]
    _, server_secret = zmq.auth.load_certificate(str(keys / "server.key_secret"))
    assert server_secret is not None
    config = tmp_path / "clobd.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n[gateway]\ncurve = "on"\ncurve_keys_dir = "{keys}"\n'
        f'[[accounts]]\nname = "demo"\ncurve_public_key = "{client_public}"\n'
        '[[instruments]]\nsymbol = "BTCUSDT"\n'
    )
    with ScriptedGateway(curve_secret=server_secret) as gw:
        common = ("--config", str(config), "--endpoint", gw.endpoint, "--timeout", "2")
        missing = run("ping", *common)
        assert missing.exit_code == 2 and "--curve-key" in missing.output
        secret = str(tmp_path / "mine" / "client.key_secret")
        ok = run("ping", *common, "--curve-key", secret)  # --server-key defaults to <keys dir>/server.key
        assert ok.exit_code == 0, ok.output
        placed = run("order", "new", "BTCUSDT", "buy", "1", "1", *common, "--curve-key", secret)
        assert placed.exit_code == 0, placed.output


# --- keys -------------------------------------------------------------------------------


def test_keys_generate_writes_private_files_and_prints_the_config_line(tmp_path: Path) -> None:
    where = tmp_path / "a" / "keys"
    result = run("keys", "generate", "--dir", str(where), "--account", "desk-1")
    assert result.exit_code == 0, result.output
    public, secret = zmq.auth.load_certificate(str(where / "client.key_secret"))
    assert secret is not None and len(public) == 40
    assert f"public key: {public.decode()}" in result.output
    assert f'[[accounts]]\nname = "desk-1"\ncurve_public_key = "{public.decode()}"' in result.output
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE((where / "client.key_secret").stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(str(where / "client.key")) == (public, None)


def test_keys_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = json.loads(run("keys", "generate", "--dir", str(tmp_path), "--name", "k", "--json").output)
    again = run("keys", "generate", "--dir", str(tmp_path), "--name", "k")
    assert again.exit_code == 1 and "--force" in again.output
    (tmp_path / "k.key_secret").chmod(0o644)
    forced = json.loads(
        run("keys", "generate", "--dir", str(tmp_path), "--name", "k", "--force", "--json").output
    )
    assert forced["public_key"] != first["public_key"]
    assert stat.S_IMODE((tmp_path / "k.key_secret").stat().st_mode) == 0o600
    assert run("keys", "generate", "--dir", str(tmp_path), "--name", "../x").exit_code == 2


def test_keys_generate_server_pair_and_default_dir(tmp_path: Path) -> None:
    server = run("keys", "generate", "--dir", str(tmp_path / "k"), "--name", "server")
    assert "gateway.curve_keys_dir" in server.output and "[[accounts]]" not in server.output
    default = run("keys", "generate", env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert default.exit_code == 0
    assert (tmp_path / "xdg" / "clob" / "keys" / "client.key_secret").exists()


# --- the package ----------------------------------------------------------------------------


def test_python_dash_m_cli_runs() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run_ = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run_.returncode == 0, run_.stderr
    assert run_.stdout.startswith("Usage: clob [OPTIONS] COMMAND")
    for command in ("order", "book", "ping", "keys"):
        assert f"  {command} " in run_.stdout
    assert "client protocol v1" in run(*["--version"]).output
