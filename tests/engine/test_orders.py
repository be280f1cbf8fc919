"""Golden tests: one small scenario per rule, with the exact events it must produce."""

from __future__ import annotations

import pytest

from engine import Engine, Instrument
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    Cancelled,
    CancelReason,
    Filled,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Trade,
)

BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
STP = SelfTradePrevention


class Book:
    """An engine plus a command counter, so scenarios read like order tickets."""

    def __init__(self, **spec: int) -> None:
        self.engine = Engine(Instrument("TEST", **spec))
        self.seq = 0

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def order(self, account: str, coid: str, side: Side, qty: int, price: int = 0, **kw) -> list:
        s = self._next()
        return self.engine.process(NewOrder(s, s * 10, account, coid, side, qty, price, **kw))

    def cancel(self, account: str, order_id: int = 0, coid: str = "") -> list:
        s = self._next()
        return self.engine.process(Cancel(s, s * 10, account, order_id, coid))

    def amend(self, account: str, order_id: int, price: int = 0, qty: int = 0) -> list:
        s = self._next()
        return self.engine.process(Amend(s, s * 10, account, order_id, "", price, qty))

    def mass_cancel(self, account: str) -> list:
        s = self._next()
        return self.engine.process(MassCancel(s, s * 10, account))

    def queue(self, side: Side) -> list[tuple[int, int, int]]:
        """(order_id, price, remaining) best first, FIFO within a level."""
        cp = self.engine.checkpoint()
        return [(o.order_id, o.price, o.remaining) for o in (cp.bids if side == BUY else cp.asks)]


def accepted(oid, account, coid, side, price, qty, order_type=LIMIT, tif=GTC) -> Accepted:
    return Accepted(oid, account, coid, side, price, qty, order_type, tif)


def reasons(events: list) -> list:
    return [e.reason for e in events]


@pytest.fixture
def book() -> Book:
    return Book()


# --- limit orders and priority ------------------------------------------------------


def test_limit_order_rests_when_nothing_crosses(book):
    assert book.order("a", "1", BUY, 10, 100) == [accepted(1, "a", "1", BUY, 100, 10)]
    assert book.engine.best_bid() == 100 and book.engine.best_ask() is None


def test_trade_prints_at_makers_price_and_fills_both(book):
    book.order("s", "1", SELL, 10, 100)
    events = book.order("b", "1", BUY, 10, 105)
    assert events == [
        accepted(2, "b", "1", BUY, 105, 10),
        Trade(1, 100, 10, BUY, 1, "s", 0, 2, "b", 0),
        Filled(1, "s", "1", 10),
        Filled(2, "b", "1", 10),
    ]
    assert book.engine.order_count() == 0
    assert book.engine.last_trade_price == 100


def test_price_priority_then_time_priority(book):
    book.order("s", "1", SELL, 5, 101)
    book.order("s", "2", SELL, 5, 100)
    book.order("s", "3", SELL, 5, 100)
    events = book.order("b", "1", BUY, 12, 101)
    trades = [(e.maker_order_id, e.price, e.qty) for e in events if isinstance(e, Trade)]
    assert trades == [(2, 100, 5), (3, 100, 5), (1, 101, 2)]
    assert book.queue(SELL) == [(1, 101, 3)]


def test_partial_fill_of_taker_rests_remainder(book):
    book.order("s", "1", SELL, 4, 100)
    events = book.order("b", "1", BUY, 10, 100)
    assert events[-1] == Filled(1, "s", "1", 4)
    assert book.queue(BUY) == [(2, 100, 6)]


def test_thousands_of_orders_per_level_cancel_from_middle(book):
    for i in range(3000):
        book.order("s", str(i), SELL, 1, 100)
    for oid in range(2, 3000, 2):
        book.cancel("s", oid)
    assert book.engine.depth(1) == ([], [(100, 1501)])
    events = book.order("b", "x", BUY, 3, 100)
    assert [e.maker_order_id for e in events if isinstance(e, Trade)] == [1, 3, 5]


# --- market, IOC, FOK, post-only ----------------------------------------------------


