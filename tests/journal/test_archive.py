"""Journal retention (`journal.archive`): the segment format, archiving records out of LMDB,
and reading a journal through its archive, including after a crash between the two steps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import lmdb
import pytest

from journal import CorruptRecord, Journal, Record, encode, journal_path
from journal.archive import (
    MAGIC,
    ArchivedJournal,
    ArchiveError,
    CorruptSegment,
    archive,
    archive_dir_for,
    archived_record,
    iter_raw,
    list_segments,
    overlap_problems,
    read_header,
    read_records,
    unarchive,
    write_segment,
)
from journal.checkpoints import CheckpointStore
from matcher.process import Matcher
from matcher.recovery import rebuild
from tests.journal.journal_helpers import REPO, batch, sample_record, spawn
from tests.matcher.checkpointed import SPEC, build

SYMBOL = "BTCUSDT"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return journal_path(tmp_path / "journal", SYMBOL)


def _journal(path: Path, n: int) -> list[tuple[int, bytes]]:
    with Journal(path) as j:
        j.append(batch(1, n))
        return list(j.read_raw())


def _everything(path: Path) -> list[tuple[int, bytes]]:
    with ArchivedJournal(path) as j:
        return list(j.read_raw())


def _live(path: Path) -> tuple[int, int]:
    with Journal(path, readonly=True) as j:
        return j.first_seq(), j.last_seq()


# --- the format -------------------------------------------------------------------------------


@pytest.mark.parametrize("block_records", [1, 7, 30, 1000])
def test_segment_round_trip(tmp_path: Path, block_records: int) -> None:
    records = batch(41, 30)
    values = [encode(r) for r in records]
    segment = write_segment(tmp_path, SYMBOL, 41, values, block_records=block_records)
    assert segment.path.name == "00000000000000000041-00000000000000000070.seg"
    assert (segment.first_seq, segment.last_seq, segment.records) == (41, 70, 30)
    assert segment.path.read_bytes().startswith(MAGIC)
    head = read_header(segment.path)
    assert (head.symbol, head.first_seq, head.last_seq, head.count) == (SYMBOL, 41, 70, 30)
    assert (head.block_records, len(head.blocks)) == (block_records, -(-30 // block_records))
    assert head.raw_bytes == sum(4 + len(v) for v in values)
    assert head.header_bytes + head.body_bytes == segment.size()
    assert list(iter_raw(segment.path)) == list(zip(range(41, 71), values, strict=True))
    assert list(read_records(segment.path)) == records  # the stored values, decoded unchanged
    assert list(read_records(segment.path, 50, 52)) == records[9:12]
    assert list(read_records(segment.path, 47, 62)) == records[6:22]  # across blocks
    assert list(read_records(segment.path, 69, 1000)) == records[28:]
    assert list(read_records(segment.path, 71)) == []
    assert list_segments(tmp_path) == [segment]
    assert [p.name for p in tmp_path.iterdir()] == [segment.path.name]  # no temp file left


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda size: size - 3, "body checksum mismatch"),
        (lambda _size: 20, "header checksum mismatch"),
        (lambda _size: 0, "bad magic"),
    ],
)
def test_a_damaged_segment_is_detected(tmp_path: Path, where: object, reason: str) -> None:
    segment = write_segment(tmp_path, SYMBOL, 1, [encode(r) for r in batch(1, 20)])
    data = bytearray(segment.path.read_bytes())
    assert callable(where)
    data[where(len(data))] ^= 0x40
    segment.path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegment, match=reason) as caught:
        list(iter_raw(segment.path, 5, 6))  # checked before anything is yielded
    assert (caught.value.seq_hint, caught.value.resume_seq) == (1, 21)


def test_a_lookup_decompresses_one_block_and_checks_its_record(path: Path) -> None:
    _journal(path, 60)
    archive(path, SYMBOL, 50)
    (segment,) = list_segments(archive_dir_for(path))
    head = read_header(segment.path)
    assert head.blocks == [head.body_bytes]  # 50 records: one block
    rewritten = write_segment(
        segment.path.parent, SYMBOL, 1, [raw for _, raw in iter_raw(segment.path)], block_records=10
    )
    assert rewritten.path == segment.path and len(read_header(segment.path).blocks) == 5
    # Damage the last block: lookups in the other blocks still work (their records carry
    # their own CRC); one in the damaged block fails; a full read refuses the segment.
    data = bytearray(segment.path.read_bytes())
    data[-3] ^= 0x10
    segment.path.write_bytes(bytes(data))
    assert archived_record(path, 7) == sample_record(7)
    assert archived_record(path, 40) == sample_record(40)
    with pytest.raises(CorruptRecord):
        archived_record(path, 45)
    with pytest.raises(CorruptSegment, match="body checksum mismatch"):
        list(iter_raw(segment.path, 7, 7))


def test_a_truncated_segment_is_detected(tmp_path: Path) -> None:
    segment = write_segment(tmp_path, SYMBOL, 1, [encode(r) for r in batch(1, 20)])
    segment.path.write_bytes(segment.path.read_bytes()[:-10])
    with pytest.raises(CorruptSegment, match="truncated"):
        list(iter_raw(segment.path))


# --- archiving --------------------------------------------------------------------------------


def test_archive_moves_records_into_segments_and_reads_them_back(path: Path) -> None:
    before = _journal(path, 50)
    result = archive(path, SYMBOL, 30, segment_records=12)
    assert (result.through_seq, result.archived, result.discarded) == (30, 30, 30)
    assert [(s.first_seq, s.last_seq) for s in result.segments] == [(1, 12), (13, 24), (25, 30)]
    assert list_segments(archive_dir_for(path)) == result.segments
    assert archive_dir_for(path) == path.parent / "BTCUSDT.archive"
    assert _live(path) == (31, 50)
    assert _everything(path) == before
    with ArchivedJournal(path) as j:
        assert (j.first_seq(), j.live_first_seq(), j.last_seq()) == (1, 31, 50)
        assert list(j.read(10, 35)) == batch(10, 26)  # across segments and into LMDB
        assert list(j.read(25, 25)) == batch(25, 1)
        assert j.get(13) == sample_record(13) and j.get(40) == sample_record(40) and j.get(51) is None
    assert archived_record(path, 7) == sample_record(7) and archived_record(path, 31) is None
    # Nothing new covered: a rerun writes nothing; a later edge continues the chain.
    assert archive(path, SYMBOL, 30).archived == 0
    assert [(s.first_seq, s.last_seq) for s in archive(path, SYMBOL, 40).segments] == [(31, 40)]
    assert _everything(path) == before


def test_the_newest_record_and_keep_stay_in_lmdb(path: Path) -> None:
    before = _journal(path, 20)
    assert archive(path, SYMBOL, 20, keep=5).through_seq == 15
    assert _live(path) == (16, 20)
    assert archive(path, SYMBOL, 10**9).through_seq == 19  # never the newest one
    assert _live(path) == (20, 20)
    assert _everything(path) == before
    with Journal(path) as j:  # a reopened writer still knows where it is, and appends
        assert j.last_seq() == 20
        j.append(batch(21, 2))
        with pytest.raises(ValueError, match="newest"):
            j.discard_through(22)
    assert _everything(path) == [*before, *[(s, encode(sample_record(s))) for s in (21, 22)]]


def test_archiving_never_changes_the_map_size_the_writer_chose(path: Path) -> None:
    with Journal(path, map_size=8 << 20) as j:
        j.append(batch(1, 100))
    archive(path, SYMBOL, 60)
    env = lmdb.open(str(path), subdir=False, readonly=True, max_dbs=4, map_size=4096)
    env.set_mapsize(0)  # the size the file records
    assert env.info()["map_size"] == 8 << 20
    env.close()


def test_a_crash_between_segment_and_delete_leaves_an_overlap_that_a_rerun_finishes(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _journal(path, 40)

    def crash(self: Journal, through_seq: int, *, chunk: int = 0) -> int:
        raise KeyboardInterrupt("killed after the segment's rename, before the delete")

    with monkeypatch.context() as m:
        m.setattr(Journal, "discard_through", crash)
        with pytest.raises(KeyboardInterrupt):
            archive(path, SYMBOL, 25)
    # The segment is durable, and LMDB still has every record: both hold 1..25.
    assert [(s.first_seq, s.last_seq) for s in list_segments(archive_dir_for(path))] == [(1, 25)]
    assert _live(path) == (1, 40)
    assert _everything(path) == before  # each record once
    with ArchivedJournal(path) as j:
        assert list(overlap_problems(j)) == []
    # A rerun (same edge, or a further one) deletes the leftovers and never writes a seq twice.
    result = archive(path, SYMBOL, 30)
    assert (result.discarded, result.archived) == (30, 5)
    assert [(s.first_seq, s.last_seq) for s in list_segments(archive_dir_for(path))] == [(1, 25), (26, 30)]
    assert _live(path) == (31, 40)
    assert _everything(path) == before
    again = archive(path, SYMBOL, 30)
    assert (again.archived, again.discarded, again.segments) == (0, 0, [])


def test_a_crash_in_the_middle_of_the_delete(path: Path) -> None:
    before = _journal(path, 40)
    archive(path, SYMBOL, 10)
    write_segment(archive_dir_for(path), SYMBOL, 11, [raw for seq, raw in before if 11 <= seq <= 30])
    with Journal(path) as j:
        j.discard_through(17, chunk=4)  # some transactions committed, then the "crash"
    assert _live(path) == (18, 40)
    assert _everything(path) == before
    (archive_dir_for(path) / ".00000000000000000031-00000000000000000035.seg.tmp").write_bytes(b"half")
    result = archive(path, SYMBOL, 30)
    assert (result.archived, result.discarded) == (0, 13)
    assert _live(path) == (31, 40)
    assert sorted(p.name for p in archive_dir_for(path).iterdir()) == [
        ".lock",
        "00000000000000000001-00000000000000000010.seg",
        "00000000000000000011-00000000000000000030.seg",
    ]  # the unfinished temp file of the crashed run is gone
    assert _everything(path) == before


def test_an_overlap_that_disagrees_is_refused_and_reported(path: Path) -> None:
    _journal(path, 20)
    values = [encode(r) for r in batch(1, 10)]
    values[4] = encode(Record(5, 1, sample_record(5).command, []))  # same seq, other content
    write_segment(archive_dir_for(path), SYMBOL, 1, values)
    with ArchivedJournal(path) as j:
        assert [seq for seq, _ in overlap_problems(j)] == [5]
    with pytest.raises(ArchiveError, match="seq 5 differs"):
        archive(path, SYMBOL, 15)
    assert _live(path) == (1, 20)  # nothing deleted


def test_a_broken_chain_or_a_hole_is_refused(path: Path) -> None:
    before = _journal(path, 30)
    write_segment(archive_dir_for(path), SYMBOL, 3, [raw for seq, raw in before if 3 <= seq <= 5])
    with pytest.raises(ArchiveError, match="not contiguous"):
        archive(path, SYMBOL, 20)
    assert _live(path) == (1, 30)


def test_one_archiver_at_a_time(path: Path) -> None:
    import fcntl

    _journal(path, 10)
    lock = archive_dir_for(path) / ".lock"
    lock.parent.mkdir()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        # flock is per open file description: a second open in this process conflicts too.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ArchiveError, match="another archive run"):
            archive(path, SYMBOL, 5)
    finally:
        os.close(fd)
    assert archive(path, SYMBOL, 5).archived == 5


def test_unarchive_puts_the_records_back_for_a_full_replay(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "journal", SYMBOL)
    hashes, _snaps = build(path, None, 120, [], spec=SPEC)
    before = _everything(path)
    archive(path, SYMBOL, 90, segment_records=40)
    assert _live(path) == (91, 120)
    assert unarchive(path, chunk=15) == 90
    assert _live(path) == (1, 120)
    with Journal(path) as journal:  # LMDB alone holds the whole journal again
        assert list(journal.read_raw()) == before
        assert rebuild(journal, SPEC, None).engine.state_hash() == hashes[120]
    assert _everything(path) == before and unarchive(path) == 0
    # Segments stayed: a later archive run only drops the records from LMDB again, and only
    # as far as its edge (the checkpoint) reaches.
    assert archive(path, SYMBOL, 50).discarded == 50
    assert _live(path) == (51, 120)
    again = archive(path, SYMBOL, 90)
    assert (again.archived, again.discarded) == (0, 40)
    assert _live(path) == (91, 120) and _everything(path) == before


# --- reading through the archive ----------------------------------------------------------------


def test_a_reader_opened_before_an_archive_run_still_reads_everything(path: Path) -> None:
    before = _journal(path, 30)
    with ArchivedJournal(path) as reader:
        assert reader.segments() == []
        # Another process (LMDB allows one open of a file per process).
        code = f"import journal.archive as a; a.archive({str(path)!r}, 'BTCUSDT', 20, segment_records=8)"
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
        assert list(reader.read_raw()) == before  # the moved records are found in the new segments
        assert reader.get(3) == sample_record(3)


def test_a_damaged_segment_stops_a_read_at_its_first_seq(path: Path) -> None:
    _journal(path, 30)
    archive(path, SYMBOL, 20, segment_records=10)
    second = list_segments(archive_dir_for(path))[1].path
    data = bytearray(second.read_bytes())
    data[-5] ^= 0xFF
    second.write_bytes(bytes(data))
    with ArchivedJournal(path) as j:
        seen: list[Record] = []
        with pytest.raises(CorruptSegment) as caught:
            seen.extend(j.read(5))
        assert [r.seq for r in seen] == list(range(5, 11))
        assert (caught.value.seq_hint, caught.value.resume_seq) == (11, 21)
        assert [r.seq for r in j.read(21)] == list(range(21, 31))
        with pytest.raises(CorruptRecord):
            j.get(15)


def test_a_hole_between_archive_and_lmdb_is_a_gap(path: Path) -> None:
    before = _journal(path, 30)
    archive(path, SYMBOL, 10)
    with Journal(path) as j:
        j.discard_through(15)  # records 11..15 lost: in neither place
    with ArchivedJournal(path) as j:
        with pytest.raises(CorruptRecord, match="gap in journal: expected seq 11"):
            list(j.read_raw())
        assert list(j.read_raw(16)) == before[15:]


def test_a_missing_segment_is_a_gap_and_reading_resumes_after_it(path: Path) -> None:
    before = _journal(path, 40)
    archive(path, SYMBOL, 30, segment_records=10)
    list_segments(archive_dir_for(path))[1].path.unlink()  # seqs 11..20
    with ArchivedJournal(path) as j:
        with pytest.raises(CorruptRecord, match="gap in journal: expected seq 11") as caught:
            list(j.read_raw())
        assert caught.value.seq_hint == 21  # the next segment, not LMDB's first (31)
        assert list(j.read_raw(21)) == before[20:]
        assert list(j.read_raw(12, 18)) == []  # nothing in range, no far side within it


# --- the rest of the system on an archived journal -------------------------------------------------


def test_recovery_and_a_resend_after_archiving(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "journal", SYMBOL)
    store = tmp_path / "checkpoints.lmdb"
    hashes, _snaps = build(path, store, 120, [50, 90], spec=SPEC)
    archive(path, SYMBOL, 90)
    original = _everything(path)[6]
    with Journal(path) as journal, CheckpointStore(store, readonly=True) as checkpoints:
        assert journal.first_seq() == 91
        recovered = rebuild(journal, SPEC, checkpoints)
        assert (recovered.checkpoint_seq, recovered.seq) == (90, 120)
        assert recovered.engine.state_hash() == hashes[120]
        # A resend of order "o7" (seq 7, archived): answered with the original's events.
        assert journal.get(7) is None
        matcher = types.SimpleNamespace(journal=journal, log=None)
        outcome = Matcher._journaled_outcome(matcher, 7)  # type: ignore[arg-type]
        record = archived_record(path, 7)
        assert record is not None and encode(record) == original[1]
        assert (outcome.seq, outcome.client_order_id, outcome.events) == (7, "o7", record.events)
        assert outcome.events


def test_archiving_beside_a_live_writer_process(path: Path) -> None:
    """The matcher appends (and grows its map) in another process while we archive."""
    with Journal(path, map_size=64 << 10) as j:
        j.append(batch(1, 10))
    writer = spawn("writer", path, 600, 10, 64 << 10)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().startswith("ready")
        rounds, archived = 0, 0
        deadline = time.monotonic() + 60
        while writer.poll() is None and time.monotonic() < deadline:
            _first, last = _live(path)
            archived = archive(path, SYMBOL, last - 50, segment_records=500).through_seq or archived
            rounds += 1
        assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
    finally:
        if writer.poll() is None:
            writer.kill()
    assert rounds >= 2 and archived > 0
    with ArchivedJournal(path) as j:
        assert (j.first_seq(), j.last_seq()) == (1, 6010)
        assert list(j.read()) == batch(1, 6010)
        assert list(overlap_problems(j)) == []
