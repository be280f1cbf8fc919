"""Restarts, kill -9, failing commits, shutdown, determinism alarms: the matcher never acks
what is not durable and never serves a book that differs from its journal."""

from __future__ import annotations

import itertools
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Any

import msgspec
import pytest

from engine.messages import NewOrder, RejectReason, Side
from journal import Journal, Record
from matcher.link import Outcome, Refusal
from tests.matcher.conftest import Rig
from tests.matcher.harness import ROOT, TS0, buy_sell, coid_of, journal_file, journaled, replay


def _book_of_journal(rig: Rig, depth: int = 1000) -> tuple[Any, Any, int]:
    engine, seq = replay(rig.config)
    bids, asks = engine.depth(depth)
    return bids, asks, seq


def _live_book(rig: Rig, depth: int = 1000) -> tuple[Any, Any, int]:
    book = rig.gateway.book(depth)
    return book.bids, book.asks, book.seq


def _statuses(rig: Rig, max_order_id: int) -> list[Any]:
    """What both accounts are told about every order id (req_id left out)."""
    return [
        msgspec.structs.replace(rig.gateway.status(account, order_id), req_id=0)
        for account in ("alice", "bob")
        for order_id in range(1, max_order_id + 1)
    ]


def _crossing_flow(rig: Rig, n: int, prefix: str) -> list[NewOrder]:
    """Orders from two accounts around one price, so that many of them trade."""
    gw = rig.gateway
    out: list[NewOrder] = []
    for i in range(n):
        account = "alice" if i % 3 else "bob"
        side = Side.BUY if (i * 7) % 5 < 2 else Side.SELL
        price = 10_000 + (i * 13) % 21 - 10
        out.append(gw.order(account, f"{prefix}{i}", side, 1 + i % 4, price))
    return out


def test_restart_rebuilds_the_same_book_and_keeps_duplicates(rig: Rig) -> None:
    matcher = rig.start()
    gw = rig.gateway
    orders = _crossing_flow(rig, 300, "r")
    answers = [a for i in range(0, 300, 50) for a in gw.outcomes(orders[i : i + 50])]
    before = _live_book(rig), _statuses(rig, 300)
    assert sum(a.found for a in before[1]) > 10  # a book worth comparing
    assert matcher.stop() == 0

    matcher = rig.start()
    assert rig.last_ready.seq == 300
    assert "event=recovered seq=300 records=300" in matcher.log()
    assert (_live_book(rig), _statuses(rig, 300)) == before
    assert before[0] == _book_of_journal(rig)
    # A resend after the restart gets the original outcome from the journal.
    again = gw.outcomes(orders[10:12])
    assert [(a.seq, a.events, a.duplicate) for a in again] == [
        (a.seq, a.events, True) for a in answers[10:12]
    ]
    [new] = gw.submit([gw.order("carol", "c1", Side.BUY, 1, 9_000)])
    assert isinstance(new, Outcome) and new.seq == 301


def test_kill_9_while_commands_flow_loses_nothing_acked(rig: Rig) -> None:
    gw = rig.gateway
    sent: dict[int, NewOrder] = {}
    acked: dict[int, Outcome | Refusal] = {}
    orders = iter(_crossing_flow(rig, 4500, "k"))
    # Kill at different moments after the first batch of a burst is answered, so that it
    # lands before, during or after a commit, or between the commit and the replies.
    for delay in (0.0, 0.001, 0.003, 0.006, 0.012):
        matcher = rig.start()
        assert rig.last_ready.seq == len(journaled(rig.config))
        first: list[int] = []
        for _ in range(30):
            chunk = list(itertools.islice(orders, 30))
            req_ids = gw.send(chunk)
            sent.update(zip(req_ids, chunk, strict=True))
            first = first or req_ids
        acked.update(gw.answers(first))
        time.sleep(delay)
        os.kill(matcher.pid, signal.SIGKILL)
        matcher.wait()
        acked.update(_drain_answers(rig))
        _check_acked_are_journaled(rig, sent, acked)

    rig.start()
    records = journaled(rig.config)
    assert rig.last_ready.seq == len(records)
    assert _live_book(rig) == _book_of_journal(rig)
    # The client's recovery: resend everything not acked. Journaled ones come back as
    # duplicates with their journaled seq; the others are placed now, once.
    journaled_coids = {coid_of(r): r.seq for r in records}
    unacked = [req_id for req_id in sent if req_id not in acked]
    resent = gw.submit([sent[r] for r in unacked])
    for req_id, answer in zip(unacked, resent, strict=True):
        assert isinstance(answer, Outcome)
        coid = sent[req_id].client_order_id
        if coid in journaled_coids:
            assert answer.duplicate and answer.seq == journaled_coids[coid]
        else:
            assert not answer.duplicate and answer.seq > len(records)
    assert len(journaled(rig.config)) == len(sent)
    assert _live_book(rig) == _book_of_journal(rig)


