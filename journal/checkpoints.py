"""Checkpoints: a book's full state at a journal sequence, so recovery replays only the tail.

One LMDB file, `<data_dir>/checkpoints.lmdb`, written by the snapshotter alone and read by
matchers (recovery), the CLI and replays. Key = symbol, NUL, 8-byte big-endian journal seq,
so one instrument's checkpoints sit together in sequence order and "the newest at or before
seq N" is one cursor step. The checkpoint is CRC32 + msgpack `Snapshot`, like a journal
record; a checkpoint is only an accelerator, so a damaged one is skipped (for an older one,
or for a full replay) — never trusted.

How it is stored: the msgpack comes in pieces (`stepwise_checkpoint` makes one per run of
a level's orders), and a piece is stored once, as a chunk (with its SHA-256 digest, by
which the writer finds it again), however many checkpoints hold it. The value under the
checkpoint's key is a `StoredPieces`: the ids of its chunks and the short pieces inline.
A checkpoint of a 100,000-order book in which a thousand orders came since the last one
writes about 80-130 KiB, not the 5.8 MiB of the whole book: on a small VM's disk every
megabyte written beside the matchers' journal fsyncs showed in their ack latency
(checkpoints of 5.8 MiB every 0.5 s: ack p99 x4-x7 at times; 300 KiB each: x1.4-x1.7,
about as much as encoding with no write at all). A chunk is checked
against its digest when read; `prune` deletes the chunks no kept checkpoint uses. Stores
written before this hold whole values (`CRC32 + msgpack Snapshot`, cut into `_PARTS_DB`),
and are still read.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self, TypeVar, cast

import lmdb
import msgspec

from engine.messages import SCHEMA_VERSION, Checkpoint
from engine.stepwise_checkpoint import run_to_end
from journal.lmdb_files import Committing, check_complete, reserve_lock_file, write_txn

_DB = b"checkpoints"
# Stores written before chunks: a value longer than 256 KiB continued here under its key +
# 4-byte part number (1, 2, ...). Read, and deleted with its checkpoint; no longer written.
_PARTS_DB = b"checkpoint_parts"
# The pieces of checkpoints, each once: key = symbol, NUL, 8-byte big-endian id, in the
# order they were written; value = the piece's digest (`_digest`), then the piece. Ids in
# write order put a checkpoint's new chunks side by side at the end of the tree: keyed by
# digest, each landed on a page of its own, and a checkpoint of 130 KiB of new chunks
# rewrote about 700 KiB of pages (ack p99 x1.19-1.23 against x1.02-1.04 for a 30 KiB write).
_CHUNKS_DB = b"checkpoint_chunks"
# New chunks per synced transaction: one transaction of a whole big book (5.8 MiB for
# 133,000 orders) would make every matcher's journal fsync queue behind it.
PART_BYTES = 1 << 18
# Pieces shorter than this are kept in the checkpoint's own value (array headers, the
# fields around the book): a chunk costs its digest in the value and a key in the store.
# Longer ones are not: an inline piece is written again by every checkpoint that holds it
# (at 256 bytes, 31-55 KiB of every checkpoint of the bench's book; at 64, 2 KiB).
INLINE_BYTES = 64
# A piece longer than PART_BYTES (a whole snapshot handed to `put`) is cut into chunks of
# this size.
CHUNK_BYTES = 1 << 16
# Short pieces side by side (a book of one-order levels is all of them) are joined into one
# stored piece, ended after a piece whose CRC32 has its low GROUP_BITS zero (one in 64) or
# at GROUP_BYTES: where a group ends depends on its pieces alone, so an unchanged stretch of
# the book is the same group again. Else every one of them would be inline, in a value
# written whole by every checkpoint.
GROUP_BITS = 6
GROUP_BYTES = 4096
# Pieces listed, and chunks read back and checked, between two yields of `put_steps`.
PIECES_PER_STEP = 256
SCRUBBED_PER_STEP = 32
# Chunk keys a prune's full count scans between two yields.
KEYS_PER_STEP = 1_000
# Chunk ids a prune takes off the count of uses, and chunks it deletes, between two yields:
# steps of a few tenths of a millisecond, under the snapshotter's pacing slice. Taking four
# checkpoints' lists (about 3,700 ids each on the bench's book) off the count in one step
# took 3 ms, and the steps around the last commit 0.7-2.6 ms, in a process of their own.
IDS_PER_STEP = 1_000
DELETES_PER_STEP = 64
# Of the chunks a checkpoint uses that the store already holds, it reads back one in
# SCRUB_EVERY (by digest, a different sixteenth each time) and rewrites any that no longer
# match their digest: a damaged chunk fails every checkpoint that lists it, and would be
# listed again and again. Within SCRUB_EVERY checkpoints every chunk in use is checked.
SCRUB_EVERY = 16
FILE_NAME = "checkpoints.lmdb"  # in the data directory, beside journal/
_CRC = 4
# What a chunk's value begins with, and how the writer finds a piece among the stored ones:
# the first 16 bytes of its SHA-256 (the odds of any collision among 2^32 chunks: about
# 2^-65).
_DIGEST = 16
_ID = 8  # a chunk's key after its symbol and NUL: its id, big-endian
# What a `StoredPieces` value holds first, where a whole stored `Snapshot` holds its
# snapshot id (a UUID): which of the two a value is.
PIECES_MARKER = "clobd.checkpoint.pieces.v1"


class Snapshot(msgspec.Struct, array_like=True, frozen=True, gc=False):
    snapshot_id: str  # UUID4, how operators name it
    symbol: str
    seq: int  # the journal sequence this state reflects (every record up to it applied)
    taken_at: int  # unix ns, the snapshotter's clock (informational only)
    state_hash: str  # Engine.state_hash() of `state`: checked again after restore
    state: Checkpoint  # every resting order in queue order, and the engine's counters
    version: int = SCHEMA_VERSION


class SnapshotInfo(msgspec.Struct, frozen=True):
    """What a listing shows, without decoding every order."""

    snapshot_id: str
    symbol: str
    seq: int
    taken_at: int
    state_hash: str
    resting_orders: int
    size_bytes: int


class StoredPieces(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What a checkpoint's key holds (after its CRC32): its msgpack as pieces, in order."""

    marker: str  # PIECES_MARKER
    chunks: list[int]  # the id of each chunk it uses, once each (all `prune` reads)
    layout: list[bytes | int]  # the pieces: inline bytes, or an index into `chunks`