def test_market_order_sweeps_and_never_rests(book):
    book.order("s", "1", SELL, 5, 100)
    book.order("s", "2", SELL, 5, 102)
    events = book.order("b", "m", BUY, 15, order_type=MARKET)
    assert events[0] == accepted(3, "b", "m", BUY, 0, 15, MARKET, IOC)
    assert [(e.price, e.qty) for e in events if isinstance(e, Trade)] == [(100, 5), (102, 5)]
    assert events[-1] == Cancelled(3, "b", "m", 5, CancelReason.IOC_REMAINDER)
    assert book.engine.order_count() == 0


def test_market_order_on_empty_book_is_cancelled(book):
    events = book.order("b", "m", BUY, 5, order_type=MARKET)
    assert reasons(events[1:]) == [CancelReason.IOC_REMAINDER]


def test_ioc_remainder_is_cancelled(book):
    book.order("s", "1", SELL, 4, 100)
    events = book.order("b", "1", BUY, 10, 100, tif=IOC)
    assert events[-1] == Cancelled(2, "b", "1", 6, CancelReason.IOC_REMAINDER)
    assert book.queue(BUY) == []


def test_fok_fills_completely(book):
    book.order("s", "1", SELL, 4, 100)
    book.order("s", "2", SELL, 6, 101)
    events = book.order("b", "1", BUY, 10, 101, tif=FOK)
    assert sum(e.qty for e in events if isinstance(e, Trade)) == 10
    assert events[-1] == Filled(3, "b", "1", 10)


def test_fok_that_cannot_fill_leaves_book_untouched(book):
    book.order("s", "1", SELL, 4, 100)
    book.order("s", "2", SELL, 6, 102)
    before = book.engine.checkpoint()
    events = book.order("b", "1", BUY, 10, 101, tif=FOK)
    assert events == [
        accepted(3, "b", "1", BUY, 101, 10, LIMIT, FOK),
        Cancelled(3, "b", "1", 10, CancelReason.FOK_UNFILLABLE),
    ]
    after = book.engine.checkpoint()
    assert (after.bids, after.asks, after.next_trade_id) == (before.bids, before.asks, before.next_trade_id)


def test_post_only_rests_or_is_rejected(book):
    book.order("s", "1", SELL, 5, 100)
    assert book.order("b", "1", BUY, 5, 99, post_only=True) == [accepted(2, "b", "1", BUY, 99, 5)]
    events = book.order("b", "2", BUY, 5, 100, post_only=True)
    assert reasons(events) == [RejectReason.POST_ONLY_WOULD_TAKE]
    assert book.queue(SELL) == [(1, 100, 5)]


# --- self-trade prevention ----------------------------------------------------------


def self_trade_book(book: Book) -> None:
    book.order("a", "old", SELL, 5, 100)  # id 1, same account as the taker below
    book.order("x", "other", SELL, 5, 101)  # id 2


def test_stp_cancel_newest_is_the_default(book):
    self_trade_book(book)
    events = book.order("a", "new", BUY, 8, 101)
    assert events[1:] == [Cancelled(3, "a", "new", 8, CancelReason.SELF_TRADE)]
    assert book.queue(SELL) == [(1, 100, 5), (2, 101, 5)]


def test_stp_cancel_oldest_keeps_matching(book):
    self_trade_book(book)
    events = book.order("a", "new", BUY, 8, 101, stp=STP.CANCEL_OLDEST)
    assert events[1:] == [
        Cancelled(1, "a", "old", 5, CancelReason.SELF_TRADE),
        Trade(1, 101, 5, BUY, 2, "x", 0, 3, "a", 3),
        Filled(2, "x", "other", 5),
    ]
    assert book.queue(BUY) == [(3, 101, 3)]


def test_stp_cancel_both(book):
    self_trade_book(book)
    events = book.order("a", "new", BUY, 8, 101, stp=STP.CANCEL_BOTH)
    assert events[1:] == [
        Cancelled(1, "a", "old", 5, CancelReason.SELF_TRADE),
        Cancelled(3, "a", "new", 8, CancelReason.SELF_TRADE),
    ]
    assert book.queue(SELL) == [(2, 101, 5)]


