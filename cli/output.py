"""Replies as text for people and as JSON for scripts, with prices and quantities in decimals.

JSON mirrors the protocol (docs/protocol.md): the same field names, a "type" per reply and an
"event" per event, enums as lower-case names, reject codes with their name beside them, and
prices and quantities as exact decimal strings (never floats).
"""

from __future__ import annotations

from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgspec

from engine.messages import Accepted, Amended, Cancelled, Event, Filled, OrderType, Rejected, Side, Trade
from gateway.client import DecimalBook, from_units, reason_name, rejection
from gateway.protocol import Ack, InstrumentInfo, Reject, Reply

_PRICES = frozenset({"price"})
_QTYS = frozenset({"qty", "remaining", "maker_remaining", "taker_remaining"})
_EVENT_NAMES = {cls: cls.__name__.lower() for cls in (Accepted, Rejected, Trade, Cancelled, Amended, Filled)}

Doc = dict[str, Any]


def dumps(document: object) -> str:
    return msgspec.json.encode(document).decode()


# --- JSON -------------------------------------------------------------------------------


def _value(name: str, value: object, inst: InstrumentInfo | None) -> object:
    if isinstance(value, IntEnum):
        return value.name.lower()
    if inst is not None and isinstance(value, int) and not isinstance(value, bool):
        if name in _PRICES:
            return str(from_units(inst, price=value))
        if name in _QTYS:
            return str(from_units(inst, qty=value))
    return value


def event_json(event: Event, inst: InstrumentInfo | None) -> Doc:
    doc: Doc = {"event": _EVENT_NAMES[type(event)]}
    for name in event.__struct_fields__:
        doc[name] = _value(name, getattr(event, name), inst)
    if isinstance(event, Rejected):
        doc["code"] = int(event.reason)
    return doc


def reply_json(reply: Reply, inst: InstrumentInfo | None) -> Doc:
    """Any reply as a JSON-ready dict (`inst` converts its units; None leaves them as ints)."""
    doc: Doc = {"type": type(reply).__struct_config__.tag}
    for name in reply.__struct_fields__:
        value = getattr(reply, name)
        if name == "events":
            doc[name] = [event_json(e, inst) for e in value]
        elif name in ("bids", "asks") and inst is not None:
            doc[name] = [[str(from_units(inst, price=px)), str(from_units(inst, qty=q))] for px, q in value]
        elif name == "side" and value in Side._value2member_map_:
            doc[name] = Side(value).name.lower()
        elif name == "instruments":
            doc[name] = [msgspec.structs.asdict(i) for i in value]
        else:
            doc[name] = _value(name, value, inst)
    if isinstance(reply, Reject):
        doc["reason"] = reason_name(reply.code)
    return doc


def reject_json(reject: Reject) -> Doc:
    return reply_json(reject, None)


# --- text -------------------------------------------------------------------------------


class Units:
    """Formats one instrument's integer units as decimals (raw ints if it is unknown)."""

    def __init__(self, inst: InstrumentInfo | None) -> None:
        self.inst = inst

    def price(self, units: int) -> str:
        return str(units) if self.inst is None else str(from_units(self.inst, price=units))

    def qty(self, units: int) -> str:
        return str(units) if self.inst is None else str(from_units(self.inst, qty=units))


def event_line(event: Event, u: Units) -> str:
    if isinstance(event, Accepted):
        price = "market" if event.order_type is OrderType.MARKET else u.price(event.price)
        kind = f"{event.order_type.name.lower()} {event.tif.name.lower()}"
        return f"accepted   order {event.order_id} {_name(event.side)} {u.qty(event.qty)} @ {price} {kind}"
    if isinstance(event, Rejected):
        about = f" (order {event.order_id})" if event.order_id else ""
        return f"rejected   {event.reason.name} ({int(event.reason)}): {event.text}{about}"
    if isinstance(event, Trade):
        return (
            f"trade {event.trade_id}    {u.qty(event.qty)} @ {u.price(event.price)},"
            f" aggressor {_name(event.aggressor)};"
            f" maker order {event.maker_order_id} ({u.qty(event.maker_remaining)} left),"
            f" taker order {event.taker_order_id} ({u.qty(event.taker_remaining)} left)"
        )
    if isinstance(event, Cancelled):
        return f"cancelled  order {event.order_id}: {u.qty(event.remaining)} open, {_name(event.reason)}"
    if isinstance(event, Amended):
        priority = "priority kept" if event.priority_kept else "to the back of the queue"
        return (
            f"amended    order {event.order_id}: {u.qty(event.qty)} @ {u.price(event.price)},"
            f" {u.qty(event.remaining)} open, {priority}"
        )
    return f"filled     order {event.order_id}: {u.qty(event.qty)}"


def order_state(ack: Ack) -> str:
    """What became of the order a NewOrder placed, from its Ack's events."""
    if rejection(ack) is not None:
        return "rejected"
    order_id = next((e.order_id for e in ack.events if isinstance(e, Accepted)), 0)
    traded = any(isinstance(e, Trade) and e.taker_order_id == order_id for e in ack.events)
    if any(isinstance(e, Filled) and e.order_id == order_id for e in ack.events):
        return "filled"
    if any(isinstance(e, Cancelled) and e.order_id == order_id for e in ack.events):
        return "partially filled, rest cancelled" if traded else "cancelled"
    return "partially filled, rest resting" if traded else "resting"


def ack_text(ack: Ack, inst: InstrumentInfo | None, headline: str) -> str:
    dup = " (duplicate: the original outcome of an earlier send)" if ack.duplicate else ""
    lines = [f"{headline}{dup}"]
    lines += [f"  {event_line(e, Units(inst))}" for e in ack.events]
    return "\n".join(lines)


def reject_text(reject: Reject) -> str:
    about = f" [{reject.symbol}]" if reject.symbol else ""
    return f"rejected{about}: {reason_name(reject.code)} ({reject.code}): {reject.text}"


def ladder(book: DecimalBook) -> str:
    """Asks above bids, highest price on top, the spread between them."""
    rows = [("ask", lv.price, lv.qty) for lv in reversed(book.asks)] + [
        ("bid", lv.price, lv.qty) for lv in book.bids
    ]
    width_p = max([len(str(r[1])) for r in rows] + [5])
    width_q = max([len(str(r[2])) for r in rows] + [3])
    lines = [f"{book.symbol}  seq {book.seq}", f"     {'price':>{width_p}}  {'qty':>{width_q}}"]
    lines += [
        f"{side}  {price!s:>{width_p}}  {qty!s:>{width_q}}" for side, price, qty in rows[: len(book.asks)]
    ]
    lines.append(_spread(book, 5 + width_p + 2 + width_q))
    lines += [
        f"{side}  {price!s:>{width_p}}  {qty!s:>{width_q}}" for side, price, qty in rows[len(book.asks) :]
    ]
    return "\n".join(lines)


def _spread(book: DecimalBook, width: int) -> str:
    if book.bids and book.asks:
        spread: Decimal = book.asks[0].price - book.bids[0].price
        label = f" spread {spread} "
    else:
        label = " one-sided " if book.bids or book.asks else " empty "
    return label.center(width, "-")


def _name(member: IntEnum) -> str:
    return member.name.lower().replace("_", " ")
