"""kill -9 of the whole process tree at random moments, several rounds, then an audit.

Each round starts `clob serve` on the same data directory, runs a load of crossing orders
from two accounts on both instruments, and SIGKILLs supervisor, gateway, matchers and
snapshotter at once after a random delay. Orders sent but not acked are resent (same
client_order_id) after the restart. At the end the client-side ledger is checked against
the journals, the restarted daemon's live state, `clob journal verify` and a replay.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec

from engine.messages import Accepted, Amended, Cancelled, Filled, Trade
from engine.messages import NewOrder as NewOrderCmd
from gateway import protocol as p
from gateway.client import Client, from_units
from journal import Journal
from tests.e2e.conftest import ROOT, Daemon

SYMBOLS = ("BTCUSDT", "ETHUSDT")
ACCOUNTS = ("buyer", "seller")
ROUNDS = 4
TIMEOUT = 1.0  # per request: a kill shows up as a timeout
# Checkpoints every few hundred records, so restarts recover from a checkpoint plus the
# journal's tail, and some kills land while the snapshotter writes one.
CHECKPOINT_OFTEN = """
[snapshotter]
checkpoint_interval_s = 0.3
checkpoint_every_records = 300
poll_interval_s = 0.02
"""


@dataclass
class Order:
    account: str
    symbol: str
    side: str
    qty: int
    price: int
    tif: str


@dataclass
class Ledger:
    sent: dict[str, Order] = field(default_factory=dict)  # client_order_id -> order
    # client_order_id -> (symbol, seq, events) of its NewOrder ack
    acked: dict[str, tuple[str, int, list[object]]] = field(default_factory=dict)
    # (account, symbol, seq, events) of acked cancels
    cancel_acks: list[tuple[str, str, int, list[object]]] = field(default_factory=list)
    duplicates: int = 0  # resends answered as duplicate=True
    resent: int = 0

    def pending(self) -> list[str]:
        return [coid for coid in self.sent if coid not in self.acked]


class Load:
    """One round's load: resend the unacked orders, then new orders and cancels until killed."""

    def __init__(
        self, daemon: Daemon, ledger: Ledger, rng: random.Random, round_no: int, timeout: float = TIMEOUT
    ) -> None:
        self.daemon, self.ledger, self.rng, self.round_no = daemon, ledger, rng, round_no
        self.timeout = timeout
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "load thread hung"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        clients: dict[str, Client] = {}
        try:
            for account in ACCOUNTS:
                clients[account] = Client(self.daemon.endpoint, timeout=self.timeout)
                clients[account].logon(account)
            for coid in self.ledger.pending():
                if not self._place(clients, coid, resend=True):
                    return
            i = 0
            while not self.stop.is_set():
                if self.rng.random() < 0.1 and not self._cancel(clients):
                    return
                coid = f"r{self.round_no}-{i}"
                i += 1
                self.ledger.sent[coid] = self._new_order()
                if not self._place(clients, coid, resend=False):
                    return
        except TimeoutError:
            return  # killed mid-logon
        except BaseException as exc:
            self.error = exc
        finally:
            for client in clients.values():
                client.close()

    def _new_order(self) -> Order:
        rng = self.rng
        account = rng.choice(ACCOUNTS)
        symbol = rng.choice(SYMBOLS)
        if account == "buyer":
            side, price = "buy", rng.randint(9900, 10040)
        else:
            side, price = "sell", rng.randint(9960, 10100)
        tif = "ioc" if rng.random() < 0.1 else "gtc"
        return Order(account, symbol, side, rng.randint(1, 20), price, tif)

    def _place(self, clients: dict[str, Client], coid: str, *, resend: bool) -> bool:
        """False when the daemon stopped answering (killed): the round is over."""
        order = self.ledger.sent[coid]
        try:
            reply = clients[order.account].new_order(
                order.symbol, order.side, qty_units=order.qty, price_units=order.price,
                tif=order.tif, client_order_id=coid, timeout=self.timeout,
            )  # fmt: skip
        except TimeoutError:
            return False
        assert isinstance(reply, p.Ack), f"{coid}: {reply}"
        assert reply.client_order_id in ("", coid)
        assert resend or not reply.duplicate, f"{coid}: duplicate on a first send"
        if resend:
            self.ledger.resent += 1
            self.ledger.duplicates += reply.duplicate
        self.ledger.acked[coid] = (order.symbol, reply.seq, list(reply.events))
        return True

    def _cancel(self, clients: dict[str, Client]) -> bool:
        account = self.rng.choice(ACCOUNTS)
        mine = [c for c, o in self.ledger.sent.items() if o.account == account and c in self.ledger.acked]
        if not mine:
            return True
        coid = self.rng.choice(mine[-200:])
        symbol = self.ledger.sent[coid].symbol
        try:
            reply = clients[account].cancel(symbol, client_order_id=coid, timeout=self.timeout)
        except TimeoutError:
            return False
        if isinstance(reply, p.Ack):
            self.ledger.cancel_acks.append((account, symbol, reply.seq, list(reply.events)))
        return True


