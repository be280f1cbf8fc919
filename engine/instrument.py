"""Instrument specification and the decimal <-> integer conversion used at the edges.

Inside clobd a price is an integer count of price units (10**-price_decimals) and a
quantity an integer count of quantity units (10**-qty_decimals). `tick_size` and
`lot_size` are expressed in those units, so an off-tick price or an off-lot quantity is
something the engine can see and reject, not something lost in a float.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class Instrument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    symbol: str
    price_decimals: int = 2
    qty_decimals: int = 4
    tick_size: int = 1  # in price units
    lot_size: int = 1  # in quantity units
    min_qty: int = 1  # in quantity units
    max_qty: int = 10**12
    min_price: int = 1  # static band, in price units
    max_price: int = 10**15
    # Dynamic band around the last trade price, in basis points; 0 switches it off.
    band_bps: int = 0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"instrument {self.symbol!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if not self.symbol or not self.symbol.isalnum():
            out.append("symbol must be non-empty and alphanumeric")
        for name in ("tick_size", "lot_size", "min_qty", "max_qty", "min_price", "max_price"):
            if getattr(self, name) <= 0:
                out.append(f"{name} must be positive")
        if not 0 <= self.price_decimals <= 12 or not 0 <= self.qty_decimals <= 12:
            out.append("price_decimals and qty_decimals must be within 0..12")
        if self.min_qty > self.max_qty:
            out.append("min_qty must not exceed max_qty")
        if self.min_price > self.max_price:
            out.append("min_price must not exceed max_price")
        if not 0 <= self.band_bps < 10_000:
            out.append("band_bps must be within 0..9999")
        return out

    def price_to_units(self, price: Decimal | str) -> int:
        return _to_units(Decimal(price), self.price_decimals, "price")

    def qty_to_units(self, qty: Decimal | str) -> int:
        return _to_units(Decimal(qty), self.qty_decimals, "quantity")

    def price_from_units(self, units: int) -> Decimal:
        return Decimal(units).scaleb(-self.price_decimals)

    def qty_from_units(self, units: int) -> Decimal:
        return Decimal(units).scaleb(-self.qty_decimals)


def _to_units(value: Decimal, decimals: int, what: str) -> int:
    if not value.is_finite():
        raise ValueError(f"{what} {value} is not a finite number")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{what} {value} has more than {decimals} decimal places")
    return int(scaled)
