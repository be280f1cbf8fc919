"""`clob book` (once, or refreshed with --watch) and `clob ping`: looks at the gateway."""

from __future__ import annotations

import sys
import time

import click

from cli import output
from cli.common import Target, connected, emit, gateway_options
from gateway.client import decimal_book


@click.command()
@click.argument("symbol")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True, help="levels per side.")
@click.option("--watch", is_flag=True, help="refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=0.5,
    show_default=True,
    help="seconds between refreshes (--watch).",
)
@gateway_options
def book(target: Target, symbol: str, depth: int, watch: bool, interval: float) -> None:
    """Show SYMBOL's aggregated book: asks above bids, prices and quantities in decimals.

    With --watch, refresh it every --interval seconds until Ctrl-C: in place on a terminal,
    otherwise as successive snapshots separated by a line.
    """
    try:
        with connected(target) as client:
            tty = sys.stdout.isatty()
            while True:
                reply = client.book(symbol, depth)  # first: an unknown symbol is the gateway's reject
                inst = client.instrument(symbol)
                if watch and tty and not target.as_json:
                    click.echo(_CLEAR, nl=False)
                emit(target, output.reply_json(reply, inst), output.ladder(decimal_book(inst, reply)))
                if not watch:
                    return
                if not tty and not target.as_json:
                    click.echo(_SEPARATOR)
                time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise
    # Ctrl-C is how a watch ends: exit 0.


_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
_SEPARATOR = "-" * 40


@click.command()
@gateway_options
def ping(target: Target) -> None:
    """Check that the gateway answers, and how fast (no logon needed)."""
    with connected(target, logon=False) as client:
        seconds = client.ping()
        doc = {"type": "pong", "endpoint": target.endpoint, "rtt_ms": round(seconds * 1000, 3)}
        emit(target, doc, f"pong from {target.endpoint} in {seconds * 1000:.2f} ms")