class Stored(msgspec.Struct, frozen=True):
    size: int  # bytes of the checkpoint (CRC32 + msgpack Snapshot), as `decode` reads it
    written: int  # bytes this write added: new chunks and the value that lists them
    repaired: int = 0  # chunks it found stored but damaged, and wrote again
    pruned: int = 0  # older checkpoints it deleted (`put_steps` with `keep`)


class _Pruning(NamedTuple):
    """What a prune did in its transaction, for the store's counts once it is committed."""

    deleted: int  # checkpoints
    uses: Counter[int] | None  # the count of uses after it (None: count again next time)
    unused: list[int]  # chunk ids no kept checkpoint lists any more
    left: list[int]  # of those, the ones still stored (for `_delete_left`)


class _ListedChunks(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The head of a StoredPieces: all a prune reads (msgspec skips the fields after it)."""

    marker: str
    chunks: list[int]


class _Marker(msgspec.Struct, array_like=True):
    marker: str  # a StoredPieces' PIECES_MARKER, or a whole Snapshot's snapshot id


class CorruptSnapshot(Exception):
    def __init__(self, symbol: str, seq: int, reason: str) -> None:
        super().__init__(f"checkpoint {symbol}@{seq}: {reason}")
        self.symbol, self.seq, self.reason = symbol, seq, reason


_T = TypeVar("_T")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)
_marker_decoder = msgspec.msgpack.Decoder(_Marker)
_pieces_decoder = msgspec.msgpack.Decoder(StoredPieces)
_listed_decoder = msgspec.msgpack.Decoder(_ListedChunks)


# The `state` of a snapshot whose state is handed to `CheckpointStore.put_steps` as encoded
# pieces (`stepwise_checkpoint.EncodedState.pieces`) instead.
STATE_IN_PIECES = msgspec.Raw(b"")


def new_snapshot(
    symbol: str, seq: int, taken_at: int, state: Checkpoint | msgspec.Raw, state_hash: str
) -> Snapshot:
    """A new snapshot of `state`: a Checkpoint, or one already encoded (`stepwise_checkpoint`),
    which is stored as it is — msgspec writes a Raw verbatim — and decodes as a Checkpoint;
    or STATE_IN_PIECES."""
    return Snapshot(str(uuid.uuid4()), symbol, seq, taken_at, state_hash, cast(Checkpoint, state))


def encode(snapshot: Snapshot) -> bytes:
    payload = _msgpack(snapshot)
    return zlib.crc32(payload).to_bytes(_CRC, "big") + payload


def _msgpack(snapshot: Snapshot) -> bytes:
    """msgpack of a whole snapshot; one made with STATE_IN_PIECES has no whole encoding."""
    if _in_pieces(snapshot):
        raise ValueError("this snapshot's state comes in pieces: store it with put_steps")
    return _encoder.encode(snapshot)


def _in_pieces(snapshot: Snapshot) -> bool:
    return cast(object, snapshot.state) is STATE_IN_PIECES


def decode(raw: bytes | memoryview, symbol: str = "?", seq: int = 0) -> Snapshot:
    view = memoryview(raw)
    if len(view) <= _CRC or zlib.crc32(view[_CRC:]) != int.from_bytes(view[:_CRC], "big"):
        raise CorruptSnapshot(symbol, seq, "checksum mismatch (corrupted or truncated)")
    try:
        return _decoder.decode(view[_CRC:])
    except msgspec.DecodeError as exc:
        raise CorruptSnapshot(symbol, seq, f"undecodable: {exc}") from exc


def _decode_stored(raw: bytes | memoryview, symbol: str, seq: int) -> Snapshot:
    """`decode`, and the snapshot must be the one its key names (else a damaged key)."""
    snapshot = decode(raw, symbol, seq)
    if (snapshot.symbol, snapshot.seq) != (symbol, seq):
        raise CorruptSnapshot(symbol, seq, f"stored under its key but says {snapshot.symbol}@{snapshot.seq}")
    return snapshot


def _payload(snapshot: Snapshot, state: Sequence[bytes] | None) -> list[bytes]:
    """msgpack of `snapshot` in pieces: the snapshot's own encoding, or, for one made with
    STATE_IN_PIECES, its fields around `state`'s pieces (a Raw is written as it is, and the
    state is followed by `version` alone)."""
    if state is None:
        return [_msgpack(snapshot)]
    if not _in_pieces(snapshot):
        raise ValueError("state pieces for a snapshot that has a state of its own")
    around = _encoder.encode(snapshot)
    version = _encoder.encode(snapshot.version)
    return [around[: -len(version)], *state, version]


def checkpoints_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / FILE_NAME


def flush_store(path: str | os.PathLike[str]) -> None:
    """Make every checkpoint a reader has seen in the store at `path` durable.

    The writer commits without flushing the meta page (`metasync` off), so a crash of the
    machine may undo its newest checkpoint. Whoever deletes journal records because a
    checkpoint covers them (`clob journal archive`) flushes the file first, after reading:
    LMDB has no flush for a read-only handle, but fsync of any descriptor flushes the file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key(symbol: str, seq: int) -> bytes:
    return symbol.encode() + b"\x00" + seq.to_bytes(8, "big")


