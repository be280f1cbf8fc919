"""The engine against the list-based reference model, driven by hypothesis.

Every command goes to both; their events must be identical and their books must hold the
same orders in the same priority. After every command the engine's own invariants are
checked, and at a random moment a twin is restored from a checkpoint and must behave
identically from then on.
"""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import Engine, Instrument
from engine.messages import (
    Amend,
    Cancel,
    MassCancel,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from engine.stepwise_checkpoint import LevelEncodings, encode_steps, run_to_end
from tests.engine.reference_model import Model, normalise
from tests.engine.test_stepwise_checkpoint import runs

SPEC = Instrument(
    "TEST", tick_size=5, lot_size=10, min_qty=10, max_qty=500, min_price=50, max_price=150, band_bps=0
)
ACCOUNTS = st.sampled_from(["a", "b", "c"])
COIDS = st.sampled_from([f"c{i}" for i in range(12)])
GOOD_PRICES = st.integers(18, 22).map(lambda p: p * 5)
GOOD_QTYS = st.integers(1, 6).map(lambda q: q * 10)
# Off-tick, out-of-band, non-positive, off-lot and out-of-range values.
ANY_PRICES = st.one_of(GOOD_PRICES, st.sampled_from([0, -5, 97, 45, 155]))
ANY_QTYS = st.one_of(GOOD_QTYS, st.sampled_from([0, -10, 15, 510]))
MOSTLY_GTC = st.sampled_from([TimeInForce.GTC] * 3 + [TimeInForce.IOC, TimeInForce.FOK])
STPS = st.sampled_from(SelfTradePrevention)


class EngineVersusModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.engine = Engine(SPEC)
        self.model = Model(SPEC)
        self.twin: Engine | None = None
        self.seq = 0
        self.open_qty: dict[int, int] = {}  # order_id -> open quantity, as the events tell it
        self.encodings = LevelEncodings()  # kept from each command's checkpoint to the next

    def _run(self, make) -> None:
        self.seq += 1
        cmd = make(self.seq)
        events = self.engine.process(cmd)
        assert normalise(events) == self.model.process(cmd), cmd
        if self.twin is not None:
            assert self.twin.process(cmd) == events
        self._account(events)

    def _account(self, events: list) -> None:
        """Quantity conservation, checked from the events alone."""
        for e in events:
            name = type(e).__name__
            if name == "Accepted":
                self.open_qty[e.order_id] = e.qty
            elif name == "Trade":
                sides = ((e.maker_order_id, e.maker_remaining), (e.taker_order_id, e.taker_remaining))
                for oid, rem in sides:
                    assert self.open_qty[oid] - e.qty == rem
                    self.open_qty[oid] = rem
            elif name == "Cancelled":
                assert self.open_qty[e.order_id] == e.remaining
                self.open_qty[e.order_id] = 0
            elif name == "Amended":
                self.open_qty[e.order_id] = e.remaining
            elif name == "Filled":
                assert self.open_qty[e.order_id] == 0

    @rule(
        account=ACCOUNTS,
        coid=COIDS,
        side=st.sampled_from(Side),
        price=GOOD_PRICES,
        qty=GOOD_QTYS,
        tif=MOSTLY_GTC,
        post_only=st.sampled_from([False, False, False, True]),
        stp=STPS,
    )
    def limit_order(self, account, coid, side, price, qty, tif, post_only, stp) -> None:
        self._run(
            lambda s: NewOrder(s, s, account, coid, side, qty, price, OrderType.LIMIT, tif, post_only, stp)
        )

    @rule(account=ACCOUNTS, coid=COIDS, side=st.sampled_from(Side), price=GOOD_PRICES, qty=GOOD_QTYS)
    def resting_order(self, account, coid, side, price, qty) -> None:
        """Liquidity: without a deep enough book most of the interesting rules never fire."""
        self._run(lambda s: NewOrder(s, s, account, coid, side, qty, price))

    @rule(
        account=ACCOUNTS,
        coid=COIDS,
        side=st.sampled_from(Side),
        qty=GOOD_QTYS,
        tif=st.sampled_from(TimeInForce),
        stp=STPS,
    )
    def market_order(self, account, coid, side, qty, tif, stp) -> None:
        self._run(lambda s: NewOrder(s, s, account, coid, side, qty, 0, OrderType.MARKET, tif, False, stp))

    @rule(
        account=ACCOUNTS,
        coid=COIDS,
        side=st.sampled_from(Side),
        price=ANY_PRICES,
        qty=ANY_QTYS,
        order_type=st.sampled_from(OrderType),
        tif=st.sampled_from(TimeInForce),
        post_only=st.booleans(),
        stp=STPS,
    )
    def any_order(self, account, coid, side, price, qty, order_type, tif, post_only, stp) -> None:
        self._run(lambda s: NewOrder(s, s, account, coid, side, qty, price, order_type, tif, post_only, stp))

    def _some_order(self, data) -> tuple[int, str, str]:
        """(order_id, owner, client_order_id) of a resting order, or of none at all."""
        resting = sorted(self.engine.orders.values(), key=lambda o: o.order_id)
        if not resting:
            return 99, "a", "none"
        order = data.draw(st.sampled_from(resting))
        return order.order_id, order.account, order.client_order_id

    @rule(data=st.data(), by_client_id=st.booleans(), someone_else=ACCOUNTS)
    def cancel(self, data, by_client_id, someone_else) -> None:
        order_id, owner, coid = self._some_order(data)
        account = data.draw(st.sampled_from([owner, owner, owner, someone_else]))
        self._run(lambda s: Cancel(s, s, account, 0 if by_client_id else order_id, coid))

    @rule(
        data=st.data(),
        price=st.one_of(st.just(0), ANY_PRICES),
        qty=st.one_of(st.just(0), ANY_QTYS),
        someone_else=ACCOUNTS,
    )
    def amend(self, data, price, qty, someone_else) -> None:
        order_id, owner, _ = self._some_order(data)
        account = data.draw(st.sampled_from([owner, owner, owner, someone_else]))
        self._run(lambda s: Amend(s, s, account, order_id, "", max(price, 0), max(qty, 0)))

    @rule(account=ACCOUNTS, order_id=st.integers(0, 60), coid=COIDS)
    def cancel_anything(self, account, order_id, coid) -> None:
        self._run(lambda s: Cancel(s, s, account, order_id, coid))

    @rule(account=ACCOUNTS)
    def mass_cancel(self, account) -> None:
        self._run(lambda s: MassCancel(s, s, account))

    @precondition(lambda self: self.twin is None)
    @rule()
    def fork(self) -> None:
        self.twin = Engine(SPEC)
        self.twin.restore(self.engine.checkpoint())
        assert self.twin.state_hash() == self.engine.state_hash()

    @invariant()
    def same_book_as_model(self) -> None:
        cp = self.engine.checkpoint()
        assert [(o.order_id, o.price, o.remaining) for o in cp.bids] == self.model.resting(Side.BUY)
        assert [(o.order_id, o.price, o.remaining) for o in cp.asks] == self.model.resting(Side.SELL)

    @invariant()
    def book_is_sound(self) -> None:
        cp = self.engine.checkpoint()
        bid, ask = self.engine.best_bid(), self.engine.best_ask()
        assert bid is None or ask is None or bid < ask, "crossed book"
        for orders, better in ((cp.bids, lambda a, b: a >= b), (cp.asks, lambda a, b: a <= b)):
            for prev, nxt in itertools.pairwise(orders):
                assert better(prev.price, nxt.price), "price priority"
                if prev.price == nxt.price:
                    assert prev.ts <= nxt.ts, "FIFO within a level"
        for side in (self.engine.bids, self.engine.asks):
            for level in side.levels.values():
                live = list(level.orders())
                assert live and level.live == len(live)
                assert level.total == sum(o.remaining for o in live)
        resting = {o.order_id: o.remaining for o in (*cp.bids, *cp.asks)}
        assert resting == {oid: q for oid, q in self.open_qty.items() if q}, "quantity conservation"

    @invariant()
    def indexes_match_the_book(self) -> None:
        """The id and client-order-id indexes hold exactly the resting orders, and no order
        kept for reuse is still on the book or in an index."""
        engine = self.engine
        levels = [*engine.bids.levels.values(), *engine.asks.levels.values()]
        resting = [o for level in levels for o in level.orders()]
        assert engine.orders == {o.order_id: o for o in resting}
        indexed = {(acct, coid): o for acct, index in engine.accounts.items() for coid, o in index.items()}
        assert indexed == {(o.account, o.client_order_id): o for o in resting}
        assert all(o.by_client is engine.accounts[o.account] for o in resting)
        spares = []
        spare = engine.spare
        while spare is not None and len(spares) <= engine.spare_count:  # bounded: a cycle fails
            spares.append(spare)
            spare = spare.next
        assert len(spares) == engine.spare_count and spare is None
        assert len({id(o) for o in spares}) == len(spares), "an order kept twice"
        assert all(o.level is None and o.prev is None for o in spares)
        assert not {id(o) for o in spares} & {id(o) for o in resting}

    @invariant()
    def reused_encodings_are_current(self) -> None:
        """A checkpoint that reuses the levels the previous one encoded is the checkpoint,
        in the runs an encoding from scratch makes: every change to a resting order moved its
        level's version, and every change but an append its reshapes."""
        encoded = run_to_end(encode_steps(self.engine, 3, self.encodings))
        assert encoded.state == msgspec.msgpack.encode(self.engine.checkpoint())
        fresh = LevelEncodings()
        run_to_end(encode_steps(self.engine, 3, fresh))
        assert {lv: runs(e) for lv, e in self.encodings.levels.items()} == {
            lv: runs(e) for lv, e in fresh.levels.items()
        }

    @invariant()
    def twin_agrees(self) -> None:
        if self.twin is not None:
            assert self.twin.state_hash() == self.engine.state_hash()


EngineVersusModel.TestCase.settings = settings(max_examples=300, stateful_step_count=80, deadline=None)
test_engine_matches_model = EngineVersusModel.TestCase