def _check_acked_are_journaled(
    rig: Rig, sent: dict[int, NewOrder], acked: dict[int, Outcome | Refusal]
) -> list[Record]:
    records = journaled(rig.config)  # raises on a gap or a damaged record
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    for req_id, outcome in acked.items():
        assert isinstance(outcome, Outcome)
        record = records[outcome.seq - 1]  # every acked command is durable ...
        assert record.command == sent[req_id] and record.events == outcome.events  # ... as acked
    # Nothing journaled twice, nothing that was not sent.
    coids = [coid_of(r) for r in records]
    assert len(set(coids)) == len(coids)
    assert set(coids) <= {c.client_order_id for c in sent.values()}
    return records


def _drain_answers(rig: Rig) -> dict[int, Outcome | Refusal]:
    got: dict[int, Outcome | Refusal] = {}
    while True:
        try:
            got.update(rig.gateway.answers([-1], timeout=0.3))
        except TimeoutError:
            return got


def _fill_until_refused(rig: Rig, limit: int = 400) -> tuple[list[Outcome], list[Refusal]]:
    gw = rig.gateway
    outcomes: list[Outcome] = []
    refusals: list[Refusal] = []
    for round_ in range(limit):
        answers = gw.submit(buy_sell(200, gw, prefix=f"f{round_}-"))
        outcomes += [a for a in answers if isinstance(a, Outcome)]
        refusals += [a for a in answers if isinstance(a, Refusal)]
        if refusals:
            return outcomes, refusals
    raise AssertionError("the journal never failed")