def _part_key(key: bytes, number: int) -> bytes:
    return key + number.to_bytes(4, "big")


def _split(key: bytes | memoryview) -> tuple[str, int]:
    raw = bytes(key)  # the seq's 8 bytes may hold NULs too: split by position
    # errors="replace": a damaged key names no real symbol (its value fails its checksum and
    # is skipped), rather than raising out of a listing or a recovery.
    return raw[:-9].decode(errors="replace"), int.from_bytes(raw[-8:], "big")


def _digest(piece: bytes | memoryview) -> bytes:
    return hashlib.sha256(piece).digest()[:_DIGEST]


def _chunk_key(prefix: bytes, chunk_id: int) -> bytes:
    return prefix + chunk_id.to_bytes(_ID, "big")


def _intact(value: bytes | memoryview) -> bool:
    """Whether a stored chunk (digest, then piece) is what its digest says."""
    return len(value) >= _DIGEST and _digest(memoryview(value)[_DIGEST:]) == bytes(value[:_DIGEST])


def _chunk_prefix(key: bytes | memoryview) -> bytes:
    """Where the chunks of the checkpoint at `key` are: its symbol and NUL, as stored."""
    return bytes(key)[:-8]


StoredPiece = tuple[bytes, bytes | None]  # a piece as stored, and its chunk digest (None: inline)
ChunkPiece = tuple[bytes, bytes]  # a piece stored as a chunk, and its digest


def _stored_as(
    pieces: list[bytes],
    digests: Sequence[bytes | None] | None = None,
    digest_of: Callable[[bytes], bytes] = _digest,
) -> Iterator[StoredPiece]:
    """`pieces` as they are stored, each with its chunk digest, or None for one kept inline
    (shorter than INLINE_BYTES): those longer than PART_BYTES cut into CHUNK_BYTES each (no
    chunk is more than one synced transaction should write), and short ones side by side
    joined into groups (GROUP_BITS, GROUP_BYTES). A piece stored as it is keeps the digest
    `digests` (a SHA-256 per piece or None, or none at all) gives it; `digest_of` takes
    the others'."""
    group: list[bytes] = []
    size = 0
    for piece, digest in zip(pieces, digests or [None] * len(pieces), strict=True):
        length = len(piece)
        if INLINE_BYTES <= length <= PART_BYTES:
            if group:
                yield _grouped(group, digest_of)
                group, size = [], 0
            yield piece, digest_of(piece) if digest is None else digest[:_DIGEST]
        elif length > PART_BYTES:
            if group:
                yield _grouped(group, digest_of)
                group, size = [], 0
            for at in range(0, length, CHUNK_BYTES):
                part = piece[at : at + CHUNK_BYTES]
                yield part, digest_of(part)
        else:
            group.append(piece)
            size += length
            if size >= GROUP_BYTES or zlib.crc32(piece) & _GROUP_MASK == 0:
                yield _grouped(group, digest_of)
                group, size = [], 0
    if group:
        yield _grouped(group, digest_of)


def _grouped(group: list[bytes], digest_of: Callable[[bytes], bytes]) -> StoredPiece:
    piece = b"".join(group)
    return piece, digest_of(piece) if len(piece) >= INLINE_BYTES else None


_GROUP_MASK = (1 << GROUP_BITS) - 1


def _batches(new: list[tuple[bytes, bytes]]) -> Iterator[list[tuple[bytes, bytes]]]:
    """`new` chunks (key, value) in batches of at most PART_BYTES of values (or one chunk)."""
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in new:
        if batch and size + len(value) > PART_BYTES:
            yield batch
            batch, size = [], 0
        batch.append((key, value))
        size += len(value)
    if batch:
        yield batch


def _uncount(uses: Counter[int], lists: list[list[int]]) -> Generator[None, None, list[int]]:
    """Take the chunk ids in `lists` (of checkpoints deleted) off `uses`; those no checkpoint
    lists any more. Yields after every IDS_PER_STEP ids."""
    unused: list[int] = []
    for chunk_ids in lists:
        for at in range(0, len(chunk_ids), IDS_PER_STEP):
            for chunk_id in chunk_ids[at : at + IDS_PER_STEP]:
                left = uses[chunk_id] - 1
                if left > 0:
                    uses[chunk_id] = left
                else:
                    uses.pop(chunk_id, None)
                    unused.append(chunk_id)
            yield
    return unused


