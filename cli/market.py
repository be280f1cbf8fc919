"""`clob book` and `clob ping`: one-shot looks at the gateway."""

from __future__ import annotations

import click

from cli import output
from cli.common import Target, connected, emit, gateway_options
from gateway.client import decimal_book


@click.command()
@click.argument("symbol")
@click.option("--depth", type=click.IntRange(min=1), default=10, show_default=True, help="levels per side.")
@gateway_options
def book(target: Target, symbol: str, depth: int) -> None:
    """Show SYMBOL's aggregated book: asks above bids, prices and quantities in decimals."""
    with connected(target) as client:
        reply = client.book(symbol, depth)
        inst = client.instrument(symbol)
        emit(target, output.reply_json(reply, inst), output.ladder(decimal_book(inst, reply)))


@click.command()
@gateway_options
def ping(target: Target) -> None:
    """Check that the gateway answers, and how fast (no logon needed)."""
    with connected(target, logon=False) as client:
        seconds = client.ping()
        doc = {"type": "pong", "endpoint": target.endpoint, "rtt_ms": round(seconds * 1000, 3)}
        emit(target, doc, f"pong from {target.endpoint} in {seconds * 1000:.2f} ms")
