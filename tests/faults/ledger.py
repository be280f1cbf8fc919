"""The client side of the crash campaign: a load of real clients and the ledger of every ack.

`Load` trades through `gateway.client.Client` from two accounts on both instruments until
told to stop, riding out whatever is killed under it: a request that times out (gateway
or matcher gone) or gets `BUSY` (matcher restarting) has an unknown or no outcome, so it
stays pending and is resent with the same client_order_id once the daemon answers again.
The `Ledger` keeps what was sent and every ack received; the audits check it against the
journals and the live daemon afterwards.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.messages import Accepted, Amended, Cancelled, Filled, RejectReason, Trade
from engine.messages import NewOrder as NewOrderCmd
from gateway import protocol as p
from gateway.client import Client

SYMBOLS = ("BTCUSDT", "ETHUSDT")
ACCOUNTS = ("buyer", "seller")
_RETRY_PAUSE_S = 0.05  # after a timeout or BUSY: the daemon is restarting something


class SessionLost(Exception):
    """NOT_LOGGED_ON: the gateway restarted and ZeroMQ reconnected silently; log on again."""


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
    resent: int = 0  # sends of an order already sent once
    resent_duplicates: int = 0  # ... answered as duplicate=True: it had been journaled
    busy: int = 0  # BUSY rejects (matcher restarting or saturated)
    timeouts: int = 0  # requests without an answer (something was killed)

    def pending(self) -> list[str]:
        return [coid for coid in self.sent if coid not in self.acked]


class Load:
    """New orders and cancels in a thread until `join()`; reconnects after every outage."""

    def __init__(self, endpoint: str, ledger: Ledger, rng: random.Random, tag: str, timeout: float) -> None:
        self.endpoint, self.ledger, self.rng, self.tag = endpoint, ledger, rng, tag
        self.timeout = timeout
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._next = 0

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "load thread hung"
        if self.error is not None:
            raise self.error

    def acks(self) -> int:
        return len(self.ledger.acked)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                clients = self._connect()
                if clients is None:
                    continue
                try:
                    self._trade(clients)
                except (TimeoutError, SessionLost):
                    time.sleep(_RETRY_PAUSE_S)  # something was killed: reconnect
                finally:
                    for client in clients.values():
                        client.close()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def _connect(self) -> dict[str, Client] | None:
        clients: dict[str, Client] = {}
        try:
            for account in ACCOUNTS:
                clients[account] = Client(self.endpoint, timeout=self.timeout)
                clients[account].logon(account)
            return clients
        except TimeoutError:
            self.ledger.timeouts += 1
            for client in clients.values():
                client.close()
            time.sleep(_RETRY_PAUSE_S)
            return None

    def _trade(self, clients: dict[str, Client]) -> None:
        """Until stopped, or until a timeout (then the caller reconnects)."""
        resend = True
        while not self.stop.is_set():
            if resend:
                resend = not all(self._place(clients, coid, first=False) for coid in self.ledger.pending())
                if resend:
                    time.sleep(_RETRY_PAUSE_S)
                    continue
            if self.rng.random() < 0.1:
                self._cancel(clients)
            coid = f"{self.tag}-{self._next}"
            self._next += 1
            self.ledger.sent[coid] = self._new_order()
            resend = not self._place(clients, coid, first=True)

    def settle(self) -> None:
        """With the daemon calm: resend everything still unacked until it is (bounded)."""
        deadline = time.monotonic() + 60
        while self.ledger.pending() and time.monotonic() < deadline:
            clients = self._connect()
            if clients is None:
                continue
            try:
                for coid in self.ledger.pending():
                    if not self._place(clients, coid, first=False):
                        time.sleep(_RETRY_PAUSE_S)
            except (TimeoutError, SessionLost):
                pass
            finally:
                for client in clients.values():
                    client.close()
        assert not self.ledger.pending(), f"still unacked on a calm daemon: {self.ledger.pending()[:5]}"

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

    def _place(self, clients: dict[str, Client], coid: str, *, first: bool) -> bool:
        """True once acked; False if BUSY (retry later). A timeout or a lost session
        propagates: reconnect."""
        order = self.ledger.sent[coid]
        try:
            reply = clients[order.account].new_order(
                order.symbol, order.side, qty_units=order.qty, price_units=order.price,
                tif=order.tif, client_order_id=coid, timeout=self.timeout,
            )  # fmt: skip
        except TimeoutError:
            self.ledger.timeouts += 1
            raise
        if not first:
            self.ledger.resent += 1
        if isinstance(reply, p.Reject) and reply.code == RejectReason.BUSY:
            self.ledger.busy += 1
            return False
        _check_session(reply)
        assert isinstance(reply, p.Ack), f"{coid}: {reply}"
        assert reply.client_order_id in ("", coid)
        if reply.duplicate:
            # Only a resend may be a duplicate: the first send of a new id never is.
            assert not first, f"{coid}: duplicate on its first send"
            self.ledger.resent_duplicates += 1
        self.ledger.acked[coid] = (order.symbol, reply.seq, list(reply.events))
        return True

    def _cancel(self, clients: dict[str, Client]) -> None:
        account = self.rng.choice(ACCOUNTS)
        ledger = self.ledger
        mine = [c for c, o in ledger.sent.items() if o.account == account and c in ledger.acked]
        if not mine:
            return
        coid = self.rng.choice(mine[-200:])
        symbol = ledger.sent[coid].symbol
        try:
            reply = clients[account].cancel(symbol, client_order_id=coid, timeout=self.timeout)
        except TimeoutError:
            ledger.timeouts += 1
            raise
        _check_session(reply)
        if isinstance(reply, p.Ack):
            ledger.cancel_acks.append((account, symbol, reply.seq, list(reply.events)))


def _check_session(reply: object) -> None:
    if isinstance(reply, p.Reject) and reply.code == RejectReason.NOT_LOGGED_ON:
        raise SessionLost(reply.text)


# --- audits ---------------------------------------------------------------------------------


def expected_remaining(records: list[Any]) -> dict[int, int]:
    """order_id -> open quantity after one instrument's journal, computed from its events
    (and each event's own remaining quantities checked against that running account)."""
    remaining: dict[int, int] = {}
    for record in records:
        for e in record.events:
            if isinstance(e, Accepted):
                remaining[e.order_id] = e.qty
            elif isinstance(e, Trade):
                for oid, reported in (
                    (e.maker_order_id, e.maker_remaining),
                    (e.taker_order_id, e.taker_remaining),
                ):
                    remaining[oid] -= e.qty
                    assert remaining[oid] == reported, f"seq {record.seq}: order {oid}"
            elif isinstance(e, Cancelled):
                assert remaining[e.order_id] == e.remaining, f"seq {record.seq}"
                remaining[e.order_id] = 0
            elif isinstance(e, Amended):
                remaining[e.order_id] = e.remaining
            elif isinstance(e, Filled):
                assert remaining[e.order_id] == 0, f"seq {record.seq}"
    return remaining


def audit_journals(journals: dict[str, list[Any]], ledger: Ledger) -> int:
    """Contiguous sequences; no order placed twice or never sent; every ack is in its
    journal at its seq with the same events. Returns the acks checked."""
    coids: list[tuple[str, str]] = []
    for symbol, records in journals.items():
        assert [r.seq for r in records] == list(range(1, len(records) + 1)), f"{symbol}: seq gap"
        commands = [r.command for r in records]
        coids += [(c.account, c.client_order_id) for c in commands if isinstance(c, NewOrderCmd)]
    assert len(coids) == len(set(coids)), "an order was placed twice"
    assert {c for _, c in coids} <= set(ledger.sent), "an order that was never sent is in the journal"
    for account, coid in coids:
        assert ledger.sent[coid].account == account
    for coid, (symbol, seq, events) in ledger.acked.items():
        record = journals[symbol][seq - 1]
        assert record.command.client_order_id == coid, (coid, seq)
        assert own_view(ledger.sent[coid].account, record.events) == events, (coid, seq)
    for account, symbol, seq, events in ledger.cancel_acks:
        assert own_view(account, journals[symbol][seq - 1].events) == events, (symbol, seq)
    return len(ledger.acked) + len(ledger.cancel_acks)


def own_view(account: str, events: list[Any]) -> list[object]:
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
        elif e.account == account:
            out.append(e)
    return out


def audit_live(
    endpoint: str, journals: dict[str, list[Any]], ledger: Ledger, rng: random.Random, sample: int
) -> int:
    """Each sampled acked order's live state (resting with its remaining quantity, or gone)
    equals what its journal's events give. Returns the orders checked."""
    remaining = {symbol: expected_remaining(records) for symbol, records in journals.items()}
    resting, gone = [], []
    for coid, (symbol, _seq, events) in ledger.acked.items():
        accepted = [e for e in events if isinstance(e, Accepted)]
        if accepted:  # else refused by the engine: nothing to look up
            order_id = accepted[0].order_id
            (resting if remaining[symbol][order_id] > 0 else gone).append((coid, symbol, order_id))
    picked = resting if len(resting) <= sample else rng.sample(resting, sample)
    picked += gone if len(gone) <= sample else rng.sample(gone, sample)
    clients = {a: Client(endpoint, timeout=10) for a in ACCOUNTS}
    try:
        for account, client in clients.items():
            client.logon(account)
        for coid, symbol, order_id in picked:
            status = clients[ledger.sent[coid].account].order_status(symbol, client_order_id=coid)
            want = remaining[symbol][order_id]
            if want:
                assert status.found, f"{coid} (order {order_id}) should rest with {want}: {status}"
                assert (status.order_id, status.remaining) == (order_id, want), (coid, status, want)
            else:
                assert not status.found, (coid, status)
    finally:
        for client in clients.values():
            client.close()
    assert resting and gone, (len(resting), len(gone))
    return len(picked)
