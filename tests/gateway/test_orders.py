"""Orders to matchers and answers back: stamping, batching, routing, fan-out, queries."""

from __future__ import annotations

import os
import signal
import time

from engine import messages as E
from gateway import protocol as P
from matcher import link
from tests.gateway.conftest import Rig
from tests.gateway.harness import order


def test_commands_are_stamped_with_seq_time_and_the_session_account(gw: Rig) -> None:
    alice, bob = gw.client("alice"), gw.client("bob")
    before = time.time_ns()
    alice.send(order("a1", req_id=11))
    bob.send(P.Cancel(symbol="BTCUSDT", orig_client_order_id="a1", req_id=12))
    alice.send(P.Amend(symbol="BTCUSDT", order_id=7, price=5, qty=300, req_id=13))
    items, _ = gw.matchers["BTCUSDT"].recv_commands(3)
    after = time.time_ns()
    seqs = [e.command.seq for e in items]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3  # in the order they were sent on
    by_req = {e.req_id: e for e in items}
    new, cancel, amend = (by_req[r].command for r in (11, 12, 13))
    assert all(before <= c.ts <= after for c in (new, cancel, amend))
    # The account is the session's, never the client's say (orders have no account field).
    assert (type(new), new.account, new.client_order_id) == (E.NewOrder, "alice", "a1")
    assert cancel == E.Cancel(cancel.seq, cancel.ts, "bob", 0, "a1")
    assert amend == E.Amend(amend.seq, amend.ts, "alice", 7, "", 5, 300)
    assert by_req[11].conn == by_req[13].conn != by_req[12].conn  # each carries its connection


def test_waiting_messages_go_to_the_matcher_as_one_frame(gw: Rig) -> None:
    c = gw.client("alice")
    os.kill(gw.gateway.proc.pid, signal.SIGSTOP)  # let 50 messages pile up, then one drain
    try:
        for i in range(50):
            c.send(order(f"b{i}"))
        time.sleep(0.2)
    finally:
        os.kill(gw.gateway.proc.pid, signal.SIGCONT)
    items, frames = gw.matchers["BTCUSDT"].recv_commands(50)
    assert [e.command.client_order_id for e in items] == [f"b{i}" for i in range(50)]  # type: ignore[union-attr]
    assert frames <= 3, frames


def test_order_batch_is_one_frame_and_answered_per_order(gw: Rig) -> None:
    c = gw.client("alice")
    orders = [order(f"ob{i}", req_id=100 + i) for i in range(10)]
    c.send(P.OrderBatch(orders=orders, req_id=99))
    items = gw.matchers["BTCUSDT"].recv_batch()
    assert len(items) == 10
    gw.matchers["BTCUSDT"].answer(items)
    acks = [c.recv() for _ in range(10)]
    # Each answer carries the batch's req_id (the orders' own are not used).
    assert [(a.client_order_id, a.req_id) for a in acks] == [(f"ob{i}", 99) for i in range(10)]  # type: ignore[union-attr]
    assert all(isinstance(a, P.Ack) and a.events[0].client_order_id == a.client_order_id  # type: ignore[union-attr]
               for a in acks)


def test_order_batch_mixing_instruments_and_bad_symbols(gw: Rig) -> None:
    c = gw.client("alice")
    c.send(P.OrderBatch(orders=[order("m1"), order("m2", symbol="ETHUSDT"), order("m3", symbol="NOPE")]))
    reject = c.recv()
    assert isinstance(reject, P.Reject) and reject.client_order_id == "m3"
    assert [e.command.client_order_id for e in gw.matchers["BTCUSDT"].recv_batch()] == ["m1"]  # type: ignore[union-attr]
    assert [e.command.client_order_id for e in gw.matchers["ETHUSDT"].recv_batch()] == ["m2"]  # type: ignore[union-attr]


