"""BookSide keeps its levels in price priority whatever order they come and go in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.book import BookSide

# (create?, price): prices from a small range so creates and drops collide often.
_OPS = st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=40)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(is_bid=st.booleans(), ops=_OPS)
def test_levels_best_first_and_best_follow_creates_and_drops(
    is_bid: bool, ops: list[tuple[bool, int]]
) -> None:
    side = BookSide(is_bid)
    prices: set[int] = set()
    for create, price in ops:
        if create:
            level = side.level_for(price)
            assert level.price == price
            assert side.level_for(price) is level  # an existing level is found, not remade
            prices.add(price)
        elif price in prices:
            side.drop(side.levels[price])
            prices.discard(price)
        expected = sorted(prices, reverse=is_bid)
        assert [level.price for level in side.levels_best_first()] == expected
        assert (None if side.best is None else side.best.price) == (expected[0] if expected else None)
        assert sorted(side.levels) == sorted(prices)
