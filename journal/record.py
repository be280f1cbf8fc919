"""The journal record: one command as received plus the events it produced, defined once.

Stored value = 4-byte big-endian CRC32 of the payload, then the payload (``array_like``
msgpack of ``Record``). The checksum is ours, not LMDB's: LMDB keeps its pages consistent
but does not checksum them, so a flipped bit on disk or a bad copy would otherwise replay
silently into a different book.

Key = the record's journal sequence as 8 big-endian bytes, so LMDB's byte order is numeric
order and an append is always at the right edge of the B-tree.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable

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


class ReplayView(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A stored ``Record`` as replay reads it: the same array layout, but the events left as
    their msgpack bytes. Decoding events into Structs is the dearest part of reading a
    record; replay only needs to know that re-execution gives the same ones (``replay``)."""

    seq: int
    ts: int
    command: Command
    events: msgspec.Raw
    version: int = SCHEMA_VERSION


class DeterminismAlarm(Exception):
    """Replaying a journaled command produced other events than the journal recorded."""

    def __init__(self, seq: int, journaled: object, replayed: object) -> None:
        super().__init__(f"journal seq {seq}: replay gave {replayed!r}, journal holds {journaled!r}")
        self.seq = seq
        self.journaled = journaled
        self.replayed = replayed


# Reused across calls: building an Encoder/Decoder per record would cost more than encoding.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)
_view_decoder = msgspec.msgpack.Decoder(ReplayView)
_events_decoder = msgspec.msgpack.Decoder(list[Event])
# Bound once for `replay`, which runs once per record of a replay.
_crc32 = zlib.crc32
_stored_crc = struct.Struct(">I").unpack_from
_decode_view = _view_decoder.decode
_encode = _encoder.encode
_Raw = msgspec.Raw


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


def replay(raw: bytes | memoryview, seq: int, process: Callable[[Command], list[Event]]) -> list[Event]:
    """Apply the stored value `raw` of journal seq `seq` with `process` (an engine's) and
    check it; return the events `process` gave (``replay_run`` of one record)."""
    return replay_run((raw,), seq, process)


def replay_run(
    values: Iterable[bytes | memoryview], first: int, process: Callable[[Command], list[Event]]
) -> list[Event]:
    """Apply the stored values of journal seqs `first`, `first` + 1, ... in turn with
    `process` (an engine's), checking each; return the events `process` gave for the last
    one ([] for none). The one "apply records and check their events" of every replay.

    Checks: the checksum, that each decodes and says its seq (else ``CorruptRecord``), and
    that re-executing its command gives exactly the journaled events (else
    ``DeterminismAlarm``). The events are compared as bytes: those the engine gave, encoded
    as ``encode`` does (same Structs, same encoder, so equal events encode equal), against
    the journaled ones as stored, undecoded. Only when the bytes differ are the journaled
    events decoded and compared as values, so a record encoded otherwise (an older schema
    whose event had fewer fields, another msgpack writer) is not an alarm unless its events
    really differ.

    The checks are written out in the loop rather than called per record: at a few
    microseconds a record, the call and the name lookups it saves are 5-7% of a restart's
    replay.
    """
    crc32, stored_crc, decode_view, encode_events, raw_of = _crc32, _stored_crc, _decode_view, _encode, _Raw
    seq = first - 1
    events: list[Event] = []
    for raw in values:
        seq += 1
        try:  # free in 3.11 unless it raises; around the checks only, not around `process`
            payload = raw[_CRC_SIZE:]
            if crc32(payload) != stored_crc(raw)[0]:
                raise CorruptRecord(seq, "checksum mismatch (corrupted or truncated)")
            view = decode_view(payload)
        except (struct.error, msgspec.DecodeError) as exc:  # no payload at all, or a bad one
            raise CorruptRecord(seq, _undecodable(raw, exc)) from exc
        if view.seq != seq:
            raise CorruptRecord(seq, f"stored under seq {seq} but says seq {view.seq}")
        events = process(view.command)
        if raw_of(encode_events(events)) != view.events:
            _compare_decoded(seq, view.events, events)
    return events


def _undecodable(raw: bytes | memoryview, exc: Exception) -> str:
    if len(raw) <= _CRC_SIZE:
        return f"truncated: {len(raw)} bytes"
    return f"undecodable payload: {exc}"


def _compare_decoded(seq: int, stored: msgspec.Raw, events: list[Event]) -> None:
    """Raise unless the journaled events `stored`, decoded, equal `events`."""
    try:
        journaled = _events_decoder.decode(stored)
    except msgspec.DecodeError as exc:
        raise CorruptRecord(seq, f"undecodable events: {exc}") from exc
    if events != journaled:
        raise DeterminismAlarm(seq, journaled, events)


def key(seq: int) -> bytes:
    return seq.to_bytes(KEY_SIZE, "big")


def seq_of(k: bytes | memoryview) -> int:
    return int.from_bytes(k, "big")