def test_oversized_order_batch_is_refused_whole(gw: Rig) -> None:
    c = gw.client("alice")
    reply = c.ask(P.OrderBatch(orders=[order(f"x{i}") for i in range(65)], req_id=5))
    assert isinstance(reply, P.Reject) and reply.code == E.RejectReason.MESSAGE_TOO_LARGE
    assert reply.req_id == 5
    assert gw.matchers["BTCUSDT"].idle(200)


def test_trade_acks_the_taker_and_reports_to_the_maker_without_counterparties(gw: Rig) -> None:
    maker1, maker2 = gw.client("maker"), gw.client("maker")  # two sessions of one account
    taker, bystander = gw.client("taker"), gw.client("bystander")
    taker.send(order("t1", side=2, req_id=21))
    (env,) = gw.matchers["BTCUSDT"].recv_batch()
    trade = E.Trade(1, 10_000, 100, E.Side.SELL, 5, "maker", 0, 9, "taker", 0)
    events: list[E.Event] = [
        E.Accepted(9, "taker", "t1", E.Side.SELL, 10_000, 100, E.OrderType.LIMIT, E.TimeInForce.GTC),
        trade,
        E.Filled(5, "maker", "mk1", 100),
        E.Filled(9, "taker", "t1", 100),
    ]
    outcome = link.Outcome(env.conn, env.req_id, "taker", "t1", 42, events)
    gw.matchers["BTCUSDT"].send(link.OutcomeBatch("BTCUSDT", [outcome], []))
    ack = taker.recv()
    assert isinstance(ack, P.Ack)
    assert (ack.symbol, ack.seq, ack.req_id, ack.client_order_id, ack.duplicate) == (
        "BTCUSDT", 42, 21, "t1", False)
    assert ack.events == [events[0], E.Trade(1, 10_000, 100, E.Side.SELL, 5, "", 0, 9, "taker", 0), events[3]]
    for maker in (maker1, maker2):
        report = maker.recv()
        assert isinstance(report, P.ExecutionReport)
        assert (report.symbol, report.seq, report.req_id) == ("BTCUSDT", 42, 0)
        assert report.events == [E.Trade(1, 10_000, 100, E.Side.SELL, 5, "maker", 0, 9, "", 0), events[2]]
    assert bystander.silent(200) and taker.silent(0)


def test_duplicate_and_refusal_are_relayed(gw: Rig) -> None:
    c = gw.client("alice")
    c.send(order("d1", req_id=1))
    c.send(order("d2", req_id=2))
    items, _ = gw.matchers["BTCUSDT"].recv_commands(2)
    dup = link.Outcome(items[0].conn, 1, "alice", "d1", 3, [], duplicate=True)
    refusal = link.Refusal(items[1].conn, 2, "d2", int(E.RejectReason.STORAGE_FAILURE), "disk full")
    gw.matchers["BTCUSDT"].send(link.OutcomeBatch("BTCUSDT", [dup], [refusal]))
    ack, reject = c.recv(), c.recv()
    assert isinstance(ack, P.Ack) and ack.duplicate and ack.seq == 3 and ack.client_order_id == "d1"
    assert reject == P.Reject(int(E.RejectReason.STORAGE_FAILURE), "disk full", 2, "d2", "BTCUSDT")


def test_mass_cancel_fans_out_to_every_instrument(gw: Rig) -> None:
    c = gw.client("alice")
    c.send(P.MassCancel(req_id=61))
    answers = {}
    for symbol, m in gw.matchers.items():
        (env,) = m.recv_batch()
        assert type(env.command) is E.MassCancel and env.command.account == "alice"
        answers[symbol] = env
    eth = answers["ETHUSDT"]
    cancelled = E.Cancelled(3, "alice", "o3", 100, E.CancelReason.MASS_CANCEL)
    gw.matchers["ETHUSDT"].send(link.OutcomeBatch(
        "ETHUSDT", [link.Outcome(eth.conn, eth.req_id, "alice", "", 8, [cancelled])], []))
    ack = c.recv()
    assert ack == P.Ack("ETHUSDT", 8, [cancelled], 61)
    assert c.silent(100)  # not done until every instrument answered
    btc = answers["BTCUSDT"]
    gw.matchers["BTCUSDT"].send(link.OutcomeBatch(
        "BTCUSDT", [link.Outcome(btc.conn, btc.req_id, "alice", "", 4, [])], []))
    assert c.recv() == P.Ack("BTCUSDT", 4, [], 61)
    assert c.recv() == P.MassCancelDone(["ETHUSDT", "BTCUSDT"], 61)


