"""Who gets which events of a journaled command, and what each may see.

The requester's account gets the events about its own orders in its `Ack`; every other
account the events touch (the maker of a trade, an order cancelled by self-trade
prevention) gets them in an `ExecutionReport`. A `Trade` names both sides' accounts; each
side sees it with the other side's account blanked, so nobody learns a counterparty.
"""

from __future__ import annotations

from collections.abc import Container

from msgspec.structs import replace

from engine.messages import Event, Trade


def split(
    account: str, events: list[Event], listening: Container[str]
) -> tuple[list[Event], dict[str, list[Event]] | None]:
    """(events for `account`, {other account: its events}) for accounts in `listening`.

    Other accounts nobody is logged on as are skipped (no copy is made for them); the second
    item is None when no other account is concerned, the common case.
    """
    mine: list[Event] = []
    others: dict[str, list[Event]] | None = None
    for event in events:
        if type(event) is not Trade:
            owner = event.account  # type: ignore[union-attr]  # every non-Trade event has one
            if owner == account:
                mine.append(event)
            elif owner in listening:
                others = _add(others, owner, event)
            continue
        maker, taker = event.maker_account, event.taker_account
        if maker == taker:  # both sides one account: nothing to hide
            if maker == account:
                mine.append(event)
            elif maker in listening:
                others = _add(others, maker, event)
            continue
        for side, view in ((taker, "maker_account"), (maker, "taker_account")):
            if side == account:
                mine.append(replace(event, **{view: ""}))
            elif side in listening:
                others = _add(others, side, replace(event, **{view: ""}))
    return mine, others


def _add(
    others: dict[str, list[Event]] | None, account: str, event: Event
) -> dict[str, list[Event]]:
    if others is None:
        return {account: [event]}
    others.setdefault(account, []).append(event)
    return others
