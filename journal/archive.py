"""Journal retention: records covered by a checkpoint move to compressed segment files.

Where: ``<journal dir>/<SYMBOL>.archive/<first:020d>-<last:020d>.seg``, beside the
instrument's LMDB file, so anything that has a journal's path finds its archive (the CLI
on a copied data dir, the matcher answering a resend). The names sort in seq order.

Segment format, version 1 (all integers big-endian)::

    offset  size  field
    0       8     magic  b"CLOBSEG\\0"
    8       2     version (1)
    10      1     codec (1 = zlib)
    11      1     flags (0)
    12      8     first seq
    20      8     last seq
    28      8     record count (= last - first + 1: a segment is contiguous)
    36      8     body length (compressed bytes, the rest of the file)
    44      8     raw length (all blocks once decompressed)
    52      4     CRC32 of the body
    56      4     records per block B
    60      4     blocks k (= ceil(count / B))
    64      2     symbol length n
    66      n     symbol, UTF-8
    66+n    8k    compressed length of each block
    66+n+8k 4     CRC32 of header bytes 0 .. 66+n+8k
    70+n+8k ...   body: k independent zlib streams; block i holds the records
                  first + i*B .. (at most B), each as a 4-byte length and the record's stored
                  value exactly as LMDB held it (CRC32 + msgpack ``Record``), so
                  ``journal.record.decode`` reads it unchanged and its own CRC still holds.

Blocks make a lookup (the matcher answering a resend of an archived order) decompress one
block, about a thousand records, never the whole segment.

Writing (``archive``): the segment goes to a dot-named temp file, is fsynced, renamed into
place and the directory fsynced; only then are its records deleted from LMDB
(``Journal.discard_through``, a few thousand per write transaction). A crash in between
leaves the records in both places, identical; readers prefer the segment, ``verify``
checks that both copies agree, and the next ``archive`` run deletes them from LMDB (it
never writes a seq twice). One archiver per instrument at a time: a flock on
``<SYMBOL>.archive/.lock``. The newest record always stays in LMDB (its last seq survives a
reopen), and what may be archived at all (at or below a usable checkpoint's seq, so that
recovery never needs the segments) is the caller's decision: ``clob journal archive``.

Reading (``ArchivedJournal``): a read-only ``Journal`` whose ``read``, ``read_raw``,
``get``, ``first_seq`` and ``last_seq`` span segments then LMDB as one journal.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import lmdb

from journal.errors import CorruptRecord, JournalError
from journal.record import Record, decode
from journal.store import Journal

MAGIC = b"CLOBSEG\x00"
VERSION = 1
CODEC_ZLIB = 1
SUFFIX = ".seg"
LOCK_NAME = ".lock"
SEGMENT_RECORDS = 100_000  # records per segment file at most
BLOCK_RECORDS = 1_000  # records per independently compressed block: a lookup's cost
ZLIB_LEVEL = 6
_FIXED = struct.Struct(">8sHBBQQQQQIIIH")  # magic .. symbol length
_BLOCK = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_LEN = struct.Struct(">I")
_NAME = re.compile(r"^(\d{20})-(\d{20})\.seg$")
_HEADER_READ = 64 * 1024  # enough for the header of any segment up to ~8M records

T = TypeVar("T")


class CorruptSegment(CorruptRecord):
    """A segment file that cannot be trusted (header, body CRC, decompression, contents).

    ``seq_hint`` is the first seq it should have given; readers that go on after damage
    resume at ``resume_seq`` (the seq after the segment's last).
    """

    def __init__(self, path: Path, seq_hint: int, resume_seq: int, detail: str) -> None:
        super().__init__(seq_hint, f"archived segment {path.name}: {detail}")
        self.path = path
        self.resume_seq = resume_seq
        self.detail = detail


@dataclass(frozen=True)
class Segment:
    """One segment file as its name describes it; ``header`` reads and checks the header."""

    path: Path
    first_seq: int
    last_seq: int

    @property
    def records(self) -> int:
        return self.last_seq - self.first_seq + 1

    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class Header:
    symbol: str
    first_seq: int
    last_seq: int
    count: int
    body_bytes: int
    raw_bytes: int
    body_crc: int
    block_records: int
    blocks: list[int]  # compressed length of each block
    header_bytes: int  # offset of the body


def archive_dir_for(journal_file: str | os.PathLike[str]) -> Path:
    """``<dir>/<SYMBOL>.archive`` for the journal ``<dir>/<SYMBOL>.lmdb``."""
    path = Path(journal_file)
    return path.with_name(f"{path.name.removesuffix('.lmdb')}.archive")


def segment_name(first_seq: int, last_seq: int) -> str:
    return f"{first_seq:020d}-{last_seq:020d}{SUFFIX}"


def list_segments(directory: Path) -> list[Segment]:
    """The segment files in `directory`, by first seq (names only; nothing is opened)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME.match(name)
        if m is not None:
            out.append(Segment(directory / name, int(m.group(1)), int(m.group(2))))
    out.sort(key=lambda s: s.first_seq)
    return out


# --- the format -------------------------------------------------------------------------------


def _header_bytes(
    symbol: str, first: int, last: int, raw_bytes: int, body_crc: int, block_records: int, blocks: list[int]
) -> bytes:
    sym = symbol.encode()
    fixed = _FIXED.pack(
        MAGIC,
        VERSION,
        CODEC_ZLIB,
        0,
        first,
        last,
        last - first + 1,
        sum(blocks),
        raw_bytes,
        body_crc,
        block_records,
        len(blocks),
        len(sym),
    )
    head = fixed + sym + b"".join(_BLOCK.pack(n) for n in blocks)
    return head + _CRC.pack(zlib.crc32(head))


def read_header(path: Path, data: bytes | None = None) -> Header:
    """The checked header of a segment (reads only the header unless `data` is the file)."""
    segment = _segment_of(path)
    fail = _failer(path, segment)
    if data is None:
        with open(path, "rb") as f:
            data = f.read(_HEADER_READ)
    if len(data) < _FIXED.size:
        raise fail("truncated header")
    fields = _FIXED.unpack_from(data)
    magic, version, codec, _flags, first, last, count, body, raw, crc, per_block, k, n = fields
    if magic != MAGIC:
        raise fail("not a segment file (bad magic)")
    if version != VERSION or codec != CODEC_ZLIB:
        raise fail(f"unsupported version {version} / codec {codec}")
    end = _FIXED.size + n + k * _BLOCK.size
    if len(data) < end + _CRC.size:
        raise fail("truncated header")
    if zlib.crc32(data[:end]) != _CRC.unpack_from(data, end)[0]:
        raise fail("header checksum mismatch")
    if (first, last) != (segment.first_seq, segment.last_seq) or count != last - first + 1:
        raise fail(f"header says seq {first}..{last} ({count} records), the name says otherwise")
    blocks = [_BLOCK.unpack_from(data, _FIXED.size + n + i * _BLOCK.size)[0] for i in range(k)]
    if per_block < 1 or k != -(-count // per_block) or sum(blocks) != body:
        raise fail("inconsistent block table")
    symbol = data[_FIXED.size : _FIXED.size + n].decode()
    return Header(symbol, first, last, count, body, raw, crc, per_block, blocks, end + _CRC.size)


def _segment_of(path: Path) -> Segment:
    m = _NAME.match(path.name)
    if m is None:
        raise ValueError(f"{path.name} is not a segment file name")
    return Segment(path, int(m.group(1)), int(m.group(2)))


def _failer(path: Path, segment: Segment) -> Callable[[str], CorruptSegment]:
    return lambda reason: CorruptSegment(path, segment.first_seq, segment.last_seq + 1, reason)


def iter_raw(
    path: Path, from_seq: int = 1, to_seq: int | None = None, *, check_body: bool = True
) -> Iterator[tuple[int, bytes]]:
    """(seq, stored value) of the segment's records within from..to, unverified (as
    ``Journal.read_raw``); only the blocks holding them are decompressed. The header and
    (unless `check_body` is False: a lookup, whose record has its own CRC) the whole body's
    CRC are checked first, so a damaged file raises ``CorruptSegment`` before it yields
    anything. No file stays open."""
    segment = _segment_of(path)
    fail = _failer(path, segment)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise fail(f"unreadable: {exc}") from exc
    head = read_header(path, data)
    body = memoryview(data)[head.header_bytes :]
    if len(body) != head.body_bytes:
        raise fail(f"body is {len(body)} bytes, the header says {head.body_bytes} (truncated?)")
    if check_body and zlib.crc32(body) != head.body_crc:
        raise fail("body checksum mismatch")
    lo = max(from_seq, head.first_seq)
    hi = head.last_seq if to_seq is None else min(to_seq, head.last_seq)
    if lo > hi:
        return
    per = head.block_records
    offsets = [0]
    for n in head.blocks:
        offsets.append(offsets[-1] + n)
    raw_total = 0
    for i in range((lo - head.first_seq) // per, (hi - head.first_seq) // per + 1):
        first = head.first_seq + i * per
        count = min(per, head.last_seq - first + 1)
        raw = _inflate(body[offsets[i] : offsets[i + 1]], fail)
        raw_total += len(raw)
        values = _split(raw, count)
        if values is None:
            raise fail(f"block {i} does not hold its {count} records")
        for offset, value in enumerate(values):
            seq = first + offset
            if lo <= seq <= hi:
                yield seq, value
    if (lo, hi) == (head.first_seq, head.last_seq) and raw_total != head.raw_bytes:
        raise fail(f"raw length is {raw_total}, the header says {head.raw_bytes}")


def _inflate(block: memoryview, fail: Callable[[str], CorruptSegment]) -> bytes:
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(block) + inflate.flush()
    except zlib.error as exc:
        raise fail(f"cannot decompress: {exc}") from exc
    if not inflate.eof or inflate.unused_data:
        raise fail("a compressed block is truncated or has trailing bytes")
    return raw


def _split(raw: bytes, count: int) -> list[bytes] | None:
    """`count` length-prefixed values making up exactly `raw`; None if they do not."""
    out = []
    at = 0
    for _ in range(count):
        if at + _LEN.size > len(raw):
            return None
        (length,) = _LEN.unpack_from(raw, at)
        at += _LEN.size
        if at + length > len(raw):
            return None
        out.append(raw[at : at + length])
        at += length
    return out if at == len(raw) else None


def read_records(path: Path, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Record]:
    """Decoded and checked records of one segment (``CorruptRecord`` on a damaged one)."""
    for seq, raw in iter_raw(path, from_seq, to_seq):
        yield _decode_at(seq, raw)


def _decode_at(seq: int, raw: bytes | memoryview) -> Record:
    record = decode(raw, seq)
    if record.seq != seq:
        raise CorruptRecord(seq, f"stored under seq {seq} but says seq {record.seq}")
    return record


def write_segment(
    directory: Path,
    symbol: str,
    first_seq: int,
    values: list[bytes],
    level: int = ZLIB_LEVEL,
    block_records: int = BLOCK_RECORDS,
) -> Segment:
    """Durably write `values` (stored values of seqs first_seq.. in order) as one segment:
    temp file, fsync, rename, fsync of the directory. Returns the segment."""
    if not values:
        raise ValueError("a segment holds at least one record")
    last_seq = first_seq + len(values) - 1
    _make_dir(directory)
    final = directory / segment_name(first_seq, last_seq)
    tmp = directory / f".{final.name}.tmp"
    blocks = []
    raw_bytes = 0
    for i in range(0, len(values), block_records):
        raw = b"".join(_LEN.pack(len(v)) + v for v in values[i : i + block_records])
        raw_bytes += len(raw)
        blocks.append(zlib.compress(raw, level))
    body = b"".join(blocks)
    head = _header_bytes(
        symbol, first_seq, last_seq, raw_bytes, zlib.crc32(body), block_records, [len(b) for b in blocks]
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(head)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)
    return Segment(final, first_seq, last_seq)


def _make_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        _fsync_dir(directory.parent)  # the new directory's entry, durable before any segment


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def archived_record(journal_file: str | os.PathLike[str], seq: int) -> Record | None:
    """The record `seq` from the journal's archive; None if no segment holds it.

    For a writer's rare lookups (the matcher answering a resend whose original was
    archived): decompresses one segment at most as far as `seq`. A damaged segment raises
    ``CorruptRecord`` (``CorruptSegment``)."""
    segments = list_segments(archive_dir_for(journal_file))
    i = bisect.bisect_right([s.first_seq for s in segments], seq) - 1
    if i < 0 or seq > segments[i].last_seq:
        return None
    for raw_seq, raw in iter_raw(segments[i].path, seq, seq, check_body=False):
        return _decode_at(raw_seq, raw)
    return None


# --- reading a journal through its archive ---------------------------------------------------


class ArchivedJournal(Journal):
    """A journal and its archive read as one: segments first, then LMDB.

    Read-only by intent (``readonly=True`` by default). ``first_seq``/``last_seq`` span
    both; ``live_first_seq`` is LMDB's own. Where a seq is in both (a crash between a
    segment's rename and the delete), the segment's copy is read. An archiver running
    meanwhile is fine: a record missing from LMDB below its first is looked for in
    segments listed afresh.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = True,
        archive_dir: str | os.PathLike[str] | None = None,
        **kwargs: int,
    ) -> None:
        super().__init__(path, readonly=readonly, **kwargs)
        self.archive_dir = Path(archive_dir) if archive_dir is not None else archive_dir_for(path)
        self._segments = list_segments(self.archive_dir)

    def segments(self, *, refresh: bool = False) -> list[Segment]:
        if refresh:
            self._segments = list_segments(self.archive_dir)
        return self._segments

    def live_first_seq(self) -> int:
        """LMDB's lowest seq (0 when empty)."""
        return super().first_seq()

    def first_seq(self) -> int:
        segments = self.segments(refresh=True)
        live = self.live_first_seq()
        if segments:
            return segments[0].first_seq if not live else min(segments[0].first_seq, live)
        return live

    def last_seq(self) -> int:
        segments = self.segments()
        return max(super().last_seq(), segments[-1].last_seq if segments else 0)

    def get(self, seq: int) -> Record | None:
        record = super().get(seq)
        if record is not None:
            return record
        segment = self._segment_at(seq, refresh=True)
        if segment is None:
            return None
        for found in read_records(segment.path, seq, seq):
            return found
        return None

    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Record]:
        for _, record in self._merged(from_seq, to_seq, _decode_at):
            yield record

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        return self._merged(from_seq, to_seq, lambda _seq, raw: bytes(raw))

    def _segment_at(self, seq: int, *, refresh: bool = False) -> Segment | None:
        segments = self.segments(refresh=refresh)
        i = bisect.bisect_right([s.first_seq for s in segments], seq) - 1
        if i >= 0 and segments[i].first_seq <= seq <= segments[i].last_seq:
            return segments[i]
        return None

    def _merged(
        self, from_seq: int, to_seq: int | None, convert: Callable[[int, bytes | memoryview], T]
    ) -> Iterator[tuple[int, T]]:
        nxt = max(from_seq, 1)
        started = False  # once a record was yielded, every next one must follow it
        while to_seq is None or nxt <= to_seq:
            segment = self._segment_at(nxt)
            if segment is not None:
                try:
                    for seq, raw in iter_raw(segment.path, nxt, to_seq):
                        yield seq, convert(seq, raw)
                        nxt, started = seq + 1, True
                except CorruptSegment as exc:  # name the first seq this read did not get
                    raise CorruptSegment(exc.path, nxt, exc.resume_seq, exc.detail) from exc
                continue
            chunk, damage = self._read_chunk(nxt, to_seq, convert)
            if not chunk or chunk[0][0] != nxt:
                if self._segment_at(nxt, refresh=True) is not None:
                    continue  # archived while we read: it is in a segment now
                later = [s.first_seq for s in self._segments if s.first_seq > nxt][:1]
                ahead = min(later + ([chunk[0][0]] if chunk else []), default=None)
                if ahead is None or (to_seq is not None and ahead > to_seq):
                    return  # nothing more in range (as Journal.read: no gap without a far side)
                if started or any(s.first_seq <= nxt for s in self._segments):
                    # Its far side (a later segment or LMDB) is where a reader may resume.
                    raise CorruptRecord(ahead, f"gap in journal: expected seq {nxt}")
                if later and later[0] == ahead:
                    nxt = ahead  # the journal starts in a segment after from_seq
                    continue
            for seq, item in chunk:
                if started and seq != nxt:
                    raise CorruptRecord(seq, f"gap in journal: expected seq {nxt}")
                yield seq, item
                nxt, started = seq + 1, True
            if damage is not None:
                raise damage
            if not chunk:
                return


# --- archiving --------------------------------------------------------------------------------


class ArchiveError(JournalError):
    """Archiving refused or failed; nothing unsafe was done (see the message)."""


@dataclass
class ArchiveResult:
    symbol: str
    through_seq: int  # records <= this are archived now (0: nothing was)
    segments: list[Segment] = field(default_factory=list)  # written by this run
    archived: int = 0  # records written to new segments
    discarded: int = 0  # records deleted from LMDB (new segments + a crashed run's leftovers)
    note: str = ""


@contextlib.contextmanager
def archive_lock(directory: Path) -> Iterator[None]:
    _make_dir(directory)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ArchiveError(f"another archive run holds {directory / LOCK_NAME}") from exc
        yield
    finally:
        os.close(fd)


def check_chain(segments: list[Segment]) -> None:
    """Segments must run 1.. with no gap or overlap (names only); ``ArchiveError`` if not."""
    expected = 1
    for s in segments:
        if s.first_seq != expected or s.last_seq < s.first_seq:
            raise ArchiveError(
                f"archive segments are not contiguous at {s.path.name} (expected seq {expected})"
            )
        expected = s.last_seq + 1


def archive(
    journal_file: str | os.PathLike[str],
    symbol: str,
    through_seq: int,
    *,
    keep: int = 0,
    segment_records: int = SEGMENT_RECORDS,
    level: int = ZLIB_LEVEL,
) -> ArchiveResult:
    """Move the records <= `through_seq` (and older than the newest `keep`) from the journal's
    LMDB to segments. The caller vouches that `through_seq` is covered by a usable
    checkpoint. Idempotent: a rerun finishes what a crashed run left (records both in a
    segment and in LMDB are checked equal, then deleted from LMDB). Safe beside a live
    matcher. Raises ``ArchiveError`` (nothing unsafe done) or a ``JournalError``."""
    path = Path(journal_file)
    if not path.is_file():
        raise ArchiveError(f"no journal at {path}")
    directory = archive_dir_for(path)
    result = ArchiveResult(symbol, 0)
    with archive_lock(directory):
        for stale in directory.glob(f".*{SUFFIX}.tmp"):
            stale.unlink()  # a crashed run's unfinished segment: never renamed, never trusted
        segments = list_segments(directory)
        check_chain(segments)
        archived_last = segments[-1].last_seq if segments else 0
        with _open_writer(path) as journal:
            live_first, last = journal.first_seq(), journal.last_seq()
            if not last:
                result.note = "the journal is empty"
                return result
            if live_first > archived_last + 1:
                raise ArchiveError(
                    f"records {archived_last + 1}..{live_first - 1} are neither archived nor in {path.name}"
                )
            edge = min(through_seq, last - max(keep, 1))
            upto = min(archived_last, edge)
            if upto >= live_first:
                # Left by a run that crashed after its segment's rename (or by `unarchive`):
                # the copies must agree. Only what `through_seq` covers leaves LMDB.
                _check_overlap(journal, segments, live_first, upto)
                result.discarded += journal.discard_through(upto)
                result.through_seq = upto
            start = max(archived_last + 1, live_first)
            if edge < start:
                result.note = result.note or f"nothing new to archive (archived through seq {archived_last})"
                return result
            while start <= edge:
                end = min(edge, start + segment_records - 1)
                values = [raw for _, raw in journal.read_raw(start, end)]
                if len(values) != end - start + 1:
                    raise ArchiveError(f"{path.name}: records {start}..{end} are not all there")
                for offset, raw in enumerate(values):
                    _decode_at(start + offset, raw)  # never archive a damaged record
                segment = write_segment(directory, symbol, start, values, level)
                result.segments.append(segment)
                result.archived += len(values)
                result.discarded += journal.discard_through(end)
                result.through_seq = end
                start = end + 1
    return result


def unarchive(journal_file: str | os.PathLike[str], *, chunk: int = SEGMENT_RECORDS) -> int:
    """Put every archived record that LMDB no longer holds back into it; how many.

    For a matcher that must replay from before its journal's first record (every checkpoint
    covering the archived range lost or damaged): afterwards LMDB holds the whole journal
    again. Segments stay (records in both places are what an interrupted `archive` leaves;
    a later `archive` run drops from LMDB again those a usable checkpoint covers). Best
    with the daemon stopped."""
    path = Path(journal_file)
    if not path.is_file():
        raise ArchiveError(f"no journal at {path}")
    directory = archive_dir_for(path)
    restored = 0
    with archive_lock(directory):
        segments = list_segments(directory)
        check_chain(segments)
        with _open_writer(path) as journal:
            # Newest first: each batch ends right before LMDB's first record.
            for segment in reversed(segments):
                live_first = journal.first_seq()
                upto = min(segment.last_seq, live_first - 1)
                while upto >= segment.first_seq:
                    lo = max(segment.first_seq, upto - chunk + 1)
                    values = [raw for _, raw in iter_raw(segment.path, lo, upto)]
                    for offset, raw in enumerate(values):
                        _decode_at(lo + offset, raw)  # never put a damaged record back
                    journal.prepend_encoded(lo, values)
                    restored += len(values)
                    upto = lo - 1
    return restored


def _open_writer(path: Path) -> Journal:
    """The journal as a second writer beside the matcher. The smallest map is asked for, so
    Journal adopts the size the file records and never changes the matcher's. LMDB refuses
    a first transaction if the matcher grew the file in the instant after our open: retry."""
    for _ in range(100):
        try:
            return Journal(path, map_size=1 << 16)
        except lmdb.MapResizedError:
            time.sleep(0.01)
    raise ArchiveError(f"{path}: the map keeps being resized under us; try again")


def _check_overlap(journal: Journal, segments: list[Segment], first: int, last: int) -> None:
    for segment in segments:
        lo, hi = max(first, segment.first_seq), min(last, segment.last_seq)
        if lo > hi:
            continue
        archived = dict(iter_raw(segment.path, lo, hi))
        for seq, raw in journal.read_raw(lo, hi):
            if archived.get(seq) != raw:
                raise ArchiveError(f"seq {seq} differs between {segment.path.name} and the journal")


def overlap_problems(journal: ArchivedJournal) -> Iterator[tuple[int, str]]:
    """(seq, reason) for every record held both by a segment and by LMDB that differs."""
    live_first = journal.live_first_seq()
    if not live_first:
        return
    for segment in journal.segments():
        if segment.last_seq < live_first:
            continue
        try:
            archived = dict(iter_raw(segment.path, live_first, segment.last_seq))
        except CorruptSegment as exc:
            yield exc.seq_hint or segment.first_seq, exc.reason
            continue
        for seq, raw in Journal.read_raw(journal, live_first, segment.last_seq):
            if archived.get(seq) != raw:
                yield seq, f"the copy in {segment.path.name} differs from the one in LMDB"