def test_mass_cancel_of_one_symbol(gw: Rig) -> None:
    c = gw.client("alice")
    c.send(P.MassCancel(symbol="ETHUSDT", req_id=62))
    (env,) = gw.matchers["ETHUSDT"].recv_batch()
    assert gw.matchers["BTCUSDT"].idle(100)
    gw.matchers["ETHUSDT"].send(link.OutcomeBatch(
        "ETHUSDT", [], [link.Refusal(env.conn, env.req_id, "", 105, "disk full")]))
    assert c.recv() == P.Reject(105, "disk full", 62, "", "ETHUSDT")
    assert c.recv() == P.MassCancelDone(["ETHUSDT"], 62)  # the instruments it went to
    reply = c.ask(P.MassCancel(symbol="NOPE", req_id=63))
    assert isinstance(reply, P.Reject) and reply.code == E.RejectReason.UNKNOWN_INSTRUMENT
    assert c.silent(100)


def test_order_status_and_book_queries(gw: Rig) -> None:
    c = gw.client("alice")
    c.send(order("q0"))  # queued before the query: must reach the matcher first
    c.send(P.OrderStatus(symbol="BTCUSDT", orig_client_order_id="q0", req_id=71))
    m = gw.matchers["BTCUSDT"]
    msgs = [m.recv(), m.recv()]
    assert isinstance(msgs[0], link.CommandBatch)
    query = msgs[1]
    assert query == link.StatusQuery(query.conn, 71, "alice", 0, "q0")  # type: ignore[union-attr]
    m.send(link.StatusAnswer("BTCUSDT", query.conn, 71, True, 12, "q0", 1, 10_000, 100, 100))  # type: ignore[union-attr]
    assert c.recv() == P.OrderStatusReply("BTCUSDT", True, 12, "q0", 1, 10_000, 100, 100, 71)

    c.send(P.BookQuery(symbol="ETHUSDT", depth=3, req_id=72))
    bq = gw.matchers["ETHUSDT"].recv()
    assert bq == link.BookQuery(bq.conn, 72, 3)  # type: ignore[union-attr]
    gw.matchers["ETHUSDT"].send(link.BookAnswer("ETHUSDT", bq.conn, 72, 9, [(10, 1)], [(11, 2)]))  # type: ignore[union-attr]
    assert c.recv() == P.BookReply("ETHUSDT", 9, [(10, 1)], [(11, 2)], 72)

    reply = c.ask(P.BookQuery(symbol="ETHUSDT", depth=0))
    assert isinstance(reply, P.Reject) and reply.code == E.RejectReason.INVALID_FIELD


def test_answers_for_vanished_clients_do_not_disturb_others(gw: Rig) -> None:
    gone, stays = gw.client("maker"), gw.client("alice")
    gone.send(order("g1"))
    (env,) = gw.matchers["BTCUSDT"].recv_batch()
    gone.close()
    gw.clients.remove(gone)
    time.sleep(0.1)
    gw.matchers["BTCUSDT"].answer([env])
    stays.send(order("s1"))
    (env2,) = gw.matchers["BTCUSDT"].recv_batch()
    gw.matchers["BTCUSDT"].answer([env2])
    ack = stays.recv()
    assert isinstance(ack, P.Ack) and ack.client_order_id == "s1"
