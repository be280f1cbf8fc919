"""The workload file: written once by the orchestrator, read by every worker.

Layout: an 8-byte magic, a little-endian u32 length, that many bytes of JSON metadata,
then the five command columns as little-endian int64 arrays of `n` items each. Only the
standard library is needed, so peer venvs need nothing but the peer itself.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from pathlib import Path
from typing import Any, NamedTuple

MAGIC = b"CLOBDWL1"
_LEN = struct.Struct("<I")

# Command kinds. Every command is (kind, cid, side, price, qty).
ADD = 0  # GTC limit order priced so it never crosses: always rests
IOC = 1  # limit IOC priced 1-5 ticks through the best opposite price
CANCEL = 2  # cancel of an order resting at that moment; side/price are the victim's

BUY = 1
SELL = 2

COLUMNS = ("kind", "cid", "side", "price", "qty")


class Workload(NamedTuple):
    meta: dict[str, Any]
    columns: dict[str, array[int]]


def write(path: Path, meta: dict[str, Any], columns: dict[str, array[int]]) -> None:
    head = json.dumps(meta, sort_keys=True).encode()
    with path.open("wb") as f:
        f.write(MAGIC + _LEN.pack(len(head)) + head)
        for name in COLUMNS:
            col = columns[name]
            if col.typecode != "q" or len(col) != meta["n"]:
                raise ValueError(f"column {name}: expected {meta['n']} int64 items")
            f.write(_little_endian(col).tobytes())


def read(path: Path) -> Workload:
    data = path.read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: not a clobd workload file")
    (size,) = _LEN.unpack_from(data, 8)
    start = 8 + _LEN.size
    meta = json.loads(data[start : start + size])
    pos, n = start + size, meta["n"]
    columns = {}
    for name in COLUMNS:
        col = array("q")
        col.frombytes(data[pos : pos + 8 * n])
        columns[name] = _little_endian(col)
        pos += 8 * n
    return Workload(meta, columns)


def _little_endian(col: array[int]) -> array[int]:
    """Return `col` with little-endian byte order (a copy on big-endian hosts)."""
    if sys.byteorder == "little":
        return col
    swapped = array("q", col)
    swapped.byteswap()
    return swapped
