"""The journal record: one command as received plus the events it produced, defined once.

Stored value = 4-byte big-endian CRC32 of the payload, then the payload (``array_like``
msgpack of ``Record``). The checksum is ours, not LMDB's: LMDB keeps its pages consistent
but does not checksum them, so a flipped bit on disk or a bad copy would otherwise replay
silently into a different book.

Key = the record's journal sequence as 8 big-endian bytes, so LMDB's byte order is numeric
order and an append is always at the right edge of the B-tree.
"""

from __future__ import annotations

import zlib

import msgspec

from engine.messages import SCHEMA_VERSION, Command, Event
from journal.errors import CorruptRecord

_CRC_SIZE = 4
KEY_SIZE = 8


# gc=False as for the engine's messages: a Record holds only a typed list of events, so it
# can never be part of a reference cycle, and replays decode millions of them.
class Record(msgspec.Struct, array_like=True, frozen=True, gc=False):
    seq: int  # instrument journal sequence, contiguous from 1
    ts: int  # gateway stamp (unix ns), copied from the command
    command: Command  # exactly as received
    events: list[Event]
    # Appended last with a default so older records still decode; bumped with the schema.
    version: int = SCHEMA_VERSION


# Reused across calls: building an Encoder/Decoder per record would cost more than encoding.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode(record: Record) -> bytes:
    """CRC32 (big-endian, 4 bytes) + msgpack payload."""
    payload = _encoder.encode(record)
    return zlib.crc32(payload).to_bytes(_CRC_SIZE, "big") + payload


def decode(raw: bytes | memoryview, seq_hint: int | None = None) -> Record:
    """Verify the checksum and decode; raise ``CorruptRecord`` on any damage.

    ``raw`` may be a memoryview into LMDB's map (zero copy); it is only read here.
    ``seq_hint`` (usually the key's sequence) only labels the error.
    """
    view = memoryview(raw)
    if len(view) <= _CRC_SIZE:
        raise CorruptRecord(seq_hint, f"truncated: {len(view)} bytes")
    payload = view[_CRC_SIZE:]
    if zlib.crc32(payload) != int.from_bytes(view[:_CRC_SIZE], "big"):
        # A truncated value lands here too: the CRC covers the payload's full length.
        raise CorruptRecord(seq_hint, "checksum mismatch (corrupted or truncated)")
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise CorruptRecord(seq_hint, f"undecodable payload: {exc}") from exc


def key(seq: int) -> bytes:
    return seq.to_bytes(KEY_SIZE, "big")


def seq_of(k: bytes | memoryview) -> int:
    return int.from_bytes(k, "big")