def expected_remaining(records: list[object]) -> dict[int, int]:
    """order_id -> open quantity after one instrument's journal, computed from its events."""
    remaining: dict[int, int] = {}
    for record in records:
        for e in record.events:  # type: ignore[attr-defined]
            if isinstance(e, Accepted):
                remaining[e.order_id] = e.qty
            elif isinstance(e, Trade):
                for oid, reported in (
                    (e.maker_order_id, e.maker_remaining),
                    (e.taker_order_id, e.taker_remaining),
                ):
                    remaining[oid] -= e.qty
                    assert remaining[oid] == reported, f"seq {record.seq}: order {oid}"  # type: ignore[attr-defined]
            elif isinstance(e, Cancelled):
                assert remaining[e.order_id] == e.remaining, f"seq {record.seq}"  # type: ignore[attr-defined]
                remaining[e.order_id] = 0
            elif isinstance(e, Amended):
                remaining[e.order_id] = e.remaining
            elif isinstance(e, Filled):
                assert remaining[e.order_id] == 0, f"seq {record.seq}"  # type: ignore[attr-defined]
    return remaining


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args, "--config", str(daemon.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_kill9_of_the_whole_tree_in_rounds_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(2**32)))
    print(f"crash rounds seed={seed} (rerun with CRASH_SEED={seed})")
    rng = random.Random(seed)
    ledger = Ledger()
    daemon = Daemon(tmp_path, CHECKPOINT_OFTEN)
    started = time.monotonic()
    kills = 0
    try:
        for round_no in range(1, ROUNDS + 1):
            daemon.start()
            load = Load(daemon, ledger, random.Random(rng.random()), round_no)
            load.start()
            time.sleep(rng.uniform(0.3, 1.5))
            daemon.kill_all()
            kills += 1
            load.join()
        # The last restart: resend what is still unacked, then audit.
        daemon.start()
        load = Load(daemon, ledger, rng, ROUNDS + 1, timeout=10.0)  # no kill now: no timeout
        load.stop.set()  # resends only
        load.start()
        load.join()
        assert not ledger.pending(), f"still unacked after a calm restart: {ledger.pending()[:5]}"
        verified = audit_live(daemon, ledger, rng)
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()

    journals = {}
    for symbol in SYMBOLS:
        with Journal(daemon.data_dir / "journal" / f"{symbol}.lmdb", readonly=True) as journal:
            journals[symbol] = list(journal.read())
    audit_journals(journals, ledger)
    audit_cli(daemon, verified["books"])
    print(
        f"crash rounds: seed={seed} rounds={ROUNDS} kills={kills} sent={len(ledger.sent)}"
        f" acked={len(ledger.acked)} cancels_acked={len(ledger.cancel_acks)} resent={ledger.resent}"
        f" resent_duplicates={ledger.duplicates}"
        f" verified_live={verified['checked']} journal_records={sum(map(len, journals.values()))}"
        f" losses=0 duplicates=0 in {time.monotonic() - started:.1f}s"
    )


