"""The journal record: encoding round trip, checksum, damage detection, keys, replay check."""

from __future__ import annotations

import struct
import typing
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.messages import (
    SCHEMA_VERSION,
    Accepted,
    Checkpoint,
    Command,
    Event,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    Side,
    TimeInForce,
)
from journal import CorruptRecord, Record, decode, encode, key, seq_of
from journal import record as record_module
from journal.record import DeterminismAlarm, replay
from tests.journal.journal_helpers import TS0, every_command, every_event, sample_record


def test_samples_cover_every_command_and_event_type() -> None:
    # If a message type is added, the round-trip tests below must learn about it.
    assert {type(c) for c in every_command()} == set(typing.get_args(Command))
    assert {type(e) for e in every_event()} == set(typing.get_args(Event))


@pytest.mark.parametrize("command", every_command(), ids=lambda c: type(c).__name__)
def test_round_trip_every_command(command: Command) -> None:
    record = Record(seq=5, ts=command.ts, command=command, events=[])
    decoded = decode(encode(record))
    assert decoded == record
    assert type(decoded.command) is type(command)


@pytest.mark.parametrize("event", every_event(), ids=lambda e: type(e).__name__)
def test_round_trip_every_event(event: Event) -> None:
    record = Record(seq=1, ts=TS0, command=every_command()[0], events=[event])
    decoded = decode(encode(record))
    assert decoded == record
    assert type(decoded.events[0]) is type(event)


def test_round_trip_all_events_in_one_record_keeps_order() -> None:
    record = Record(seq=9, ts=TS0, command=every_command()[1], events=every_event())
    assert decode(encode(record)).events == every_event()


def test_version_defaults_to_schema_version_and_record_is_frozen() -> None:
    record = sample_record(1)
    assert record.version == SCHEMA_VERSION
    with pytest.raises(AttributeError):
        record.seq = 2  # type: ignore[misc]


def test_layout_is_big_endian_crc32_then_msgpack_payload() -> None:
    raw = encode(sample_record(3))
    assert int.from_bytes(raw[:4], "big") == zlib.crc32(raw[4:])
    assert msgspec.msgpack.decode(raw[4:], type=Record) == sample_record(3)


def test_decode_accepts_memoryview() -> None:
    raw = encode(sample_record(4))
    assert decode(memoryview(raw)) == sample_record(4)


def test_every_single_flipped_byte_is_detected() -> None:
    raw = encode(sample_record(1))
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x01
        with pytest.raises(CorruptRecord):
            decode(bytes(damaged), seq_hint=1)


def test_every_truncation_is_detected() -> None:
    raw = encode(sample_record(2))
    for length in range(len(raw)):
        with pytest.raises(CorruptRecord) as info:
            decode(raw[:length], seq_hint=2)
        assert info.value.seq_hint == 2


def test_trailing_garbage_is_detected() -> None:
    with pytest.raises(CorruptRecord):
        decode(encode(sample_record(2)) + b"\x00")


def _with_crc(payload: bytes) -> bytes:
    return zlib.crc32(payload).to_bytes(4, "big") + payload


def test_valid_checksum_but_undecodable_payload_is_corrupt() -> None:
    with pytest.raises(CorruptRecord, match="undecodable") as info:
        decode(_with_crc(b"\xc1 not msgpack"), seq_hint=17)
    assert info.value.seq_hint == 17
    assert info.value.reason.startswith("undecodable")


def test_valid_checksum_but_wrong_shape_is_corrupt() -> None:
    # Well-formed msgpack of another struct: a type error, still a CorruptRecord.
    other = msgspec.msgpack.encode(Checkpoint("X", [], [], 1, 1, 0, 0, 0))
    with pytest.raises(CorruptRecord, match="undecodable"):
        decode(_with_crc(other))


def test_unknown_command_tag_is_corrupt() -> None:
    payload = msgspec.msgpack.encode([1, TS0, [99, 1, TS0, "a"], []])
    with pytest.raises(CorruptRecord):
        decode(_with_crc(payload))


def test_record_that_cannot_be_encoded_raises_at_encode() -> None:
    too_big = NewOrder(seq=1, ts=TS0, account="a", client_order_id="c", side=Side.BUY, qty=2**64)
    with pytest.raises(OverflowError):
        encode(Record(seq=1, ts=TS0, command=too_big, events=[]))


def test_key_is_8_byte_big_endian() -> None:
    assert key(1) == b"\x00" * 7 + b"\x01"
    assert key(2**64 - 1) == b"\xff" * 8
    assert seq_of(key(258)) == 258
    assert seq_of(memoryview(key(258))) == 258


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_key_byte_order_is_numeric_order(a: int, b: int) -> None:
    # LMDB sorts keys bytewise; append=True and range scans rely on this equivalence.
    assert (key(a) < key(b)) == (a < b)
    assert seq_of(key(a)) == a


@given(
    seq=st.integers(1, 2**63 - 1),
    ts=st.integers(0, 2**63 - 1),
    account=st.text(max_size=40),  # st.text never draws lone surrogates (not UTF-8)
    cl_id=st.text(max_size=40),
    side=st.sampled_from(Side),
    qty=st.integers(0, 2**64 - 1),
    price=st.integers(-(2**63), 2**63 - 1),
)
def test_round_trip_arbitrary_new_orders(
    seq: int, ts: int, account: str, cl_id: str, side: Side, qty: int, price: int
) -> None:
    command = NewOrder(seq, ts, account, cl_id, side, qty, price)
    event = Accepted(seq, account, cl_id, side, price, qty, OrderType.LIMIT, TimeInForce.GTC)
    record = Record(seq=seq, ts=ts, command=command, events=[event])
    assert decode(encode(record)) == record


# --- replay: apply a stored record and check its events ---------------------------------


