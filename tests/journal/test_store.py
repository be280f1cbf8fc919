"""The LMDB journal: contiguity, atomic group commit, map growth, failures, crashes, readers.

Everything runs against real LMDB files under tmp_path; the crash, concurrent-reader and
disk-failure cases use real child processes (see journal_helpers.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import lmdb
import pytest

from engine.messages import NewOrder, Side
from journal import (
    CorruptRecord,
    Journal,
    JournalError,
    JournalFull,
    JournalWriteError,
    Record,
    SequenceGap,
    encode,
    journal_path,
    key,
    store,
)
from tests.journal.journal_helpers import TS0, batch, sample_record, spawn

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return journal_path(tmp_path / "journal", "BTCUSDT")


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal.open(path) as j:
        yield j


def _contents(j: Journal) -> tuple[int, int, int, list[tuple[int, bytes]]]:
    return j.first_seq(), j.last_seq(), j.count(), list(j.read_raw())


# --- basics ---------------------------------------------------------------------------------


def test_empty_journal(journal: Journal, path: Path) -> None:
    assert (journal.first_seq(), journal.last_seq(), journal.count(), len(journal)) == (0, 0, 0, 0)
    assert bool(journal)  # not falsy merely because it is empty
    assert journal.get(1) is None
    assert list(journal.read()) == []
    assert path.is_file()
    assert path.with_name(path.name + "-lock").is_file()  # subdir=False: lock file beside it


def test_append_then_get_and_read_ranges(journal: Journal) -> None:
    journal.append(batch(1, 1))
    journal.append(batch(2, 9))
    assert (journal.first_seq(), journal.last_seq(), len(journal)) == (1, 10, 10)
    assert journal.get(7) == sample_record(7)
    assert journal.get(11) is None
    assert list(journal.read()) == batch(1, 10)
    assert list(journal.read(3, 5)) == batch(3, 3)
    assert list(journal.read(8)) == batch(8, 3)
    assert list(journal.read(0, 2)) == batch(1, 2)
    assert list(journal.read(5, 4)) == []
    assert list(journal.read(11)) == []


def test_read_raw_yields_the_stored_encoding(journal: Journal) -> None:
    journal.append(batch(1, 4))
    assert list(journal.read_raw(2, 3)) == [(2, encode(sample_record(2))), (3, encode(sample_record(3)))]


def test_append_encoded_stores_the_given_bytes(journal: Journal) -> None:
    journal.append(batch(1, 2))
    journal.append_encoded(3, [encode(r) for r in batch(3, 3)])
    journal.append_encoded(6, [])  # an empty batch is a no-op
    assert journal.last_seq() == 5
    assert list(journal.read()) == batch(1, 5)


def test_reopen_preserves_last_seq_and_continues(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 5))
    with Journal.open(path) as j:
        assert j.last_seq() == 5
        j.append(batch(6, 2))
    with Journal.open(path, readonly=True) as j:
        assert j.last_seq() == 7
        assert list(j.read()) == batch(1, 7)


def test_stat(path: Path) -> None:
    with Journal.open(path, map_size=MIB, max_map_size=16 * MIB) as j:
        j.append(batch(1, 100))
        s = j.stat()
    assert (s["first_seq"], s["last_seq"], s["records"]) == (1, 100, 100)
    assert s["path"] == str(path)
    assert s["file_bytes"] == path.stat().st_size
    assert 0 < s["used_bytes"] <= s["file_bytes"]
    assert (s["map_size"], s["max_map_size"]) == (MIB, 16 * MIB)


def test_journal_path_and_argument_checks(tmp_path: Path) -> None:
    assert journal_path(tmp_path, "ETHUSDT") == tmp_path / "ETHUSDT.lmdb"
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            journal_path(tmp_path, bad)
    with pytest.raises(ValueError):
        Journal.open(tmp_path / "X.lmdb", map_size=2 * MIB, max_map_size=MIB)


# --- contiguity -----------------------------------------------------------------------------


@pytest.mark.parametrize("first", [0, 2])
def test_first_record_must_be_seq_1(journal: Journal, first: int) -> None:
    with pytest.raises(SequenceGap) as info:
        journal.append(batch(first, 2))
    assert (info.value.expected, info.value.got) == (1, first)
    assert journal.count() == 0


@pytest.mark.parametrize("first", [7, 5, 1, 3], ids=["gap", "duplicate-last", "rewrite-first", "overlap"])
def test_batch_not_continuing_the_journal_is_rejected(journal: Journal, first: int) -> None:
    journal.append(batch(1, 5))
    before = _contents(journal)
    with pytest.raises(SequenceGap) as info:
        journal.append(batch(first, 3))
    assert info.value.expected == 6
    with pytest.raises(SequenceGap):
        journal.append_encoded(first, [encode(r) for r in batch(first, 3)])
    assert _contents(journal) == before


@pytest.mark.parametrize("seqs", [[6, 8], [6, 6], [6, 7, 7], [7, 6]], ids=str)
def test_batch_with_internal_gap_duplicate_or_disorder_is_rejected(journal: Journal, seqs: list[int]) -> None:
    journal.append(batch(1, 5))
    before = _contents(journal)
    with pytest.raises(SequenceGap):
        journal.append([sample_record(s) for s in seqs])
    assert _contents(journal) == before


def test_second_writer_process_cannot_make_us_overwrite(path: Path) -> None:
    # Two writers on one file is a misconfiguration; the guard is that our stale cache never
    # overwrites: LMDB refuses the append, we resync and report the real next seq.
    with Journal.open(path) as j:
        j.append(batch(1, 5))
        other = spawn("append", path, 6, 3)
        out, err = other.communicate(timeout=60)
        assert other.returncode == 0, err
        assert out.split() == ["8"]
        with pytest.raises(SequenceGap) as info:
            j.append([Record(6, TS0, NewOrder(6, TS0, "mine", "x", Side.BUY, 1, 1), [])])
        assert (info.value.expected, j.last_seq()) == (9, 8)
        j.append(batch(9, 1))
        assert list(j.read()) == batch(1, 9)


# --- batch atomicity ------------------------------------------------------------------------


def test_record_failing_to_encode_mid_batch_writes_nothing(journal: Journal) -> None:
    journal.append(batch(1, 3))
    before = _contents(journal)
    unencodable = Record(6, TS0, NewOrder(6, TS0, "a", "c", Side.BUY, qty=2**64), [])
    with pytest.raises(OverflowError):
        journal.append([*batch(4, 2), unencodable, *batch(7, 2)])
    assert _contents(journal) == before
    journal.append(batch(4, 5))  # the same seqs go in afterwards
    assert list(journal.read()) == batch(1, 8)


class _FailingPayloads(Sequence[bytes]):
    """Real payloads whose item ``fail_at`` raises, after LMDB already took the ones before."""

    def __init__(self, payloads: list[bytes], fail_at: int) -> None:
        self._payloads = payloads
        self._fail_at = fail_at

    def __len__(self) -> int:
        return len(self._payloads)

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        if index == self._fail_at:
            raise RuntimeError("injected failure inside the write transaction")
        return self._payloads[index]


def test_failure_inside_the_write_transaction_writes_nothing(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 3))
        before = _contents(j)
        payloads = [encode(r) for r in batch(4, 500)]
        with pytest.raises(RuntimeError, match="injected"):
            j.append_encoded(4, _FailingPayloads(payloads, fail_at=400))
        assert _contents(j) == before
        with pytest.raises(TypeError):  # a non-bytes payload, rejected by LMDB mid-batch
            j.append_encoded(4, [payloads[0], None])  # type: ignore[list-item]
        assert _contents(j) == before
    with Journal.open(path) as j:  # and nothing of it reached the file
        assert _contents(j) == before
        j.append_encoded(4, payloads)
        assert list(j.read()) == batch(1, 503)


# --- map growth -----------------------------------------------------------------------------


def test_map_grows_transparently(path: Path) -> None:
    with Journal.open(path, map_size=64 * KIB, max_map_size=1 << 30) as j:
        for first in range(1, 3001, 300):
            j.append(batch(first, 300))
        j.append(batch(3001, 20_000))  # one batch far larger than the map: several doublings
        s = j.stat()
        assert s["last_seq"] == 23_000
        assert s["map_size"] >= s["used_bytes"] > 64 * KIB
    with Journal.open(path, map_size=64 * KIB) as j:
        assert list(j.read()) == batch(1, 23_000)


def test_journal_full_writes_nothing_and_continues_with_a_larger_map(path: Path) -> None:
    with Journal.open(path, map_size=64 * KIB, max_map_size=128 * KIB) as j:
        j.append(batch(1, 50))
        before = _contents(j)
        with pytest.raises(JournalFull) as info:
            j.append(batch(51, 5000))
        assert info.value.max_map_size == 128 * KIB
        assert _contents(j) == before
        j.append(batch(51, 10))  # a batch that fits still goes in, at the same seq
        assert j.last_seq() == 60
    with Journal.open(path, map_size=64 * KIB, max_map_size=8 * MIB) as j:
        assert j.last_seq() == 60
        j.append(batch(61, 5000))
        assert list(j.read()) == batch(1, 5060)


def test_map_grown_in_an_earlier_run_is_kept_on_reopen(path: Path) -> None:
    with Journal.open(path, map_size=64 * KIB) as j:
        j.append(batch(1, 5000))
        grown = j.stat()["map_size"]
    assert grown > 64 * KIB
    with Journal.open(path, map_size=64 * KIB) as j:
        assert j.stat()["map_size"] == grown
    with Journal.open(path, map_size=4 * grown) as j:
        assert j.stat()["map_size"] == 4 * grown


# --- write failures -------------------------------------------------------------------------


def test_append_to_a_readonly_journal_raises_a_write_error(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 3))
    with Journal.open(path, readonly=True) as ro:
        with pytest.raises(JournalWriteError, match="ReadonlyError"):
            ro.append(batch(4, 1))
        with pytest.raises(SequenceGap):  # contiguity is checked against the file, even here
            ro.append(batch(3, 1))
        assert list(ro.read()) == batch(1, 3)  # still usable for reading


def test_readonly_open_of_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Journal.open(tmp_path / "NOPE.lmdb", readonly=True)
    foreign = tmp_path / "OTHER.lmdb"
    lmdb.open(str(foreign), subdir=False).close()  # an LMDB file without our database
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(foreign, readonly=True)


def test_real_write_failure_leaves_the_journal_usable(path: Path) -> None:
    # The child caps its file size (RLIMIT_FSIZE), so LMDB's page write fails with EFBIG: a
    # real I/O failure, like a full disk. Then it lifts the cap and appends the same seqs.
    child = spawn("fsize", path)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    result = json.loads(out)
    assert result["error"] is not None
    assert "too large" in result["error"].lower()
    assert result["after_failure"] == [10, 10]
    assert result["after_retry"] == [2010, 2010]
    assert result["content_ok"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_cannot_be_opened_for_writing(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 3))
    path.chmod(0o444)
    with pytest.raises((lmdb.Error, OSError)):
        Journal.open(path)
    with Journal.open(path, readonly=True) as ro:
        assert list(ro.read()) == batch(1, 3)


# --- damage detection -----------------------------------------------------------------------


def test_corruption_on_disk_is_detected(path: Path) -> None:
    marker = b"MARKER-ACCOUNT"
    with Journal.open(path) as j:
        j.append(batch(1, 3))
        j.append([Record(4, TS0, NewOrder(4, TS0, marker.decode(), "c", Side.BUY, 1, 1), [])])
        j.append(batch(5, 2))
    data = bytearray(path.read_bytes())
    # Copy-on-write leaves stale copies of the page in free space too; damage every copy.
    at = data.find(marker)
    assert at >= 0
    while at >= 0:
        data[at] ^= 0xFF
        at = data.find(marker, at + 1)
    path.write_bytes(data)
    with Journal.open(path, readonly=True) as j:
        assert j.get(3) == sample_record(3)
        with pytest.raises(CorruptRecord) as info:
            j.get(4)
        assert info.value.seq_hint == 4
        seen = []
        with pytest.raises(CorruptRecord):
            seen.extend(r.seq for r in j.read())
        assert seen == [1, 2, 3]
        assert list(j.read(5)) == batch(5, 2)


def test_record_stored_under_the_wrong_seq_is_detected(journal: Journal) -> None:
    journal.append_encoded(1, [encode(sample_record(1)), encode(sample_record(7))])
    with pytest.raises(CorruptRecord, match="says seq 7"):
        journal.get(2)
    with pytest.raises(CorruptRecord):
        list(journal.read())


def _delete_keys(path: Path, seqs: list[int]) -> None:
    # Outside the Journal API on purpose: archiving and damage are not part of it (yet).
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    db = env.open_db(b"records")
    with env.begin(db=db, write=True) as txn:
        for seq in seqs:
            assert txn.delete(key(seq))
    env.close()


def test_archived_prefix_moves_first_seq(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 10))
    _delete_keys(path, [1, 2, 3])
    with Journal.open(path) as j:
        assert (j.first_seq(), j.last_seq(), j.count()) == (4, 10, 7)
        assert list(j.read()) == batch(4, 7)
        j.append(batch(11, 1))


def test_hole_in_the_journal_is_detected_on_read(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 10))
    _delete_keys(path, [6])
    with Journal.open(path, readonly=True) as j:
        with pytest.raises(CorruptRecord, match="gap"):
            list(j.read())
        assert list(j.read(7)) == batch(7, 4)


# --- readers --------------------------------------------------------------------------------


def test_read_holds_no_snapshot_across_yields(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Growing the map (set_mapsize) invalidates every open txn of this process; a reader
    # holding one across a yield would break here. Small chunks make the test cheap.
    monkeypatch.setattr(store, "READ_CHUNK", 7)
    with Journal.open(path, map_size=64 * KIB) as j:
        j.append(batch(1, 20))
        seen = []
        for record in j.read():
            seen.append(record.seq)
            if record.seq == 10:
                j.append(batch(21, 2000))
        assert j.stat()["map_size"] > 64 * KIB
    assert seen == list(range(1, 2021))


def test_reader_in_another_process_sees_only_whole_batches(path: Path) -> None:
    size, batches = 10, 150
    with Journal.open(path, map_size=64 * KIB) as writer:
        writer.append(batch(1, size))
        # The reader maps only 64 KiB too: it must adopt the map the writer grows meanwhile.
        reader = spawn("reader", path, size * batches, 64 * KIB, 60)
        assert reader.stdout is not None
        assert reader.stdout.readline() == "ready\n"
        for n in range(1, batches):
            writer.append(batch(n * size + 1, size))
            time.sleep(0.002)
        out, err = reader.communicate(timeout=120)
        assert writer.stat()["map_size"] > 64 * KIB
    assert reader.returncode == 0, err
    report = json.loads(out)
    assert report["next_seq"] == size * batches + 1  # read every record, in order, verified
    observed = report["observed_last_seqs"]
    assert observed == sorted(observed)
    assert all(seq % size == 0 for seq in observed)  # never a part of a batch
    assert len(set(observed)) >= 3  # it really read while the writer appended


# --- crashes --------------------------------------------------------------------------------


@pytest.mark.parametrize("map_size", [64 * KIB, 1 << 30], ids=["growing-map", "roomy-map"])
def test_sigkill_at_any_moment_loses_no_acked_record(path: Path, map_size: int) -> None:
    last = 0
    for kill_after, batch_size in [(1, 1), (5, 64), (17, 7), (3, 500), (40, 1)]:
        child = spawn("writer", path, 10**6, batch_size, map_size)
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["ready", str(last)]
        acked = [child.stdout.readline() for _ in range(kill_after)]
        os.kill(child.pid, signal.SIGKILL)  # lands mid-append, mid-commit or mid-print
        rest, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err
        acked_seqs = [int(line) for line in [*acked, *rest.split()]]
        with Journal.open(path, map_size=map_size) as j:
            last = j.last_seq()
            assert last >= max(acked_seqs)  # every acked record survived
            assert (last - acked_seqs[-1]) % batch_size == 0  # no partial batch either
            assert list(j.read()) == batch(1, last)  # contiguous, intact, nothing torn
