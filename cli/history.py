"""`clob orders`, `clob fills`, `clob order-history`: an account's orders and fills, for audit.

Answered from the order-history index (`journal.history`, `<data_dir>/history-index.lmdb`),
which points at the journal records of each order and fill: a lookup reads only those
records, never a scan of the journal. Each command first brings the index up to the end of
the journals itself (the daemon's snapshotter keeps it current, but the command also works
on a copied data dir, with the daemon stopped, or with the index file deleted: then it is
rebuilt). Journals are opened read-only; the only file written is the index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import click
import lmdb

from cli import output
from cli.journal import Source, journal_options, utc
from cli.output import Units
from engine.messages import Accepted, Amended, Cancelled, Filled, OrderType, Rejected, Trade
from journal import CorruptRecord, Journal, JournalError, Record
from journal.history import HistoryError, HistoryIndex, catch_up, fetch


def _name(value: object) -> str:
    return str(getattr(value, "name", value)).lower()


@contextlib.contextmanager
def _indexed(source: Source, symbols: list[str]) -> Iterator[tuple[HistoryIndex, dict[str, Journal]]]:
    """The index, caught up to the end of each journal, and the journals (read-only)."""
    data_dir = source.journal_dir.parent
    try:
        index = HistoryIndex.in_data_dir(data_dir)
    except (OSError, lmdb.Error) as exc:
        raise click.ClickException(f"cannot open the history index in {data_dir}: {exc}") from exc
    with index, contextlib.ExitStack() as stack:
        journals = {s: stack.enter_context(source.open(s)) for s in symbols}
        for symbol, journal in journals.items():
            try:
                catch_up(index, journal, symbol)
            except (CorruptRecord, JournalError, HistoryError, lmdb.Error) as exc:
                raise click.ClickException(f"cannot index {symbol}: {exc}") from exc
        yield index, journals


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --- one order's life -------------------------------------------------------------------


@dataclass
class Order:
    symbol: str
    order_id: int
    account: str = ""
    client_order_id: str = ""
    side: str = ""
    order_type: str = ""
    tif: str = ""
    price: int = 0
    qty: int = 0
    filled: int = 0
    remaining: int = 0
    status: str = "unknown"
    accepted_seq: int = 0
    accepted_ts: int = 0
    life: list[tuple[Record, str, dict[str, object]]] = field(default_factory=list)


def order_life(symbol: str, order_id: int, records: list[Record], u: Units) -> Order:
    """Replay what the records say about one order: its state now and every step of its life."""
    o = Order(symbol, order_id)
    for record in records:
        for event in record.events:
            step = _step(o, event, u)
            if step is not None:
                o.life.append((record, *step))
    return o


def _step(o: Order, event: object, u: Units) -> tuple[str, dict[str, object]] | None:
    oid = o.order_id
    if isinstance(event, Accepted) and event.order_id == oid:
        o.account, o.client_order_id = event.account, event.client_order_id
        o.side, o.order_type, o.tif = _name(event.side), _name(event.order_type), _name(event.tif)
        o.price, o.qty, o.remaining, o.status = event.price, event.qty, event.qty, "open"
        price = "market" if event.order_type is OrderType.MARKET else u.price(event.price)
        return "accepted", {
            "account": event.account,
            "client_order_id": event.client_order_id,
            "side": o.side,
            "qty": u.qty(event.qty),
            "price": price,
            "order_type": o.order_type,
            "tif": o.tif,
        }
    if isinstance(event, Trade) and oid in (event.maker_order_id, event.taker_order_id):
        maker = event.maker_order_id == oid
        o.filled += event.qty
        o.remaining = event.maker_remaining if maker else event.taker_remaining
        return "fill", {
            "trade_id": event.trade_id,
            "qty": u.qty(event.qty),
            "price": u.price(event.price),
            "liquidity": "maker" if maker else "taker",
            "remaining": u.qty(o.remaining),
        }
    if isinstance(event, Amended) and event.order_id == oid:
        o.price, o.qty, o.remaining = event.price, event.qty, event.remaining
        return "amended", {
            "qty": u.qty(event.qty),
            "price": u.price(event.price),
            "remaining": u.qty(event.remaining),
            "priority_kept": event.priority_kept,
        }
    if isinstance(event, Cancelled) and event.order_id == oid:
        o.status, o.remaining = "cancelled", 0
        return "cancelled", {"reason": _name(event.reason), "cancelled_qty": u.qty(event.remaining)}
    if isinstance(event, Filled) and event.order_id == oid:
        o.status, o.remaining = "filled", 0
        return "filled", {"qty": u.qty(event.qty)}
    if isinstance(event, Rejected) and event.order_id == oid:
        return "rejected", {"account": event.account, "reason": event.reason.name, "text": event.text}
    return None


def _details(kind: str, d: dict[str, object]) -> str:
    if kind == "accepted":
        return (
            f"{d['side']} {d['qty']} @ {d['price']} {d['order_type']} {d['tif']} coid={d['client_order_id']}"
        )
    if kind == "fill":
        return f"trade {d['trade_id']} {d['qty']} @ {d['price']} as {d['liquidity']}, {d['remaining']} left"
    if kind == "amended":
        keep = "priority kept" if d["priority_kept"] else "to the back of the queue"
        return f"{d['qty']} @ {d['price']}, {d['remaining']} open, {keep}"
    if kind == "cancelled":
        return f"{d['reason']}, {d['cancelled_qty']} cancelled"
    if kind == "filled":
        return f"{d['qty']} filled in full"
    return f"{d['reason']} ({d['account']}): {d['text']}"


def _order_doc(o: Order, u: Units) -> dict[str, object]:
    return {
        "symbol": o.symbol,
        "order_id": o.order_id,
        "account": o.account,
        "client_order_id": o.client_order_id,
        "side": o.side,
        "order_type": o.order_type,
        "tif": o.tif,
        "price": u.price(o.price),
        "qty": u.qty(o.qty),
        "filled": u.qty(o.filled),
        "remaining": u.qty(o.remaining),
        "status": o.status,
        "accepted_seq": o.accepted_seq,
        "accepted_time": utc(o.accepted_ts) if o.accepted_ts else None,
    }


def _load(index: HistoryIndex, journal: Journal, symbol: str, order_id: int, u: Units) -> Order:
    records = list(fetch(journal, index.order_seqs(symbol, order_id)))
    o = order_life(symbol, order_id, records, u)
    if o.life and o.life[0][1] == "accepted":
        o.accepted_seq, o.accepted_ts = o.life[0][0].seq, o.life[0][0].ts
    return o


# --- the commands -----------------------------------------------------------------------


@click.command()
@click.option("--account", required=True, help="the account whose orders to list.")
@click.option("--symbol", help="one instrument [default: every journal].")
@journal_options
def orders(source: Source, account: str, symbol: str | None) -> None:
    """An account's orders (from the history index) and what became of each: open, filled
    or cancelled, with the quantity filled and still open."""
    symbols = source.symbols(symbol)
    docs, rows = [], []
    with _indexed(source, symbols) as (index, journals):
        for sym, order_id, _seq in index.account_orders(account, symbol):
            if sym not in journals:
                continue
            u = Units(source.info(sym))
            o = _load(index, journals[sym], sym, order_id, u)
            doc = _order_doc(o, u)
            docs.append(doc)
            rows.append(
                (
                    str(order_id),
                    sym,
                    o.side,
                    str(doc["price"]),
                    str(doc["qty"]),
                    str(doc["filled"]),
                    str(doc["remaining"]),
                    o.status,
                    o.client_order_id,
                    str(doc["accepted_time"]),
                )
            )
    if source.as_json:
        click.echo(output.dumps(docs))
    elif not rows:
        click.echo(f"no orders of {account}")
    else:
        head = ("order", "symbol", "side", "price", "qty", "filled", "open", "status", "coid", "accepted")
        _table(head, rows)


@click.command()
@click.option("--account", required=True, help="the account whose fills to list.")
@click.option("--symbol", help="one instrument [default: every journal].")
@journal_options
def fills(source: Source, account: str, symbol: str | None) -> None:
    """Every fill of an account, oldest first per instrument: time, order, side, price,
    quantity, liquidity (maker/taker) and trade id."""
    symbols = source.symbols(symbol)
    docs: list[dict[str, object]] = []
    with _indexed(source, symbols) as (index, journals):
        for sym, seq, trade_id in index.account_fills(account, symbol):
            if sym not in journals:
                continue
            u = Units(source.info(sym))
            for record in fetch(journals[sym], [seq]):
                for event in record.events:
                    if isinstance(event, Trade) and event.trade_id == trade_id:
                        docs += _fill_docs(sym, record, event, account, u)
    if source.as_json:
        click.echo(output.dumps(docs))
    elif not docs:
        click.echo(f"no fills of {account}")
    else:
        head = ("time", "symbol", "order", "side", "price", "qty", "liquidity", "trade", "seq")
        keys = ("time", "symbol", "order_id", "side", "price", "qty", "liquidity", "trade_id", "seq")
        _table(head, [tuple(str(d[k]) for k in keys) for d in docs])


def _fill_docs(symbol: str, record: Record, t: Trade, account: str, u: Units) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    sides = {"buy": "sell", "sell": "buy"}
    for liquidity, who, order_id, remaining in (
        ("maker", t.maker_account, t.maker_order_id, t.maker_remaining),
        ("taker", t.taker_account, t.taker_order_id, t.taker_remaining),
    ):
        if who != account:
            continue
        side = _name(t.aggressor) if liquidity == "taker" else sides[_name(t.aggressor)]
        out.append(
            {
                "time": utc(record.ts),
                "ts": record.ts,
                "symbol": symbol,
                "seq": record.seq,
                "order_id": order_id,
                "side": side,
                "price": u.price(t.price),
                "qty": u.qty(t.qty),
                "liquidity": liquidity,
                "trade_id": t.trade_id,
                "remaining": u.qty(remaining),
            }
        )
    return out


@click.command("order-history")
@click.argument("order_id", type=click.IntRange(min=1))
@click.option("--symbol", required=True, help="the order's instrument.")
@journal_options
def order_history(source: Source, order_id: int, symbol: str) -> None:
    """Every event of one order's life, in order: accepted, each fill, amends, and how it
    ended (filled or cancelled), plus rejected attempts to cancel or amend it."""
    u = Units(source.info(symbol))
    with _indexed(source, [symbol]) as (index, journals):
        o = _load(index, journals[symbol], symbol, order_id, u)
    if not o.life:
        raise click.ClickException(f"{symbol} has no order {order_id}")
    if source.as_json:
        steps = [{"seq": r.seq, "ts": r.ts, "time": utc(r.ts), "event": kind, **d} for r, kind, d in o.life]
        click.echo(output.dumps({**_order_doc(o, u), "events": steps}))
        return
    click.echo(
        f"{symbol} order {order_id}  {o.account} {o.side} coid={o.client_order_id}:"
        f" {o.status}, {u.qty(o.filled)} filled, {u.qty(o.remaining)} open"
    )
    _table(
        ("seq", "time", "event", "details"),
        [(str(r.seq), utc(r.ts), kind, _details(kind, d)) for r, kind, d in o.life],
    )
