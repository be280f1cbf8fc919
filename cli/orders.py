"""`clob order ...`: place, cancel, amend, mass-cancel and look up orders."""

from __future__ import annotations

from collections.abc import Callable

import click

from cli import output
from cli.common import Target, check_order_ref, connected, emit, gateway_options, order_ref_options, refuse
from engine.messages import Accepted, Cancelled
from gateway.client import Client, rejection
from gateway.protocol import Ack, Reject

_STP = ("cancel-newest", "cancel-oldest", "cancel-both", "decrement-and-cancel")

_Headline = Callable[[Ack], str]  # the first line printed for an Ack


@click.group()
def order() -> None:
    """Place, cancel, amend and look up orders (prices and quantities in decimals)."""


@order.command("new")
@click.argument("symbol")
@click.argument("side", type=click.Choice(["buy", "sell"], case_sensitive=False))
@click.argument("qty")
@click.argument("price", required=False)
@click.option(
    "--type", "order_type", type=click.Choice(["limit", "market"]), default="limit", show_default=True
)
@click.option("--tif", type=click.Choice(["gtc", "ioc", "fok"]), default="gtc", show_default=True)
@click.option("--post-only", is_flag=True, help="refuse the order if it would take liquidity.")
@click.option(
    "--stp",
    type=click.Choice(_STP),
    default="cancel-newest",
    show_default=True,
    help="self-trade prevention.",
)
@click.option("--client-order-id", help="your id for the order; resending it is answered, not placed again.")
@gateway_options
def new(
    target: Target,
    symbol: str,
    side: str,
    qty: str,
    price: str | None,
    order_type: str,
    tif: str,
    post_only: bool,
    stp: str,
    client_order_id: str | None,
) -> None:
    """Place one order: QTY and PRICE in decimals (PRICE is left out for --type market)."""
    if order_type == "limit" and price is None:
        raise click.UsageError("a limit order needs a PRICE (or pass --type market)")
    if order_type == "market" and price is not None:
        raise click.UsageError("a market order takes no PRICE")
    with connected(target) as client:
        reply = client.new_order(
            symbol,
            side,
            qty,
            price,
            order_type=order_type,
            tif=tif,
            post_only=post_only,
            stp=stp,
            client_order_id=client_order_id,
        )
        _answer(target, client, reply, _new_headline)


@order.command("cancel")
@click.argument("symbol")
@order_ref_options
@gateway_options
def cancel(target: Target, symbol: str, order_id: int, client_order_id: str) -> None:
    """Cancel one resting order."""
    check_order_ref(order_id, client_order_id)
    with connected(target) as client:
        _answer(target, client, client.cancel(symbol, order_id, client_order_id), _headline("cancelled"))


@order.command("amend")
@click.argument("symbol")
@order_ref_options
@click.option("--price", help="new price.")
@click.option("--qty", help="new TOTAL quantity, filled part included (as in FIX).")
@gateway_options
def amend(
    target: Target, symbol: str, order_id: int, client_order_id: str, price: str | None, qty: str | None
) -> None:
    """Change an order's price and/or total quantity. A pure size reduction keeps its queue place."""
    check_order_ref(order_id, client_order_id)
    if price is None and qty is None:
        raise click.UsageError("give --price and/or --qty")
    with connected(target) as client:
        reply = client.amend(symbol, order_id, client_order_id, price=price, qty=qty)
        _answer(target, client, reply, _headline("amended"))


@order.command("mass-cancel")
@click.argument("symbol", default="")
@gateway_options
def mass_cancel(target: Target, symbol: str) -> None:
    """Cancel all of the account's orders on SYMBOL, or on every instrument."""
    with connected(target) as client:
        replies = client.mass_cancel(symbol)
        refused = any(rejection(r) is not None for r in replies)
        docs = [output.reply_json(r, client.instruments.get(r.symbol)) for r in replies]
        texts = [_text(client, r, _mass_headline) for r in replies] or ["nothing to cancel"]
        emit(target, docs, "\n".join(texts))
        if refused:
            raise click.exceptions.Exit(1)


@order.command("status")
@click.argument("symbol")
@order_ref_options
@gateway_options
def status(target: Target, symbol: str, order_id: int, client_order_id: str) -> None:
    """Show one open order (exit code 1 if it is not open)."""
    check_order_ref(order_id, client_order_id)
    with connected(target) as client:
        reply = client.order_status(symbol, order_id, client_order_id)
        doc = output.reply_json(reply, client.instruments.get(symbol))
        if not reply.found:
            refuse(
                target, doc, f"{symbol}: no open order {order_id or client_order_id!r} of {target.account}"
            )
        u = output.Units(client.instruments.get(symbol))
        text = (
            f"{symbol} order {reply.order_id} ({reply.client_order_id}): {doc['side']} {u.qty(reply.qty)}"
            f" @ {u.price(reply.price)}, {u.qty(reply.remaining)} open"
        )
        emit(target, doc, text)


# --- printing ---------------------------------------------------------------------------


def _answer(target: Target, client: Client, reply: Ack | Reject, headline: _Headline) -> None:
    """Print the reply; a gateway Reject or an engine refusal exits with code 1."""
    doc = output.reply_json(reply, client.instruments.get(reply.symbol))
    text = _text(client, reply, headline)
    if rejection(reply) is not None:
        refuse(target, doc, text)
    emit(target, doc, text)


def _text(client: Client, reply: Ack | Reject, headline: _Headline) -> str:
    if isinstance(reply, Reject):
        return output.reject_text(reply)
    return output.ack_text(reply, client.instruments.get(reply.symbol), headline(reply))


def _new_headline(ack: Ack) -> str:
    order_id = next((e.order_id for e in ack.events if isinstance(e, Accepted)), 0)
    order = f" order {order_id}," if order_id else ""
    return (
        f"{output.order_state(ack)}: {ack.symbol}{order} client order id {ack.client_order_id}, seq {ack.seq}"
    )


def _headline(done: str) -> _Headline:
    def headline(ack: Ack) -> str:
        state = "rejected" if rejection(ack) is not None else done
        return f"{state}: {ack.symbol}, seq {ack.seq}"

    return headline


def _mass_headline(ack: Ack) -> str:
    cancelled = sum(1 for e in ack.events if isinstance(e, Cancelled))
    return f"{ack.symbol}: {cancelled} order(s) cancelled, seq {ack.seq}"