def _wide(obj: Any) -> bytes:
    """msgpack as another writer might make it: every int 8 bytes wide, every str and array
    with a 4-byte length. Decodes to the same values as msgspec's own (shortest) encoding."""
    if isinstance(obj, bool):
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        return b"\xd3" + struct.pack(">q", obj) if obj < 2**63 else b"\xcf" + struct.pack(">Q", obj)
    if isinstance(obj, str):
        data = obj.encode()
        return b"\xdb" + struct.pack(">I", len(data)) + data
    if isinstance(obj, list):
        return b"\xdd" + struct.pack(">I", len(obj)) + b"".join(_wide(item) for item in obj)
    raise TypeError(type(obj))


def old_style(rec: Record, drop_trailing_defaults: bool = True) -> bytes:
    """`rec` stored as an older writer could have: no `version` field, wide msgpack, and each
    event without its trailing fields that hold their default (fields appended later)."""
    events = []
    for event in rec.events:
        fields = msgspec.to_builtins(event)
        if drop_trailing_defaults and isinstance(event, Rejected) and event.order_id == 0:
            fields = fields[:-1]  # Rejected.order_id came with a later schema
        events.append(fields)
    return _with_crc(_wide([rec.seq, rec.ts, msgspec.to_builtins(rec.command), events]))


def _replayed(events: list[Event]) -> Any:
    """A stand-in for `engine.process`: gives fresh copies of `events`, whatever the command."""
    return lambda _command: [msgspec.structs.replace(e) for e in events]


def test_replay_returns_the_events_and_decodes_none_when_the_bytes_match(monkeypatch: Any) -> None:
    rec = Record(seq=9, ts=TS0, command=every_command()[0], events=every_event())

    class NoDecode:
        def decode(self, _data: object) -> None:
            raise AssertionError("the journaled events were decoded on the fast path")

    monkeypatch.setattr(record_module, "_events_decoder", NoDecode())
    assert replay(encode(rec), 9, _replayed(every_event())) == every_event()
    assert replay(memoryview(encode(rec)), 9, _replayed(every_event())) == every_event()


@pytest.mark.parametrize("where", range(len(every_event())))
def test_replay_altered_event_with_a_valid_checksum_is_a_determinism_alarm(where: int) -> None:
    events = every_event()
    altered = list(events)
    event = events[where]
    name, value = next((f, getattr(event, f)) for f in event.__struct_fields__
                       if type(getattr(event, f)) in (int, str))  # fmt: skip
    altered[where] = msgspec.structs.replace(event, **{name: value + (1 if type(value) is int else "x")})
    raw = encode(Record(seq=5, ts=TS0, command=every_command()[0], events=altered))
    assert decode(raw) is not None  # the checksum is valid: only re-execution can tell
    with pytest.raises(DeterminismAlarm) as info:
        replay(raw, 5, _replayed(events))
    assert info.value.seq == 5
    assert info.value.journaled == altered and info.value.replayed == events


@pytest.mark.parametrize("journaled", [[], every_event()[:-1], [*every_event(), every_event()[0]]])
def test_replay_missing_or_extra_events_are_a_determinism_alarm(journaled: list[Event]) -> None:
    raw = encode(Record(seq=5, ts=TS0, command=every_command()[0], events=journaled))
    with pytest.raises(DeterminismAlarm):
        replay(raw, 5, _replayed(every_event()))


def test_replay_of_an_older_schema_record_is_not_a_false_alarm() -> None:
    rejected = Rejected("acct", "cl-9", RejectReason.PRICE_OFF_TICK, "off tick")  # order_id 0
    events = [*every_event(), rejected]
    for command in every_command(seq=3):
        rec = Record(seq=3, ts=TS0, command=command, events=events)
        raw = old_style(rec)
        assert raw != encode(rec)  # differently encoded, so the byte check alone would differ
        assert decode(raw) == rec  # ... yet the same record
        assert replay(raw, 3, _replayed(events)) == events


def test_replay_of_a_differently_encoded_but_altered_event_is_still_an_alarm() -> None:
    events = every_event()
    altered = [*events[:-1], msgspec.structs.replace(events[-1], qty=events[-1].qty + 1)]
    raw = old_style(Record(seq=3, ts=TS0, command=every_command()[0], events=altered))
    with pytest.raises(DeterminismAlarm) as info:
        replay(raw, 3, _replayed(events))
    assert info.value.journaled == altered


def test_replay_detects_damage_and_a_record_under_another_seq() -> None:
    raw = encode(Record(seq=4, ts=TS0, command=every_command()[0], events=every_event()))
    process = _replayed(every_event())
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x01
        with pytest.raises(CorruptRecord):
            replay(bytes(damaged), 4, process)
    for length in range(len(raw)):
        with pytest.raises(CorruptRecord):
            replay(raw[:length], 4, process)
    with pytest.raises(CorruptRecord, match="stored under seq 5 but says seq 4"):
        replay(raw, 5, process)
    for short in (b"", b"\x00\x00", b"\x00\x00\x00\x00"):  # no payload: said so, whatever the checksum
        with pytest.raises(CorruptRecord, match=f"truncated: {len(short)} bytes"):
            replay(short, 4, process)


def test_replay_valid_checksum_but_undecodable_events_is_corrupt() -> None:
    command = msgspec.to_builtins(every_command()[0])
    with pytest.raises(CorruptRecord, match="undecodable events"):
        replay(_with_crc(msgspec.msgpack.encode([1, TS0, command, [[99, 1]]])), 1, _replayed([]))
    with pytest.raises(CorruptRecord, match="undecodable payload"):
        replay(_with_crc(msgspec.msgpack.encode([1, TS0, [99, 1, TS0, "a"], []])), 1, _replayed([]))
