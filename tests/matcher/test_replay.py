"""Recovery's replay loop on real journal files: the events check (bytes first, values only
on a byte mismatch), damage, and reading in chunks (`Journal.read_raw_chunks`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lmdb
import msgspec
import pytest

from journal import CorruptRecord, Journal, JournalError, Record, decode, encode, store
from matcher.recovery import DeterminismAlarm, Recovered, rebuild
from tests.journal.test_record import old_style
from tests.matcher.checkpointed import SPEC, build

RECORDS = 120
Built = tuple[Path, dict[int, str]]  # the journal file, the state hash after each seq


def _rewrite(path: Path, change: Callable[[int, bytes], bytes | None]) -> None:
    """Replace each stored value by `change(seq, value)`; None deletes the record."""
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    try:
        db = env.open_db(b"records")
        with env.begin(db=db, write=True) as txn:
            for k, value in list(txn.cursor()):
                new = change(int.from_bytes(k, "big"), value)
                if new is None:
                    txn.delete(k)
                elif new != value:
                    txn.put(k, new)
    finally:
        env.close()


def _rebuild(path: Path) -> Recovered:
    with Journal(path, readonly=True) as journal:
        return rebuild(journal, SPEC)


@pytest.fixture
def journal(tmp_path: Path) -> Built:
    path = tmp_path / "BTCUSDT.lmdb"
    hashes, _ = build(path, None, RECORDS)
    return path, hashes


@pytest.fixture(params=[1000, 7], ids=["one-chunk", "chunks-of-7"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(store, "READ_CHUNK", request.param)
    return int(request.param)


def test_full_replay_in_chunks_gives_the_journaled_state(journal: Built, chunk: int) -> None:
    path, hashes = journal
    rec = _rebuild(path)
    assert rec.seq == rec.records == RECORDS
    assert rec.engine.state_hash() == hashes[RECORDS]


def test_altered_event_with_a_valid_checksum_is_a_determinism_alarm(journal: Built, chunk: int) -> None:
    path, _ = journal

    def alter(seq: int, value: bytes) -> bytes:
        if seq != 77:
            return value
        record = decode(value)
        return encode(msgspec.structs.replace(record, events=[*record.events, record.events[0]]))

    _rewrite(path, alter)
    with pytest.raises(DeterminismAlarm) as info:
        _rebuild(path)
    assert info.value.seq == 77


def test_older_schema_records_are_not_a_false_alarm(journal: Built, chunk: int) -> None:
    path, hashes = journal
    rewritten: list[int] = []

    def older(seq: int, value: bytes) -> bytes:
        record: Record = decode(value)
        if seq % 2:  # every other record: the mix a journal spanning an upgrade holds
            return value
        rewritten.append(seq)
        new = old_style(record)
        assert new != value and decode(new) == record
        return new

    _rewrite(path, older)
    assert len(rewritten) == RECORDS // 2
    rec = _rebuild(path)
    assert rec.seq == RECORDS and rec.engine.state_hash() == hashes[RECORDS]


def test_a_damaged_record_stops_the_replay(journal: Built, chunk: int) -> None:
    path, _ = journal

    def flip(seq: int, value: bytes) -> bytes:
        return value if seq != 50 else value[:-1] + bytes([value[-1] ^ 0x01])

    _rewrite(path, flip)
    with pytest.raises(CorruptRecord) as info:
        _rebuild(path)
    assert info.value.seq_hint == 50


@pytest.mark.parametrize("missing", [2, 8, 50, 57])  # 8 and 57: the first of a chunk of 7
def test_a_gap_stops_the_replay(journal: Built, chunk: int, missing: int) -> None:
    path, _ = journal
    _rewrite(path, lambda seq, value: None if seq == missing else value)
    with pytest.raises(JournalError, match=f"expected seq {missing}, found seq {missing + 1}"):
        _rebuild(path)


def test_stored_yields_everything_before_a_gap(journal: Built, chunk: int) -> None:
    path, _ = journal
    _rewrite(path, lambda seq, value: None if seq == 31 else value)
    seen: list[int] = []
    with Journal(path, readonly=True) as j, pytest.raises(JournalError, match="expected seq 31"):
        for first, values in j.read_raw_chunks(3):
            assert [decode(v).seq for v in values] == list(range(first, first + len(values)))
            assert all(type(v) is bytes for v in values)  # copies: valid after the read txn
            seen += range(first, first + len(values))
    assert seen == list(range(3, 31))
    with Journal(path, readonly=True) as j:
        assert list(j.read_raw_chunks(RECORDS + 1)) == []
        assert [(first, len(values)) for first, values in j.read_raw_chunks(RECORDS)] == [(RECORDS, 1)]
