"""Who sees which events (gateway.routing.split), without processes."""

from __future__ import annotations

from engine import messages as E
from gateway.routing import split

BUY, SELL = E.Side.BUY, E.Side.SELL


def trade(maker: str, taker: str) -> E.Trade:
    return E.Trade(1, 100, 5, SELL, 10, maker, 0, 11, taker, 3)


def accepted(account: str) -> E.Accepted:
    return E.Accepted(11, account, "c", SELL, 100, 8, E.OrderType.LIMIT, E.TimeInForce.GTC)


def test_own_events_only_is_the_common_case() -> None:
    events: list[E.Event] = [accepted("a")]
    assert split("a", events, {"a": 1, "b": 1}) == (events, None)


def test_each_side_of_a_trade_sees_only_its_own_account() -> None:
    filled = E.Filled(10, "m", "mc", 5)
    events: list[E.Event] = [accepted("t"), trade("m", "t"), filled]
    mine, others = split("t", events, {"m"})
    assert mine == [accepted("t"), E.Trade(1, 100, 5, SELL, 10, "", 0, 11, "t", 3)]
    assert others == {"m": [E.Trade(1, 100, 5, SELL, 10, "m", 0, 11, "", 3), filled]}
    assert events[1] == trade("m", "t")  # the matcher's events are not modified


def test_accounts_nobody_is_logged_on_as_get_nothing() -> None:
    mine, others = split("t", [trade("m", "t"), E.Filled(10, "m", "mc", 5)], set())
    assert len(mine) == 1 and others is None


def test_a_trade_within_one_account_is_shown_whole() -> None:
    assert split("a", [trade("a", "a")], set()) == ([trade("a", "a")], None)
    assert split("x", [trade("a", "a")], {"a"}) == ([], {"a": [trade("a", "a")]})


def test_self_trade_prevention_cancel_of_another_accounts_order_is_not_the_requesters() -> None:
    cancel = E.Cancelled(10, "b", "bc", 4, E.CancelReason.SELF_TRADE)
    assert split("a", [cancel], {"b"}) == ([], {"b": [cancel]})