def audit_live(daemon: Daemon, ledger: Ledger, rng: random.Random) -> dict[str, object]:
    """(2) each acked order's live remaining quantity equals the one its journal events give."""
    # Read the journals while the daemon runs (readonly LMDB readers are fine alongside).
    remaining: dict[str, dict[int, int]] = {}  # order ids are per instrument
    for symbol in SYMBOLS:
        with Journal(daemon.data_dir / "journal" / f"{symbol}.lmdb", readonly=True) as journal:
            remaining[symbol] = expected_remaining(list(journal.read()))
    resting, gone = [], []
    for coid, (symbol, _seq, events) in ledger.acked.items():
        accepted = [e for e in events if isinstance(e, Accepted)]
        if not accepted:
            continue  # refused by the engine: nothing to look up
        (resting if remaining[symbol][accepted[0].order_id] > 0 else gone).append(
            (coid, symbol, accepted[0].order_id)
        )
    sample = resting if len(resting) <= 150 else rng.sample(resting, 150)
    sample += gone if len(gone) <= 100 else rng.sample(gone, 100)
    clients = {a: Client(daemon.endpoint, timeout=10) for a in ACCOUNTS}
    books: dict[str, p.BookReply] = {}
    try:
        for account, client in clients.items():
            client.logon(account)
        for coid, symbol, order_id in sample:
            status = clients[ledger.sent[coid].account].order_status(symbol, client_order_id=coid)
            want = remaining[symbol][order_id]
            if want:
                if not status.found:
                    by_id = clients[ledger.sent[coid].account].order_status(symbol, order_id)
                    raise AssertionError(
                        f"{coid} (order {order_id}) should rest with {want}: {status}, by id: {by_id}"
                    )
                assert status.order_id == order_id, (coid, status)
                assert status.remaining == want, (coid, status.remaining, want)
            else:
                assert not status.found, (coid, status)
        for symbol in SYMBOLS:
            books[symbol] = clients["buyer"].book(symbol, depth=50)
        instruments = clients["buyer"].instruments
    finally:
        for client in clients.values():
            client.close()
    assert len(resting) >= 1 and len(gone) >= 1, (len(resting), len(gone))
    decimal_books = {
        symbol: (
            [
                (from_units(instruments[symbol], price=px), from_units(instruments[symbol], qty=q))
                for px, q in b.bids
            ],
            [
                (from_units(instruments[symbol], price=px), from_units(instruments[symbol], qty=q))
                for px, q in b.asks
            ],
        )
        for symbol, b in books.items()
    }
    return {"checked": len(sample), "books": decimal_books}


def audit_journals(journals: dict[str, list[object]], ledger: Ledger) -> None:
    coids: list[tuple[str, str]] = []
    for symbol, records in journals.items():
        # (4) contiguous per instrument
        assert [r.seq for r in records] == list(range(1, len(records) + 1)), symbol  # type: ignore[attr-defined]
        coids += [
            (r.command.account, r.command.client_order_id)  # type: ignore[attr-defined]
            for r in records
            if isinstance(r.command, NewOrderCmd)  # type: ignore[attr-defined]
        ]
    # never placed twice; (3) nothing that was never sent
    assert len(coids) == len(set(coids)), "an order was placed twice"
    assert {c for _, c in coids} <= set(ledger.sent), "an order that was never sent is in the journal"
    for account, coid in coids:
        assert ledger.sent[coid].account == account
    # (1) every ack is in the journal at its seq with the same events
    for coid, (symbol, seq, events) in ledger.acked.items():
        record = journals[symbol][seq - 1]
        assert record.command.client_order_id == coid, (coid, seq)  # type: ignore[attr-defined]
        assert own_view(ledger.sent[coid].account, record.events) == events, (coid, seq)  # type: ignore[attr-defined]
    for account, symbol, seq, events in ledger.cancel_acks:
        assert own_view(account, journals[symbol][seq - 1].events) == events, (symbol, seq)  # type: ignore[attr-defined]


def own_view(account: str, events: list[object]) -> list[object]:
    """The journaled events as `account`'s Ack shows them: its own orders' events, and its
    trades with the counterparty's account blanked."""
    out: list[object] = []
    for e in events:
        if isinstance(e, Trade):
            if e.maker_account == e.taker_account == account:
                out.append(e)
            elif e.taker_account == account:
                out.append(msgspec.structs.replace(e, maker_account=""))
            elif e.maker_account == account:
                out.append(msgspec.structs.replace(e, taker_account=""))
        elif e.account == account:  # type: ignore[attr-defined]
            out.append(e)
    return out


def audit_cli(daemon: Daemon, books: dict[str, tuple[list[tuple[Decimal, Decimal]], ...]]) -> None:
    # (5) the determinism audit passes
    verify = cli(daemon, "journal", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # (6) a replay from scratch gives the live book
    for symbol in SYMBOLS:
        out = cli(daemon, "replay", symbol, "--snapshot", "none", "--depth", "50", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        replayed = (
            [(Decimal(px), Decimal(q)) for px, q, _n in doc["bids"]],
            [(Decimal(px), Decimal(q)) for px, q, _n in doc["asks"]],
        )
        assert replayed == books[symbol], symbol