def test_stp_decrement_and_cancel_shrinks_larger_cancels_smaller(book):
    self_trade_book(book)
    events = book.order("a", "new", BUY, 8, 101, stp=STP.DECREMENT_AND_CANCEL)
    assert events[1:] == [
        Cancelled(1, "a", "old", 5, CancelReason.SELF_TRADE),
        Amended(3, "a", "new", 101, 3, 3, True),
        Trade(1, 101, 3, BUY, 2, "x", 2, 3, "a", 0),
        Filled(3, "a", "new", 3),
    ]
    assert book.queue(SELL) == [(2, 101, 2)]


def test_stp_decrement_when_taker_is_smaller(book):
    self_trade_book(book)
    events = book.order("a", "new", BUY, 3, 101, stp=STP.DECREMENT_AND_CANCEL)
    assert events[1:] == [
        Amended(1, "a", "old", 100, 2, 2, True),
        Cancelled(3, "a", "new", 3, CancelReason.SELF_TRADE),
    ]
    assert book.queue(SELL) == [(1, 100, 2), (2, 101, 5)]


def test_fok_with_self_trade_in_the_way_is_killed_untouched(book):
    self_trade_book(book)
    events = book.order("a", "new", BUY, 5, 101, tif=FOK)
    assert reasons(events[1:]) == [CancelReason.FOK_UNFILLABLE]
    assert book.queue(SELL) == [(1, 100, 5), (2, 101, 5)]


# --- cancel, amend, mass cancel -----------------------------------------------------


def test_cancel_by_order_id_and_by_client_order_id(book):
    book.order("a", "c1", BUY, 5, 100)
    book.order("a", "c2", BUY, 5, 99)
    assert book.cancel("a", order_id=1) == [Cancelled(1, "a", "c1", 5, CancelReason.USER)]
    assert book.cancel("a", coid="c2") == [Cancelled(2, "a", "c2", 5, CancelReason.USER)]
    assert book.engine.order_count() == 0


def test_cancel_of_unknown_or_foreign_order_is_rejected(book):
    book.order("a", "c1", BUY, 5, 100)
    assert reasons(book.cancel("a", order_id=42)) == [RejectReason.UNKNOWN_ORDER]
    assert reasons(book.cancel("b", order_id=1)) == [RejectReason.NOT_ORDER_OWNER]
    assert reasons(book.cancel("b", coid="c1")) == [RejectReason.UNKNOWN_ORDER]  # b has no c1
    assert book.queue(BUY) == [(1, 100, 5)]


def test_amend_reducing_quantity_keeps_priority(book):
    book.order("a", "1", BUY, 10, 100)
    book.order("b", "1", BUY, 10, 100)
    assert book.amend("a", 1, qty=4) == [Amended(1, "a", "1", 100, 4, 4, True)]
    assert book.queue(BUY) == [(1, 100, 4), (2, 100, 10)]


def test_amend_increasing_quantity_loses_priority(book):
    book.order("a", "1", BUY, 10, 100)
    book.order("b", "1", BUY, 10, 100)
    assert book.amend("a", 1, qty=12) == [Amended(1, "a", "1", 100, 12, 12, False)]
    assert book.queue(BUY) == [(2, 100, 10), (1, 100, 12)]


def test_amend_price_loses_priority_and_can_trade(book):
    book.order("s", "1", SELL, 5, 101)
    book.order("b", "1", BUY, 10, 100)
    events = book.amend("b", 2, price=101)
    assert events == [
        Amended(2, "b", "1", 101, 10, 10, False),
        Trade(1, 101, 5, BUY, 1, "s", 0, 2, "b", 5),
        Filled(1, "s", "1", 5),
    ]
    assert book.queue(BUY) == [(2, 101, 5)]


def test_amend_quantity_counts_what_was_filled(book):
    book.order("b", "1", BUY, 10, 100)
    book.order("s", "1", SELL, 6, 100)  # order 1 now 6 filled, 4 open
    assert book.amend("b", 1, qty=8) == [Amended(1, "b", "1", 100, 8, 2, True)]
    assert reasons(book.amend("b", 1, qty=6)) == [RejectReason.AMEND_QUANTITY_TOO_LOW]


