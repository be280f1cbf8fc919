"""The journal record: encoding round trip, checksum, damage detection, keys."""

from __future__ import annotations

import typing
import zlib

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
    Side,
    TimeInForce,
)
from journal import CorruptRecord, Record, decode, encode, key, seq_of
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