def _ignore_sigxfsz_and_cap_files(limit: int) -> Any:
    def preexec() -> None:
        # Ignored, EFBIG comes back from write() instead of the signal killing the process
        # (an ignored disposition survives exec).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def test_disk_write_failure_refuses_the_batch_then_serving_resumes(rig: Rig) -> None:
    # RLIMIT_FSIZE makes LMDB's page writes fail with EFBIG: a real I/O error, like a full disk.
    matcher = rig.start(preexec_fn=_ignore_sigxfsz_and_cap_files(256 * 1024))
    gw = rig.gateway
    outcomes, refusals = _fill_until_refused(rig)
    assert {r.code for r in refusals} == {int(RejectReason.STORAGE_FAILURE)}
    assert all("journal" in r.text for r in refusals)
    last = outcomes[-1].seq
    assert [o.seq for o in outcomes] == list(range(1, last + 1))
    # Still alive and serving what is on disk, and only that.
    assert _live_book(rig) == _book_of_journal(rig)
    assert _book_of_journal(rig)[2] == last
    assert "JournalWriteError" in matcher.wait_log("event=commit_failed")
    assert "rollback=replay" in matcher.log()
    # While the disk stays full, each batch is refused and undone from a checkpoint.
    again = gw.submit(buy_sell(2000, gw, prefix="again-"))  # more than the file can take
    assert all(isinstance(a, Refusal) for a in again)
    assert "rollback=checkpoint" in matcher.wait_log("rollback=checkpoint")
    assert _live_book(rig) == _book_of_journal(rig)

    # Space comes back: the same orders go in now, continuing the journal.
    resource.prlimit(matcher.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    refused_orders = [NewOrder(*gw.stamp(), "acct", r.client_order_id, Side.BUY, 1, 9_000) for r in refusals]
    retried = gw.outcomes(refused_orders)
    assert [(a.seq, a.duplicate) for a in retried] == [(last + i, False) for i in range(1, len(retried) + 1)]
    assert _live_book(rig) == _book_of_journal(rig)
    assert matcher.stop() == 0


def test_full_journal_refuses_cleanly_and_keeps_serving(make_rig: Any) -> None:
    rig = make_rig("map_size_mb = 1\nmax_map_size_mb = 1")
    matcher = rig.start()
    outcomes, refusals = _fill_until_refused(rig)
    assert {r.code for r in refusals} == {int(RejectReason.STORAGE_FAILURE)}
    assert "JournalFull" in matcher.wait_log("event=commit_failed")
    assert _live_book(rig) == _book_of_journal(rig)
    assert [o.seq for o in outcomes] == list(range(1, outcomes[-1].seq + 1))
    # Still up: queries are answered, a resend of an acked order is still a duplicate.
    assert rig.gateway.status("acct", coid="nope").found is False
    assert matcher.proc is not None and matcher.proc.poll() is None


def test_sigterm_finishes_the_batch_and_exits_0_promptly(rig: Rig) -> None:
    matcher = rig.start()
    gw = rig.gateway
    sent: dict[int, NewOrder] = {}
    for i in range(20):
        chunk = buy_sell(50, gw, prefix=f"t{i}-")
        sent.update(zip(gw.send(chunk), chunk, strict=True))
    time.sleep(0.02)
    started = time.monotonic()
    assert matcher.stop(timeout=10) == 0
    assert time.monotonic() - started < 5
    acked = _drain_answers(rig)
    records = {r.seq: r for r in journaled(rig.config)}
    assert len(records) >= len(acked)
    for req_id, outcome in acked.items():
        assert isinstance(outcome, Outcome)
        assert records[outcome.seq].command == sent[req_id]
    assert "event=stopped signal=SIGTERM" in matcher.wait_log("event=stopped")
    idle = rig.start()
    started = time.monotonic()
    assert idle.stop() == 0 and time.monotonic() - started < 5


def test_a_journal_that_does_not_replay_is_a_determinism_alarm(rig: Rig) -> None:
    path = journal_file(rig.config)
    order = NewOrder(1, TS0, "alice", "a1", Side.BUY, 1, 9_000)
    with Journal.open(path) as journal:
        journal.append([Record(1, TS0, order, events=[])])  # the engine says Accepted
    matcher = rig.start(ready=False)
    assert matcher.wait(20) == 3
    assert "event=determinism_alarm" in matcher.log() and "seq=1" in matcher.log()
    with pytest.raises(TimeoutError):
        rig.gateway.recv(timeout=0.2)  # never ready


def test_a_second_matcher_for_the_same_journal_is_refused(rig: Rig) -> None:
    first = rig.start()
    second = rig.start(ready=False)
    assert second.wait(20) == 1
    assert "another matcher holds" in second.log()
    [answer] = rig.gateway.submit([rig.gateway.order("a", "c", Side.BUY, 1, 9_000)])
    assert isinstance(answer, Outcome)
    assert first.proc is not None and first.proc.poll() is None


def test_cannot_start_says_why_and_exits_non_zero(rig: Rig) -> None:
    for argv, reason in [
        (["--symbol", "NOPE", "--config", str(rig.config_path)], "not among the configured instruments"),
        (["--symbol", "BTCUSDT", "--config", str(rig.workdir / "missing.toml")], "cannot read"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "matcher", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1
        assert "event=cannot_start" in done.stderr and reason in done.stderr
