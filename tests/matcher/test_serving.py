"""A running matcher: ready, acks after the commit, trades and market data, duplicates, queries.

Real processes, real ipc sockets, real LMDB; the test plays the gateway (see harness.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import msgspec

from daemon.notify import parse
from engine.messages import Accepted, Cancel, Filled, MassCancel, Rejected, RejectReason, Side, Trade
from journal import Journal
from matcher import link
from matcher.link import CommandBatch, MatcherReady, Outcome
from tests.matcher.conftest import Rig
from tests.matcher.harness import SYMBOL, buy_sell, journal_file, journaled, order_id, replay


def test_ready_is_sent_and_notified_after_recovery(rig: Rig, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(notify_path))
        manager.settimeout(20)
        matcher = rig.start(env={"NOTIFY_SOCKET": str(notify_path)})
        assert rig.last_ready == MatcherReady(SYMBOL, 0, matcher.pid)
        assert parse(manager.recv(4096)) == {"READY": "1", "CHILD": f"matcher-{SYMBOL}", "SEQ": "0"}
    assert "event=recovered seq=0 records=0" in matcher.log()


def test_outcomes_come_after_the_commit_with_contiguous_seqs(rig: Rig) -> None:
    rig.start()
    gw = rig.gateway
    orders = buy_sell(40, gw)
    ids = gw.send(orders[:30])  # one frame of 30 ...
    ids += [gw.send([order])[0] for order in orders[30:]]  # ... and ten frames of one
    seen_seqs: list[int] = []
    by_req: dict[int, Outcome] = {}
    while len(seen_seqs) < 40:
        batch = gw.recv()
        assert isinstance(batch, link.OutcomeBatch) and not batch.refusals
        # Ack after commit: whatever an OutcomeBatch acknowledges is already in the file.
        with Journal.open(journal_file(rig.config), readonly=True) as journal:
            assert journal.last_seq() >= max(o.seq for o in batch.outcomes)
        seen_seqs += [o.seq for o in batch.outcomes]
        by_req.update((o.req_id, o) for o in batch.outcomes)
    assert seen_seqs == list(range(1, 41))
    records = journaled(rig.config)
    for req_id, order in zip(ids, orders, strict=True):
        outcome = by_req[req_id]
        record = records[outcome.seq - 1]
        assert record.command == order and record.seq == outcome.seq and record.ts == order.ts
        assert record.events == outcome.events and isinstance(outcome.events[0], Accepted)
        assert (outcome.account, outcome.client_order_id) == (order.account, order.client_order_id)
    _, last = replay(rig.config)
    assert last == 40


def test_trades_across_accounts_and_market_data_on_both_topics(rig: Rig) -> None:
    rig.start()
    gw = rig.gateway
    maker = gw.order("alice", "a1", Side.SELL, 5, 10_000)
    taker = gw.order("bob", "b1", Side.BUY, 3, 10_100)
    first, second = gw.submit([maker]), gw.submit([taker])
    assert isinstance(first[0], Outcome) and first[0].seq == 1
    out = second[0]
    assert isinstance(out, Outcome) and out.seq == 2
    assert (out.account, out.client_order_id, out.duplicate) == ("bob", "b1", False)
    trade = next(e for e in out.events if isinstance(e, Trade))
    assert (trade.price, trade.qty, trade.maker_account, trade.taker_account) == (10_000, 3, "alice", "bob")
    assert any(isinstance(e, Filled) for e in out.events)

    messages = gw.market_data(3)
    orders_topic = f"test.clob.orders.events.v1.{SYMBOL}"
    trades_topic = f"test.clob.trades.v1.{SYMBOL}"
    assert [(topic, md.seq) for topic, md in messages] == [
        (orders_topic, 1),
        (orders_topic, 2),
        (trades_topic, 2),
    ]
    # Public market data: the same events with no account names or client order ids.
    public = messages[1][1].events
    assert [type(e) for e in public] == [type(e) for e in out.events] and messages[1][1].ts == taker.ts
    assert all(getattr(e, "account", "") == "" and getattr(e, "client_order_id", "") == "" for e in public)
    anonymous = msgspec.structs.replace(trade, maker_account="", taker_account="")
    assert messages[2][1].events == [anonymous] and messages[2][1].symbol == SYMBOL
    assert gw.no_market_data()


def test_resent_client_order_id_is_answered_with_the_original(rig: Rig) -> None:
    rig.start()
    gw = rig.gateway
    original = gw.order("alice", "x1", Side.BUY, 2, 9_000)
    [first] = gw.submit([original])
    assert isinstance(first, Outcome)
    # A later resend (even with other fields), a resend twice in one batch, a new order, and
    # the same client id under another account (not a duplicate).
    resend = gw.order("alice", "x1", Side.SELL, 7, 9_500)
    fresh = gw.order("alice", "x2", Side.BUY, 1, 9_000)
    fresh_again = gw.order("alice", "x2", Side.BUY, 1, 9_000)
    other = gw.order("bob", "x1", Side.BUY, 1, 9_000)
    dup, new, new_dup, bob, dup2 = gw.outcomes([resend, fresh, fresh_again, other, resend])
    assert (dup.seq, dup.events, dup.duplicate) == (1, first.events, True)
    assert (dup.account, dup.client_order_id) == ("alice", "x1")
    assert (new.seq, new.duplicate) == (2, False)
    assert (new_dup.seq, new_dup.events, new_dup.duplicate) == (2, new.events, True)
    assert (bob.seq, bob.duplicate) == (3, False)
    assert (dup2.seq, dup2.duplicate) == (1, True)
    assert [r.seq for r in journaled(rig.config)] == [1, 2, 3]  # no resend was journaled
    messages = gw.market_data(3)
    assert [md.seq for _, md in messages] == [1, 2, 3]  # nor published
    assert gw.no_market_data()


def test_orders_without_client_id_are_not_taken_for_duplicates(rig: Rig) -> None:
    rig.start()
    gw = rig.gateway
    answers = gw.outcomes([gw.order("a", "", Side.BUY, 1, 9_000), gw.order("a", "", Side.BUY, 1, 9_000)])
    assert [(a.seq, a.duplicate) for a in answers] == [(1, False), (2, False)]
    for answer in answers:
        assert isinstance(answer.events[0], Rejected)
        assert answer.events[0].reason == RejectReason.INVALID_FIELD


def test_cancels_and_mass_cancel_are_journaled_and_answered(rig: Rig) -> None:
    rig.start()
    gw = rig.gateway
    placed = gw.outcomes(buy_sell(6, gw, account="alice"))
    cancel, foreign = gw.outcomes(
        [
            Cancel(*gw.stamp(), "alice", order_id=order_id(placed[0])),
            Cancel(*gw.stamp(), "mallory", orig_client_order_id="o1"),
        ]
    )
    assert cancel.seq == 7 and cancel.client_order_id == ""
    assert foreign.client_order_id == "o1"
    assert isinstance(foreign.events[0], Rejected)
    [mass] = gw.outcomes([MassCancel(*gw.stamp(), "alice")])
    assert len(mass.events) == 5
    assert gw.book().bids == [] and gw.book().asks == []


def test_queries_answer_from_the_book_without_journaling(rig: Rig) -> None:
    rig.start()
    gw = rig.gateway
    answers = gw.outcomes(
        [
            gw.order("alice", "a1", Side.BUY, 5, 9_900),
            gw.order("alice", "a2", Side.BUY, 2, 9_900),
            gw.order("bob", "b1", Side.BUY, 1, 9_800),
            gw.order("bob", "b2", Side.SELL, 4, 10_100),
        ]
    )
    alice_id = order_id(answers[0])
    book = gw.book(depth=1)
    assert (book.symbol, book.seq, book.bids, book.asks) == (SYMBOL, 4, [(9_900, 7)], [(10_100, 4)])
    assert gw.book(depth=10).bids == [(9_900, 7), (9_800, 1)]
    by_id = gw.status("alice", order_id=alice_id)
    assert (by_id.found, by_id.client_order_id, by_id.side, by_id.price, by_id.remaining) == (
        True,
        "a1",
        int(Side.BUY),
        9_900,
        5,
    )
    assert gw.status("alice", coid="a2").qty == 2
    assert not gw.status("bob", order_id=alice_id).found  # not bob's order: nothing about it
    assert not gw.status("bob", coid="a1").found
    assert not gw.status("alice", order_id=999).found
    assert not gw.status("alice").found
    assert len(journaled(rig.config)) == 4


def test_a_bad_frame_is_dropped_and_serving_goes_on(rig: Rig) -> None:
    matcher = rig.start()
    gw = rig.gateway
    gw.send_raw(b"\x93not a link message")
    gw.send_raw(link.encoder.encode(CommandBatch([]))[:-1] + b"\x91\x93\xc4\x01c\x01\xa8nonsense")
    [answer] = gw.submit([gw.order("a", "c1", Side.BUY, 1, 9_000)])
    assert isinstance(answer, Outcome) and answer.seq == 1
    assert matcher.proc is not None and matcher.proc.poll() is None
    assert "bad_frame_dropped" in matcher.log()
    assert os.path.exists(journal_file(rig.config))