def _stored_pieces(value: bytes | memoryview | None) -> StoredPieces | None:
    """The StoredPieces in `value`, or None: a whole Snapshot (a store before chunks), or a
    value too damaged to say (its CRC32 fails, or it does not decode)."""
    return _decoded(value, _pieces_decoder)


def _listed_chunks(value: bytes | memoryview | None) -> list[int] | None:
    """`_stored_pieces(value).chunks`, in half the time: the layout is not decoded."""
    listed = _decoded(value, _listed_decoder)
    return None if listed is None else listed.chunks


def _decoded(value: bytes | memoryview | None, decoder: msgspec.msgpack.Decoder[_T]) -> _T | None:
    if value is None:
        return None
    view = memoryview(value)
    if len(view) <= _CRC or zlib.crc32(view[_CRC:]) != int.from_bytes(view[:_CRC], "big"):
        return None
    try:
        if _marker_decoder.decode(view[_CRC:]).marker != PIECES_MARKER:
            return None
        return decoder.decode(view[_CRC:])
    except msgspec.DecodeError:
        return None


class _ChunkIds:
    """The chunks stored under one prefix: digest -> id, and back (a prune drops by id)."""

    def __init__(self) -> None:
        self.of: dict[bytes, int] = {}
        self.digest_of: dict[int, bytes] = {}

    def add(self, digest: bytes, chunk_id: int) -> None:
        if digest not in self.of:  # a piece stored twice (a crash between): the first one found
            self.of[digest] = chunk_id
            self.digest_of[chunk_id] = digest

    def drop(self, chunk_ids: list[int]) -> None:
        for chunk_id in chunk_ids:
            digest = self.digest_of.pop(chunk_id, None)
            if digest is not None:
                del self.of[digest]


