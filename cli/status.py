"""`clob status`: the running daemon's state, from its local admin socket.

Asks the gateway's admin endpoint (`ipc://<run_dir>/admin.sock`, gateway/admin.py) for each
instrument's journal seq, book and commit figures, then adds what the daemon's files say:
the newest checkpoint of each instrument (`<data_dir>/checkpoints.lmdb`, read-only) and the
supervisor's children table (`<run_dir>/children.json`).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import lmdb
import zmq

from cli import output
from cli.common import EXIT_NO_ANSWER
from daemon.config import Config, ConfigError, load
from gateway import admin
from journal.checkpoints import CheckpointStore, checkpoints_path


def ask(
    config: Config, timeout: float, *, state_hash: bool = False, depth: int = 0
) -> admin.StatusReply | None:
    """One StatusRequest to the admin socket; None when the daemon does not answer in time.

    ``state_hash``/``depth``: also each matcher's state hash and top levels (see
    ``admin.StatusRequest``)."""
    path = Path(config.admin_endpoint().removeprefix("ipc://"))
    if not path.exists():
        return None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(config.admin_endpoint())
        sock.send(admin.encoder.encode(admin.StatusRequest(1, state_hash, depth)))
        if not sock.poll(int(timeout * 1000)):
            return None
        return admin.reply_decoder.decode(sock.recv())
    except (zmq.ZMQError, ValueError):  # msgspec.DecodeError is a ValueError
        return None
    finally:
        sock.close()


def checkpoints(config: Config, symbols: list[str]) -> dict[str, tuple[int, int]]:
    """symbol -> (seq, taken_at ns) of its newest intact checkpoint."""
    out: dict[str, tuple[int, int]] = {}
    try:
        store = CheckpointStore(checkpoints_path(config.data_path), readonly=True)
    except (FileNotFoundError, lmdb.Error):
        return out
    with store:
        for symbol in symbols:
            snap = store.newest(symbol)
            if snap is not None:
                out[symbol] = (snap.seq, snap.taken_at)
    return out


def children(config: Config) -> list[dict[str, Any]]:
    try:
        rows = json.loads(config.children_path().read_text())["children"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return list(rows)


def _price(units: int | None, decimals: int) -> str | None:
    return None if units is None else str(Decimal(units).scaleb(-decimals))


def document(config: Config, reply: admin.StatusReply) -> dict[str, Any]:
    now = time.time_ns()
    kids = children(config)
    restarts = {row.get("name"): row.get("restarts", 0) for row in kids}
    marks = checkpoints(config, [i.symbol for i in reply.instruments])
    rows = []
    for i in reply.instruments:
        mark = marks.get(i.symbol)
        rows.append({
            "symbol": i.symbol,
            "ready": i.ready,
            "answered": i.answered,
            "seq": i.seq,
            "resting_orders": i.resting_orders,
            "best_bid": _price(i.best_bid, i.price_decimals),
            "best_ask": _price(i.best_ask, i.price_decimals),
            "matcher_pid": i.matcher_pid,
            "matcher_restarts": restarts.get(f"matcher-{i.symbol}", 0),
            "inflight": i.inflight,
            "batches": i.batches,
            "commands": i.commands,
            "last_batch": i.last_batch,
            "commit_p50_us": i.commit_p50_us,
            "commit_p99_us": i.commit_p99_us,
            "checkpoint_seq": None if mark is None else mark[0],
            "checkpoint_age_s": None if mark is None else round((now - mark[1]) / 1e9, 1),
            "snapshotter_lag": None if mark is None else max(0, i.seq - mark[0]),
        })  # fmt: skip
    return {
        "type": "status",
        "gateway_pid": reply.gateway_pid,
        "sessions": reply.sessions,
        "instruments": rows,
        "children": kids,
    }


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(header)]
    return ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in [header, *rows]]  # fmt: skip


def _s(value: object) -> str:
    return "-" if value is None else str(value)


def text(doc: dict[str, Any]) -> str:
    header = ["symbol", "ready", "seq", "resting", "best bid", "best ask", "ckpt age s", "snap lag",
              "matcher pid", "restarts", "inflight", "last batch", "commit p50 us", "p99 us"]  # fmt: skip
    rows = [
        [i["symbol"], "yes" if i["ready"] and i["answered"] else "NO", str(i["seq"]),
         str(i["resting_orders"]),
         _s(i["best_bid"]), _s(i["best_ask"]), _s(i["checkpoint_age_s"]), _s(i["snapshotter_lag"]),
         str(i["matcher_pid"]), str(i["matcher_restarts"]), str(i["inflight"]), str(i["last_batch"]),
         str(i["commit_p50_us"]), str(i["commit_p99_us"])]
        for i in doc["instruments"]
    ]  # fmt: skip
    lines = [f"gateway pid {doc['gateway_pid']}, {doc['sessions']} sessions", ""]
    lines += _table(header, rows)
    if doc["children"]:
        kids = [
            [str(c.get("name")), str(c.get("pid")), str(c.get("restarts")), "yes" if c.get("ready") else "NO"]
            for c in doc["children"]
        ]
        lines += ["", *_table(["child", "pid", "restarts", "ready"], kids)]
    return "\n".join(lines)


@click.command()
@click.option(
    "--config",
    "config_path",
    envvar="CLOB_CONFIG",
    type=click.Path(dir_okay=False, exists=True),
    help="daemon config (TOML): where its run and data directories are [env CLOB_CONFIG].",
)
@click.option("--timeout", type=float, default=3.0, show_default=True, help="seconds to wait for the daemon.")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON (decimals as strings).")
def status(config_path: str | None, timeout: float, as_json: bool) -> None:
    """Show the running daemon's state (local admin socket): per instrument journal seq,
    resting orders, best prices, checkpoint age and snapshotter lag, matcher pid and restarts,
    commit batch size and latency; and the supervisor's children.

    Exit 3 if the daemon does not answer within --timeout.
    """
    try:
        config = load(config_path)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc
    reply = ask(config, timeout)
    if reply is None:
        click.echo(f"no answer from the daemon at {config.admin_endpoint()} within {timeout}s", err=True)
        raise click.exceptions.Exit(EXIT_NO_ANSWER)
    doc = document(config, reply)
    click.echo(output.dumps(doc) if as_json else text(doc))
