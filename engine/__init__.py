"""The pure matching core: no I/O, no clock, no randomness."""

from engine.engine import Engine
from engine.instrument import Instrument

__all__ = ["Engine", "Instrument"]