def test_amend_rejections(book):
    book.order("a", "1", BUY, 10, 100, post_only=True)
    book.order("s", "1", SELL, 10, 105)
    assert reasons(book.amend("b", 1, qty=5)) == [RejectReason.NOT_ORDER_OWNER]
    assert reasons(book.amend("a", 1, price=100, qty=10)) == [RejectReason.AMEND_NO_CHANGE]
    assert reasons(book.amend("a", 1, price=105)) == [RejectReason.POST_ONLY_WOULD_TAKE]
    assert reasons(book.amend("a", 9)) == [RejectReason.UNKNOWN_ORDER]
    assert book.queue(BUY) == [(1, 100, 10)]


def test_mass_cancel_takes_only_that_accounts_orders(book):
    book.order("a", "1", BUY, 5, 100)
    book.order("b", "1", BUY, 5, 100)
    book.order("a", "2", SELL, 5, 110)
    events = book.mass_cancel("a")
    assert events == [
        Cancelled(1, "a", "1", 5, CancelReason.MASS_CANCEL),
        Cancelled(3, "a", "2", 5, CancelReason.MASS_CANCEL),
    ]
    assert book.queue(BUY) == [(2, 100, 5)] and book.queue(SELL) == []


# --- invalid commands ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"side": 3}, RejectReason.INVALID_SIDE),
        ({"qty": 0}, RejectReason.INVALID_QUANTITY),
        ({"qty": -10}, RejectReason.INVALID_QUANTITY),
        ({"qty": 15}, RejectReason.QUANTITY_OFF_LOT),
        ({"qty": 10_000}, RejectReason.QUANTITY_OUT_OF_RANGE),
        ({"price": 1003}, RejectReason.PRICE_OFF_TICK),
        ({"price": 0}, RejectReason.INVALID_PRICE),
        ({"price": 5000}, RejectReason.PRICE_OUT_OF_BAND),
        ({"order_type": 9}, RejectReason.INVALID_ORDER_TYPE),
        ({"tif": 9}, RejectReason.INVALID_TIME_IN_FORCE),
        ({"stp": 9}, RejectReason.INVALID_STP_MODE),
        ({"client_order_id": ""}, RejectReason.INVALID_FIELD),
        ({"tif": IOC, "post_only": True}, RejectReason.INVALID_TIME_IN_FORCE),
        ({"order_type": MARKET, "post_only": True}, RejectReason.INVALID_ORDER_TYPE),
        ({"client_order_id": "dup"}, RejectReason.DUPLICATE_CLIENT_ORDER_ID),
    ],
)
def test_invalid_new_order_is_rejected_and_changes_nothing(fields, reason):
    book = Book(tick_size=5, lot_size=10, min_qty=10, max_qty=1000, max_price=2000)
    book.order("a", "dup", SELL, 10, 1100)
    before = book.engine.checkpoint()
    ticket = {"account": "a", "client_order_id": "new", "side": BUY, "qty": 20, "price": 1000} | fields
    s = book._next()
    events = book.engine.process(NewOrder(seq=s, ts=s, **ticket))
    assert len(events) == 1 and isinstance(events[0], Rejected)
    assert events[0].reason == reason and events[0].text
    after = book.engine.checkpoint()
    assert (after.bids, after.asks, after.next_order_id) == (before.bids, before.asks, before.next_order_id)


def test_dynamic_price_band_follows_last_trade():
    book = Book(band_bps=1000)  # ±10% around the last trade
    book.order("s", "1", SELL, 1, 1000)
    book.order("b", "1", BUY, 1, 1000)
    assert book.engine.price_band() == (900, 1100)
    assert reasons(book.order("b", "2", BUY, 1, 899)) == [RejectReason.PRICE_OUT_OF_BAND]
    assert reasons(book.amend("s", 99, price=1200)) == [RejectReason.UNKNOWN_ORDER]
    assert book.order("b", "3", BUY, 1, 900)[0].order_id == 3


def test_views_depth_and_order(book):
    book.order("a", "1", BUY, 5, 100)
    book.order("b", "1", BUY, 7, 100)
    book.order("a", "2", BUY, 1, 98)
    book.order("a", "3", SELL, 2, 103)
    assert book.engine.depth(2) == ([(100, 12), (98, 1)], [(103, 2)])
    assert book.engine.order(2).remaining == 7 and book.engine.order(99) is None