class CheckpointStore:
    """`CheckpointStore(path)` to write (the snapshotter), `readonly=True` to read."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        map_size: int = 1 << 34,
        committing: Committing = contextlib.nullcontext,
    ) -> None:
        self.path = Path(path)
        # Synced commits so far and the seconds they took (writes and flush): a checkpoint's
        # log line says how long its commits took, which tells its writes to the disk from
        # the rest of its span (bench/recovery.py lines disk stalls up with them).
        self.commits = 0
        self.commit_seconds = 0.0
        self._committing = self._timed(committing)  # what each commit runs inside
        # Per symbol (chunk prefix): the digests the last put took (piece -> digest; of
        # pieces it was given none for), its turn, the chunks stored (digest -> id, read
        # from the store on first use) and the next id.
        self._digests: dict[bytes, dict[bytes, bytes]] = {}
        self._turns: dict[bytes, int] = {}
        self._ids: dict[bytes, _ChunkIds] = {}
        self._next_id: dict[bytes, int] = {}
        # Per symbol: how many stored checkpoints list each chunk id, from the first prune
        # on (which counts them all, and deletes the chunks none lists: those of a write a
        # crash cut short); then each put adds its own, and each prune takes off those of
        # the checkpoints it deletes, so it reads only their lists, not every kept one.
        self._uses: dict[bytes, Counter[int]] = {}
        # Per symbol: the chunks no checkpoint lists that the last prune left, for the next
        # put or prune to delete first (`_delete_left`), before it reads or counts anything.
        # A crash forgets them: they are found by the next process's first prune, which
        # counts every list and scans every chunk.
        self._deleting: dict[bytes, list[int]] = {}
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"no checkpoint store at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        reserve_lock_file(self.path)  # a full disk: ENOSPC here, not a SIGBUS inside LMDB
        # metasync off: a commit flushes the disk once, not twice (each flush beside a
        # matcher's journal fsync shows in its ack latency). LMDB keeps the file consistent;
        # a crash of the machine may undo the last commit, and recovery then starts from the
        # checkpoint before it. The journal, which acks depend on, syncs both.
        self._readonly = readonly
        self._env = lmdb.open(
            str(self.path), subdir=False, readonly=readonly, map_size=map_size, max_dbs=4,
            sync=True, metasync=False, readahead=False,
        )  # fmt: skip
        try:
            check_complete(self._env, self.path)  # a read past its end would be a SIGBUS
            self._db = self._env.open_db(_DB, create=not readonly)
            self._parts = self._open_optional(_PARTS_DB, create=False)
            self._chunks = self._open_optional(_CHUNKS_DB, create=not readonly)
        except lmdb.NotFoundError:
            self._env.close()
            raise FileNotFoundError(f"{self.path} holds no checkpoints yet") from None
        except BaseException:
            self._env.close()
            raise

    def _timed(self, committing: Committing) -> Committing:
        @contextlib.contextmanager
        def timed() -> Iterator[None]:
            started = time.perf_counter()
            with committing():
                yield
            self.commits += 1  # committed: a failed commit raised above
            self.commit_seconds += time.perf_counter() - started

        return timed

    def close(self) -> None:
        if not self._readonly:
            # The last commit's meta page too: a clean stop loses nothing. Closed already, or
            # a disk that fails it: that checkpoint may be undone, as after a crash.
            with contextlib.suppress(lmdb.Error):
                self._env.sync(True)
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _open_optional(self, name: bytes, *, create: bool) -> lmdb._Database | None:
        try:
            return self._env.open_db(name, create=create)
        except lmdb.NotFoundError:
            return None  # a store written before parts (or chunks) were

    def put(self, snapshot: Snapshot) -> Stored:
        """Durably store one checkpoint."""
        return run_to_end(self.put_steps(snapshot))

    def put_steps(
        self,
        snapshot: Snapshot,
        state: Sequence[bytes] | None = None,
        digests: Sequence[bytes | None] | None = None,
        *,
        scrub_every: int = SCRUB_EVERY,
        keep: int | None = None,
        slack: int = 0,
    ) -> Generator[None, None, Stored]:
        """`put`, yielding between bounded steps (pieces listed, a synced transaction of new
        chunks), so that the caller can pause between them.

        `state`: the msgpack of the snapshot's state in pieces, for a snapshot made with
        STATE_IN_PIECES; `digests`: the SHA-256 of each (or None where the store is to take
        it), as `stepwise_checkpoint` has them already. Only the chunks the store does not
        hold yet are written (and those of the ones it reads back, one in `scrub_every`,
        that no longer match their digest), at most PART_BYTES of them per synced
        transaction; the last transaction (often the only one) also replaces whatever was at
        this checkpoint's key (one written before, or one cut short by a crash) with its
        StoredPieces. A crash before that leaves chunks no checkpoint uses, for `prune` to
        delete. Only one process writes a store (the snapshotter): what it found stored is
        still there when it writes.

        `keep`: prune in that last transaction too, as `prune(symbol, keep)` would after it.
        Every commit of the store flushes the disk, and a flush beside a matcher's journal
        fsync shows in its ack latency: one flush per checkpoint rather than two. Before
        all that, the chunks the last prune left are deleted (`_delete_left`): none, unless
        it freed more than PART_BYTES. `slack`: prune only once more than `keep` + `slack`
        checkpoints are stored (then down to `keep`, as always). The chunks a prune deletes
        are scattered over the store's pages, and most pages it rewrites to delete one also
        hold chunks still in use: deleting several checkpoints' chunks at once rewrites
        fewer pages per chunk (measured on the bench's book, device bytes per checkpoint
        commit: 444 KiB pruning every time, 284 KiB pruning four at a time, 161 KiB for the
        same commits with no chunk deleted). A prune still deletes PART_BYTES of chunks at
        most: with `slack`, what several checkpoints freed can be more (in the bench's step
        3, after about one prune in two), and the next put deletes the rest first, in a
        commit of its own.
        """
        key = _key(snapshot.symbol, snapshot.seq)
        prefix = _chunk_prefix(key)
        yield from self._delete_left(prefix)
        known = self._digests.get(prefix, {})
        taken: dict[bytes, bytes] = {}  # piece -> digest, of those given none: for the next checkpoint

        def digest_of(piece: bytes) -> bytes:
            digest = taken[piece] = known.get(piece) or _digest(piece)
            return digest

        payload = _payload(snapshot, state)
        size = _CRC + sum(map(len, payload))
        given = None if digests is None else [None, *digests, None]  # around `state`, as _payload puts it
        stream = _stored_as(payload, given, digest_of)
        ids = self._chunk_ids(prefix)
        turn = self._turns[prefix] = self._turns.get(prefix, -1) + 1
        share = turn % scrub_every
        chunks: dict[bytes, int] = {}  # digest -> its index in StoredPieces.chunks
        layout: list[bytes | int] = []
        unknown: list[ChunkPiece] = []  # chunks the store does not hold
        scrubbed: list[ChunkPiece] = []  # and of those it holds, the ones read back this turn
        # One pass over the pieces: on the bench's book about 3,700 of them, at every
        # checkpoint, where each pass more cost a few tenths of a millisecond.
        while step := list(itertools.islice(stream, PIECES_PER_STEP)):
            for piece, digest in step:
                if digest is None:
                    layout.append(piece)
                    continue
                index = chunks.get(digest)
                if index is None:
                    index = chunks[digest] = len(chunks)
                    if digest not in ids.of:
                        unknown.append((piece, digest))
                    elif digest[0] % scrub_every == share:
                        scrubbed.append((piece, digest))
                layout.append(index)
            yield
        written = 0
        try:
            new, repaired = yield from self._to_write(prefix, ids, unknown, scrubbed)
            batches = list(_batches(new))
            for batch in batches[:-1]:
                with write_txn(self._env, self._committing) as txn:
                    written += self._put_chunks(txn, batch)
                yield
            listed = [ids.of[digest] for digest in chunks]
            yield
            value = _encoder.encode(StoredPieces(PIECES_MARKER, listed, layout))
            yield
            # One synced commit: most checkpoints need no other. It yields while open (the
            # store has no other writer; readers see it as it was until it commits).
            with write_txn(self._env, self._committing) as txn:
                written += self._put_chunks(txn, batches[-1] if batches else [])
                yield
                replaced = self._remove(txn, key)
                txn.put(key, zlib.crc32(value).to_bytes(_CRC, "big") + value, db=self._db)
                uses = self._uses.pop(prefix, None)
                if replaced:  # the chunks of what it replaced are counted still: count again
                    uses = None
                elif uses is not None:
                    for at in range(0, len(listed), IDS_PER_STEP):
                        yield
                        uses.update(listed[at : at + IDS_PER_STEP])
                yield
                pruning = None if keep is None else (yield from self._pruning(txn, prefix, keep, uses, slack))
        except BaseException:
            # `_to_write` counted the new chunks as stored: a write that failed (a full disk)
            # or stopped half way would have the next checkpoint list chunks that are not
            # there. What is stored is read again instead (and counted again, with a scan
            # for the chunks the failed write left behind).
            self._ids.pop(prefix, None)
            self._uses.pop(prefix, None)
            raise
        self._digests[prefix] = taken
        if pruning is not None:
            self._pruned(prefix, pruning)
        elif uses is not None:
            self._uses[prefix] = uses
        return Stored(size, written + _CRC + len(value), repaired, 0 if pruning is None else pruning.deleted)

    def _put_chunks(self, txn: lmdb.Transaction, batch: list[tuple[bytes, bytes]]) -> int:
        for key, value in batch:
            txn.put(key, value, db=self._chunks)
        return sum(len(value) for _, value in batch)

    def _to_write(
        self, prefix: bytes, ids: _ChunkIds, unknown: list[ChunkPiece], scrubbed: list[ChunkPiece]
    ) -> Generator[None, None, tuple[list[tuple[bytes, bytes]], int]]:
        """The chunks (key, value) to write: those the store (`ids`) does not hold
        (`unknown`), under new ids, and of those it holds that are read back (`scrubbed`),
        the ones damaged or lost, under their own; and how many of those. Yields after every
        SCRUBBED_PER_STEP chunks read back, and between the steps after."""
        lost: list[ChunkPiece] = []
        # Stored, by this process's account (it is the only writer): read back to check.
        for at in range(0, len(scrubbed), SCRUBBED_PER_STEP):
            with self._env.begin(db=self._chunks, buffers=True) as txn:
                cursor = txn.cursor()
                for piece, digest in scrubbed[at : at + SCRUBBED_PER_STEP]:
                    # Lost or damaged: written again under its id, for all that list it.
                    if not (cursor.set_key(_chunk_key(prefix, ids.of[digest])) and _intact(cursor.value())):
                        lost.append((piece, digest))
            yield
        for _, digest in unknown:
            ids.add(digest, self._next_id[prefix])
            self._next_id[prefix] += 1
        of = ids.of
        new = [(_chunk_key(prefix, of[digest]), digest + piece) for piece, digest in (*lost, *unknown)]
        yield
        return new, len(lost)

    def _chunk_ids(self, prefix: bytes) -> _ChunkIds:
        """The chunks stored under `prefix` (read from the store once)."""
        ids = self._ids.get(prefix)
        if ids is None:
            ids, last = _ChunkIds(), 0
            with self._env.begin(db=self._chunks, buffers=True) as txn:
                cursor = txn.cursor()
                if cursor.set_range(prefix):
                    for key, value in cursor:
                        if not bytes(key).startswith(prefix):
                            break
                        chunk_id = int.from_bytes(key[len(prefix) :], "big")
                        last = max(last, chunk_id)
                        ids.add(bytes(value[:_DIGEST]), chunk_id)
            self._ids[prefix], self._next_id[prefix] = ids, last + 1
        return ids

    def prune(self, symbol: str, keep: int) -> int:
        """Delete what the last prune left (`_delete_left`), then all but `symbol`'s newest
        `keep` checkpoints and the chunks only they used, in one synced transaction: of
        those chunks, PART_BYTES (the rest are left for the next prune or put); how many
        checkpoints were deleted. The snapshotter prunes in its checkpoints' own
        transactions instead (`put_steps(keep=...)`), paced."""
        prefix = symbol.encode() + b"\x00"
        run_to_end(self._delete_left(prefix))
        with write_txn(self._env, self._committing) as txn:
            pruning = run_to_end(self._pruning(txn, prefix, keep, self._uses.pop(prefix, None)))
        self._pruned(prefix, pruning)
        return pruning.deleted

    def _pruning(
        self, txn: lmdb.Transaction, prefix: bytes, keep: int, uses: Counter[int] | None, slack: int = 0
    ) -> Generator[None, None, _Pruning]:
        """Delete in `txn` all but the newest `keep` checkpoints under `prefix` and, up to
        PART_BYTES, the chunks none of the others lists (`_delete_left` has deleted what
        earlier prunes left); yielding after each list of chunks it reads (`txn` stays open
        across: the store has no other writer, readers see it as it was until it commits).
        `uses`: the count of uses of the checkpoints `txn` sees (None: it counts them).
        Nothing, unless more than `slack` are to be deleted."""
        keys = self._keys(txn, prefix)
        old, kept = keys[: max(0, len(keys) - keep)], keys[max(0, len(keys) - keep) :]
        if len(old) <= slack:
            return _Pruning(0, uses, [], [])
        dropped = []
        for key in old:
            dropped.append(_listed_chunks(txn.get(key, db=self._db)))
            self._remove(txn, key)
            yield
        if uses is None or None in dropped:  # not counted, or not countable
            uses = yield from self._count_uses(txn, kept)
            unused = yield from self._not_in(txn, prefix, uses)
        else:
            unused = yield from _uncount(uses, [chunk_ids for chunk_ids in dropped if chunk_ids is not None])
        left = yield from self._delete_chunks(txn, prefix, unused)
        return _Pruning(len(old), uses, unused, left)

    def _delete_left(self, prefix: bytes) -> Generator[None, None, None]:
        """Delete the chunks the last prune left, PART_BYTES of them per synced commit,
        yielding after each. Every put and prune starts with it, so what is left never
        exceeds what one prune freed: were the rest left to the prunes after, at PART_BYTES
        each, checkpoints far apart (each freeing more than that: most of a busy book's
        levels change in 300 s) would leave more every time, and the store would grow
        without end (seen: 12,000 chunks waiting after 20 checkpoints 50,000 records apart,
        the file 58 MiB for four kept checkpoints of 4 MiB)."""
        while left := self._deleting.get(prefix):
            with write_txn(self._env, self._committing) as txn:
                rest = yield from self._delete_chunks(txn, prefix, left)
            self._deleting[prefix] = rest
            yield

    def _pruned(self, prefix: bytes, pruning: _Pruning) -> None:
        """Take in what `pruning` did, now that its transaction is committed."""
        if pruning.uses is not None:
            self._uses[prefix] = pruning.uses
        self._forget(prefix, pruning.unused)
        self._deleting[prefix] = pruning.left

    def _delete_chunks(
        self, txn: lmdb.Transaction, prefix: bytes, chunk_ids: list[int]
    ) -> Generator[None, None, list[int]]:
        """Delete the chunks `chunk_ids` in `txn` up to PART_BYTES of them; those left.

        A first prune may find megabytes of chunks no checkpoint lists (a store written
        whole, whose pieces the snapshotter stored again, or writes a crash cut short). In
        the bench, the window after that first prune had ack p99 15-48 ms with them all
        deleted in one transaction, 2.4-6.9 ms in transactions of PART_BYTES one after
        another, against 2-3 ms in the others: so each prune deletes PART_BYTES of them at
        most, in its one synced transaction, and leaves the rest to the next put or prune,
        which deletes them first, PART_BYTES per commit (`_delete_left`). Yields after every
        DELETES_PER_STEP chunks."""
        if self._chunks is None:
            return []
        size = 0
        for n, chunk_id in enumerate(chunk_ids):
            if size >= PART_BYTES:
                return chunk_ids[n:]
            if n and n % DELETES_PER_STEP == 0:
                yield
            value = txn.pop(_chunk_key(prefix, chunk_id), db=self._chunks)
            size += 0 if value is None else len(value)
        return []

    def _forget(self, prefix: bytes, chunk_ids: list[int]) -> None:
        """Drop `chunk_ids` from the chunks a put finds stored: it writes such a piece anew."""
        ids = self._ids.get(prefix)
        if ids is not None:
            ids.drop(chunk_ids)

    def _keys(self, txn: lmdb.Transaction, prefix: bytes) -> list[bytes]:
        """The keys of the checkpoints under `prefix` (symbol, NUL), oldest first."""
        keys: list[bytes] = []
        cursor = txn.cursor(db=self._db)
        if cursor.set_range(prefix):
            for stored in cursor.iternext(values=False):
                key = bytes(stored)
                if not key.startswith(prefix):
                    break
                if len(key) == len(prefix) + 8:  # else a damaged key: not ours to count
                    keys.append(key)
        return keys

    def _count_uses(self, txn: lmdb.Transaction, kept: list[bytes]) -> Generator[None, None, Counter[int]]:
        """How many of the checkpoints `kept` list each chunk id (a damaged list: none)."""
        uses: Counter[int] = Counter()
        for key in kept:
            chunk_ids = _listed_chunks(txn.get(key, db=self._db))
            if chunk_ids is not None:
                uses.update(chunk_ids)
            yield
        return uses

    def _not_in(
        self, txn: lmdb.Transaction, prefix: bytes, uses: Counter[int]
    ) -> Generator[None, None, list[int]]:
        """The ids of the chunks stored under `prefix` that `uses` does not count, yielding
        after every KEYS_PER_STEP keys scanned."""
        unused: list[int] = []
        if self._chunks is None:
            return unused
        cursor = txn.cursor(db=self._chunks)
        if cursor.set_range(prefix):
            for n, stored in enumerate(cursor.iternext(values=False), 1):
                key = bytes(stored)
                if not key.startswith(prefix):
                    break
                chunk_id = int.from_bytes(key[len(prefix) :], "big")
                if chunk_id not in uses:
                    unused.append(chunk_id)
                if n % KEYS_PER_STEP == 0:
                    yield
        return unused

    def _remove(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Delete the checkpoint at `key`, and its parts if a store before chunks wrote it
        (its chunks stay until `prune` finds no checkpoint using them); whether there was one."""
        there: bool = txn.delete(key, db=self._db)
        for part_key in self._part_keys(txn, key):
            txn.delete(part_key, db=self._parts)
        return there

    def _part_keys(self, txn: lmdb.Transaction, key: bytes) -> list[bytes]:
        if self._parts is None:
            return []
        cursor = txn.cursor(db=self._parts)
        found: list[bytes] = []
        if cursor.set_range(_part_key(key, 1)):
            for stored in cursor.iternext(values=False):
                part_key = bytes(stored)
                if len(part_key) != len(key) + 4 or not part_key.startswith(key):
                    break
                found.append(part_key)
        return found

    def _whole(self, txn: lmdb.Transaction, key: bytes, first: bytes | memoryview) -> bytes:
        """The checkpoint stored under `key` as `decode` reads it (CRC32 + msgpack Snapshot):
        from its chunks, or (a store before chunks) from its value and the parts after it.
        Raises CorruptSnapshot for a chunk that is missing or not what its digest says."""
        pieces = _stored_pieces(first)
        if pieces is None:
            rest = [txn.get(part_key, db=self._parts) for part_key in self._part_keys(txn, key)]
            return b"".join([bytes(first), *(bytes(part) for part in rest if part is not None)])
        chunks = self._chunks_of(txn, key, pieces.chunks)
        if any(isinstance(item, int) and not 0 <= item < len(chunks) for item in pieces.layout):
            raise CorruptSnapshot(*_split(key), "its list of chunks is damaged")
        payload = b"".join([item if isinstance(item, bytes) else chunks[item] for item in pieces.layout])
        return zlib.crc32(payload).to_bytes(_CRC, "big") + payload

    def _chunks_of(
        self, txn: lmdb.Transaction, key: bytes, chunk_ids: list[int]
    ) -> list[bytes | memoryview]:
        prefix = _chunk_prefix(key)
        out: list[bytes | memoryview] = []
        for chunk_id in chunk_ids:
            if not 0 <= chunk_id < 1 << 64:
                raise CorruptSnapshot(*_split(key), "its list of chunks is damaged")
            chunk = None if self._chunks is None else txn.get(_chunk_key(prefix, chunk_id), db=self._chunks)
            if chunk is None:
                raise CorruptSnapshot(*_split(key), f"chunk {chunk_id} is missing")
            if not _intact(chunk):
                raise CorruptSnapshot(*_split(key), f"chunk {chunk_id} is damaged")
            out.append(memoryview(chunk)[_DIGEST:])
        return out

    def newest(
        self,
        symbol: str,
        at_most_seq: int | None = None,
        on_corrupt: Callable[[CorruptSnapshot], None] | None = None,
    ) -> Snapshot | None:
        """The newest intact checkpoint of `symbol` with seq <= `at_most_seq`; damaged ones
        are reported to `on_corrupt` and skipped for the next older one."""
        for raw_symbol, seq, raw in self._backwards(symbol, at_most_seq):
            try:
                if isinstance(raw, CorruptSnapshot):
                    raise raw
                return _decode_stored(raw, raw_symbol, seq)
            except CorruptSnapshot as exc:
                if on_corrupt is not None:
                    on_corrupt(exc)
        return None

    def infos(self, symbol: str | None = None) -> list[SnapshotInfo]:
        """Every checkpoint (of `symbol`, or all), oldest first; damaged ones are left out."""
        out: list[SnapshotInfo] = []
        with self._env.begin(db=self._db, buffers=True) as txn:
            for key, first in txn.cursor():
                sym, seq = _split(key)
                if symbol is not None and sym != symbol:
                    continue
                try:
                    raw = self._whole(txn, bytes(key), first)
                    snap = _decode_stored(raw, sym, seq)
                except CorruptSnapshot:
                    continue
                resting = len(snap.state.bids) + len(snap.state.asks)
                out.append(SnapshotInfo(snap.snapshot_id, sym, seq, snap.taken_at, snap.state_hash,
                                        resting, len(raw)))  # fmt: skip
        return out

    def by_id(self, snapshot_id: str) -> Snapshot | None:
        with self._env.begin(db=self._db, buffers=True) as txn:
            for key, first in txn.cursor():
                sym, seq = _split(key)
                try:
                    snap = _decode_stored(self._whole(txn, bytes(key), first), sym, seq)
                except CorruptSnapshot:
                    continue
                if snap.snapshot_id == snapshot_id:
                    return snap
        return None

    def _backwards(
        self, symbol: str, at_most_seq: int | None
    ) -> Iterator[tuple[str, int, bytes | CorruptSnapshot]]:
        # Copies each value out, so no read transaction is held across a yield.
        top = _key(symbol, at_most_seq if at_most_seq is not None else (1 << 64) - 1)
        prefix = symbol.encode() + b"\x00"
        position, inclusive = top, True
        while True:
            with self._env.begin(db=self._db) as txn:
                cursor = txn.cursor()
                found = cursor.set_range(position)
                if found and inclusive and cursor.key() == position:
                    pass  # exactly at `position`: take it
                elif not (cursor.prev() if found else cursor.last()):
                    return
                key = cursor.key()
                if not key.startswith(prefix):
                    return  # another symbol's: not read at all
                raw: bytes | CorruptSnapshot
                try:
                    raw = self._whole(txn, key, cursor.value())
                except CorruptSnapshot as exc:
                    raw = exc
            sym, seq = _split(key)
            yield sym, seq, raw
            # Step from the stored key itself, not from the seq parsed out of it: a damaged
            # key must not make the walk skip older checkpoints or go round in circles.
            position, inclusive = key, False
