"""One instrument's append-only journal: a single LMDB file, key = 8-byte big-endian seq.

Durability contract (write-before-ack): ``append`` returns only after LMDB committed the
whole batch with ``sync=True, metasync=True`` (data fdatasync'd, then the meta page written
synchronously). If it raises, nothing of the batch is in the file. LMDB's copy-on-write
B-tree plus its two meta pages make a commit atomic: a process killed at any instant leaves
either the old or the new tree, never part of a batch.

Idempotency index: a second named database, ``client_ids``, maps (account, client order id)
to the journal seq of the ``NewOrder`` that first used it. It is written in the same write
transaction as the records it indexes, so the index and the journal can never disagree, not
even after a crash: a resend is recognised across restarts (see ``client_id_key``).

One writer per file (the instrument's matcher), and now and then the archiver, which only
deletes from the left edge (``discard_through``; LMDB serializes the two writers); any
number of read-only readers in other processes (MVCC: a reader sees a consistent snapshot
and never blocks the writer). Do not
open the same file twice in one process: LMDB forbids it (py-lmdb raises).

Not thread-safe: use one ``Journal`` from one thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import lmdb

from journal.errors import CorruptRecord, JournalError, JournalFull, JournalWriteError, SequenceGap
from journal.lmdb_files import check_complete, reserve_lock_file
from journal.record import KEY_SIZE, Record, decode, encode, key, seq_of

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB: address space only; the file grows with the data
DEFAULT_MAX_MAP_SIZE = 64 << 30
# Records per read transaction. A reader's snapshot pins the pages it can see, so a txn held
# open while a slow consumer works would stop LMDB from reusing freed pages and the file
# would grow; reading in bounded chunks (and never holding a txn across a yield) avoids it.
READ_CHUNK = 10_000
# Records deleted per write transaction by ``discard_through`` (the archiver): LMDB has one
# writer at a time across processes, so this bounds how long a matcher's commit can wait.
DISCARD_CHUNK = 5_000

_DB_NAME = b"records"
_IDS_DB_NAME = b"client_ids"
# "records" and "client_ids" today; the spare slots let a later release add one (e.g.
# archive bookkeeping) without every opener having to agree on a new max_dbs first.
_MAX_DBS = 4
# LMDB's compile-time key limit (mdb_env_get_maxkeysize); longer keys make put() fail, and
# inside a group commit that would fail the whole batch.
_MAX_KEY = 511

T = TypeVar("T")


class _NotAppendable(Exception):
    """LMDB refused an append: the store holds a key >= ours, so our cached last_seq is stale."""


def journal_path(directory: str | os.PathLike[str], symbol: str) -> Path:
    """``<directory>/<symbol>.lmdb`` (LMDB puts ``<symbol>.lmdb-lock`` beside it)."""
    if not symbol or symbol.startswith(".") or any(c in symbol for c in "/\\\0"):
        raise ValueError(f"symbol {symbol!r} cannot name a journal file")
    return Path(directory) / f"{symbol}.lmdb"


def client_id_key(account: str, client_order_id: str) -> bytes:
    """The ``client_ids`` key: UTF-8 account, NUL, UTF-8 client order id.

    A key too long for LMDB becomes 0xFF + a BLAKE2b digest of it. No UTF-8 text starts
    with 0xFF, so a hashed key never equals a plain one; the digest is stable across runs.
    """
    raw = account.encode() + b"\x00" + client_order_id.encode()
    if len(raw) <= _MAX_KEY:
        return raw
    return b"\xff" + hashlib.blake2b(raw, digest_size=32).digest()


def _page_round(size: int) -> int:
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


class Journal:
    """The append-only journal of one instrument. ``Journal.open(path)`` or ``Journal(path)``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    ) -> None:
        if not 0 < map_size <= max_map_size:
            raise ValueError(f"need 0 < map_size ({map_size}) <= max_map_size ({max_map_size})")
        self.path = Path(path)
        self.readonly = readonly
        self._max_map_size = _page_round(max_map_size)
        self._env = self._open_env(_page_round(map_size))
        try:
            check_complete(self._env, self.path)  # a truncated file: refused, not a SIGBUS
            self._db = self._open_db()
            self._ids_db = self._open_ids_db()
            if not readonly:
                self._adopt_map_size(_page_round(map_size))
            self._last_seq = self._edge_seq(last=True)
        except BaseException:
            self._env.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    ) -> Self:
        return cls(path, readonly=readonly, map_size=map_size, max_map_size=max_map_size)

    # --- lifecycle ----------------------------------------------------------------------

    def _open_env(self, map_size: int) -> lmdb.Environment:
        if self.readonly and not self.path.exists():
            # LMDB would report a bare ENOENT; say which journal is missing.
            raise FileNotFoundError(f"no journal at {self.path}")
        if not self.readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        reserve_lock_file(self.path)  # a full disk: ENOSPC here, not a SIGBUS inside LMDB
        return lmdb.open(
            str(self.path),
            subdir=False,
            readonly=self.readonly,
            lock=True,  # readers register in the lock table: that is what makes MVCC safe
            map_size=map_size,
            max_dbs=_MAX_DBS,
            sync=True,
            metasync=True,
            writemap=False,  # a stray write into the map cannot corrupt committed pages
            map_async=False,
            readahead=False,  # appends and short scans: readahead only evicts useful pages
        )

    def _open_db(self) -> Any:
        try:
            return self._env.open_db(_DB_NAME, create=not self.readonly)
        except lmdb.NotFoundError as exc:
            raise JournalError(f"{self.path} holds no journal (never opened for writing?)") from exc

    def _open_ids_db(self) -> Any:
        try:
            return self._env.open_db(_IDS_DB_NAME, create=not self.readonly)
        except lmdb.NotFoundError:
            return None  # read-only view of a journal written before the index existed

    def _adopt_map_size(self, requested: int) -> None:
        # LMDB maps what the opener asks for (raised to the space in use), so a map grown in
        # an earlier run would shrink and have to regrow: keep the larger of file and request.
        self._env.set_mapsize(0)  # 0 = the size recorded in the file
        if self._map_size() < requested:
            self._env.set_mapsize(requested)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        return f"Journal({str(self.path)!r}, {mode})"

    # --- writing ------------------------------------------------------------------------

    def append(self, records: Sequence[Record], client_ids: Sequence[tuple[bytes, int]] = ()) -> None:
        """Durably append a batch in ONE synced transaction (group commit); all or nothing.

        ``records[0].seq`` must be ``last_seq() + 1`` and each next one +1, else
        ``SequenceGap`` before anything is written. A record that fails to encode raises
        its encoding error (a caller bug) before the transaction starts. ``client_ids``:
        (``client_id_key(...)``, seq) pairs for the index, written in the same transaction.
        """
        if not records:
            return
        first = records[0].seq
        self._check_next(first)
        for offset, record in enumerate(records):
            if record.seq != first + offset:
                raise SequenceGap(first + offset, record.seq)
        self._commit(first, [encode(record) for record in records], client_ids)

    def append_encoded(
        self, first_seq: int, payloads: Sequence[bytes], client_ids: Sequence[tuple[bytes, int]] = ()
    ) -> None:
        """``append`` for values already made by ``record.encode`` (encode once, reuse bytes).

        ``payloads[i]`` must encode the record with seq ``first_seq + i``; that is not
        re-checked here, because it would cost the decode this method exists to avoid.
        ``client_ids`` as for ``append``; a key already in the index keeps its first seq.
        """
        if not payloads:
            return
        self._check_next(first_seq)
        self._commit(first_seq, payloads, client_ids)

    def _check_next(self, first_seq: int) -> None:
        last = self.last_seq()  # fresh for a read-only handle, so its error is the real one
        if first_seq != last + 1:
            raise SequenceGap(last + 1, first_seq)

    def _commit(
        self, first_seq: int, payloads: Sequence[bytes], client_ids: Sequence[tuple[bytes, int]]
    ) -> None:
        while True:
            try:
                self._write_batch(first_seq, payloads, client_ids)
            except lmdb.MapFullError:
                self._grow()  # the txn is already aborted; JournalFull at the maximum
                continue
            except lmdb.MapResizedError:
                # Refused at txn begin, nothing written: the archiver (`discard_through` in
                # another process) grew the map past ours. Adopt its size and go again.
                self._env.set_mapsize(0)
                continue
            except _NotAppendable:
                self._resync_last_seq()
                raise SequenceGap(self._last_seq + 1, first_seq) from None
            except (lmdb.Error, OSError) as exc:
                # Usually nothing was committed; re-reading covers the rare case where LMDB
                # reports a failure after the meta page already reached the file.
                self._resync_last_seq()
                reason = _space_note(f"{type(exc).__name__}: {exc}", self.path.parent, payloads)
                raise JournalWriteError(reason) from exc
            # Advanced only here, after a successful commit.
            self._last_seq = first_seq + len(payloads) - 1
            return

    def _write_batch(
        self, first_seq: int, payloads: Sequence[bytes], client_ids: Sequence[tuple[bytes, int]]
    ) -> None:
        # Leaving the `with` by an exception aborts the txn; normally it commits (and syncs).
        keys = map(key, range(first_seq, first_seq + len(payloads)))
        with self._env.begin(db=self._db, write=True) as txn:
            # One C call for the batch (about 2x faster than put() per key); append=True
            # skips the key comparison walk and refuses, rather than overwrites, any key not
            # above the last one, which also guards against a stale cached last_seq.
            _, added = txn.cursor().putmulti(zip(keys, payloads, strict=True), append=True)
            if added != len(payloads):
                raise _NotAppendable
            if client_ids:
                # Random key order (no append=True); overwrite=False keeps the first seq.
                ids = ((k, seq.to_bytes(KEY_SIZE, "big")) for k, seq in client_ids)
                txn.cursor(db=self._ids_db).putmulti(ids, overwrite=False)

    def discard_through(self, through_seq: int, *, chunk: int = DISCARD_CHUNK) -> int:
        """Delete the records with seq <= ``through_seq`` from the left edge; how many.

        For the archiver (``journal.archive``), once those records are durable in a segment;
        nothing else deletes records. Works beside a live writer in another process: LMDB
        serializes write transactions across processes, and this touches only the left edge
        while the matcher appends at the right one. ``chunk`` records per synced transaction
        bound how long the matcher can wait for the write lock. The newest record is never
        deleted (``ValueError`` if asked): ``last_seq`` of a reopened journal comes from it.
        ``client_ids`` entries stay: they name seqs, and the archive still holds the record.
        """
        deleted = 0
        while True:
            try:
                with self._env.begin(db=self._db, write=True) as txn:
                    cursor = txn.cursor()
                    if not cursor.last():
                        return deleted
                    newest = seq_of(cursor.key())
                    if through_seq >= newest:
                        raise ValueError(f"refusing to discard the newest record (seq {newest})")
                    n = 0
                    found = cursor.first()
                    while found and n < chunk and seq_of(cursor.key()) <= through_seq:
                        found = cursor.delete()  # moves to the next record
                        n += 1
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)  # the matcher grew the map: adopt its size, retry
                continue
            except lmdb.MapFullError:
                # Even a delete needs a few fresh pages. First adopt the size the matcher may
                # have grown to; if that is full too, grow as the matcher would (it adopts the
                # new size when its next transaction starts).
                before = self._map_size()
                self._env.set_mapsize(0)  # 0 = the size the file records now
                if self._map_size() <= before:
                    self._grow()
                continue
            except lmdb.Error as exc:
                raise JournalWriteError(f"discard failed: {type(exc).__name__}: {exc}") from exc
            deleted += n
            if n < chunk:
                return deleted

    def prepend_encoded(self, first_seq: int, payloads: Sequence[bytes]) -> None:
        """Put archived records back in front: ``payloads`` are seqs ``first_seq..`` and must
        end right before ``first_seq()`` (``SequenceGap`` otherwise); one synced transaction.
        The inverse of ``discard_through``, for ``journal.archive.unarchive`` only."""
        if not payloads:
            return
        while True:
            try:
                with self._env.begin(db=self._db, write=True) as txn:
                    cursor = txn.cursor()
                    first = seq_of(cursor.key()) if cursor.first() else 0
                    if first != first_seq + len(payloads):
                        raise SequenceGap(first - 1 if first else 1, first_seq + len(payloads) - 1)
                    keys = map(key, range(first_seq, first_seq + len(payloads)))
                    cursor.putmulti(zip(keys, payloads, strict=True), overwrite=False)
                return
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise JournalWriteError(f"prepend failed: {type(exc).__name__}: {exc}") from exc

    def _grow(self) -> None:
        size = self._map_size()
        if size >= self._max_map_size:
            raise JournalFull(size, self._max_map_size)
        try:
            # No txn of ours is open here, and read() never keeps one across a yield.
            self._env.set_mapsize(min(size * 2, self._max_map_size))
        except lmdb.Error as exc:
            raise JournalWriteError(f"cannot grow map: {exc}") from exc

    def _resync_last_seq(self) -> None:
        # If even reading fails (environment unusable after a fatal I/O error) keep the old
        # value: the caller is raising a write error anyway.
        with contextlib.suppress(lmdb.Error):
            self._last_seq = self._edge_seq(last=True)

    # --- reading ------------------------------------------------------------------------

    def last_seq(self) -> int:
        """Highest committed seq, 0 when empty. Cached by the writer, read fresh by readers."""
        return self._edge_seq(last=True) if self.readonly else self._last_seq

    def first_seq(self) -> int:
        """Lowest stored seq, 0 when empty (> 1 once old records are archived)."""
        return self._edge_seq(last=False)

    def count(self) -> int:
        with self._read_txn() as txn:
            return txn.stat(self._db)["entries"]

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:
        # Without this, __len__ would make an empty journal falsy and `if journal:` lie.
        return True

    def get(self, seq: int) -> Record | None:
        with self._read_txn() as txn:
            raw = txn.get(key(seq))
            return None if raw is None else _decode_at(seq, raw)

    def client_id_seq(self, client_id: bytes) -> int | None:
        """The journal seq that first used ``client_id`` (a ``client_id_key``), else None."""
        return self.client_id_seqs((client_id,)).get(client_id)

    def client_id_seqs(self, client_ids: Iterable[bytes]) -> dict[bytes, int]:
        """``client_id_seq`` for many keys in one read transaction: only the keys found."""
        found: dict[bytes, int] = {}
        if self._ids_db is None:
            return found
        with self._read_txn() as txn:
            get = txn.get
            db = self._ids_db
            for client_id in client_ids:
                raw = get(client_id, db=db)
                if raw is not None:
                    found[client_id] = seq_of(raw)
        return found

    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Record]:
        """Records ``from_seq..to_seq`` (inclusive; to the end if None), verified, in order.

        Reads ``READ_CHUNK`` records per read transaction and yields only after that txn
        ended, so a slow consumer pins no snapshot and the writer may grow the map meanwhile.
        A chunk is a consistent snapshot; records committed while iterating are picked up by
        later chunks.
        """
        for _, record in self._scan(from_seq, to_seq, _decode_at):
            yield record

    def read_raw(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Like ``read`` but yields ``(seq, stored bytes)`` unverified; ``decode`` checks them."""
        return self._scan(from_seq, to_seq, lambda _seq, raw: bytes(raw))

    def read_raw_chunks(self, start: int) -> Iterator[tuple[int, list[bytes]]]:
        """The stored values from seq `start` to the end, unverified (``journal.record.replay``
        checks each), as (seq of the first, values): ``READ_CHUNK`` per read transaction, as
        ``read`` reads, but with no Python work per record (restart recovery's fast path),
        and no txn held across a yield.

        The values are contiguous from `start`: else ``JournalError``, after those before the
        gap. Keys ascend, so the last key of a chunk telling its length is proof enough.
        """
        expected = start
        while True:
            found = None
            # Values as bytes from LMDB, one copy: a view copied with bytes() took 0.43 s a
            # million records against 0.18 s, 8% of a restart's full replay.
            with self._copying_read_txn() as txn:
                cursor = txn.cursor()
                if not cursor.set_range(key(expected)):
                    return
                first = seq_of(cursor.key())
                values = list(islice(cursor.iternext(keys=False), READ_CHUNK))
                if not cursor.key():  # ran off the end: the last record is the last one read
                    cursor.last()
                if first == expected and seq_of(cursor.key()) != first + len(values) - 1:
                    cursor.set_range(key(first))
                    for i, k in enumerate(cursor.iternext(values=False)):
                        if seq_of(k) != first + i:
                            found = seq_of(k)
                            values = values[:i]
                            break
            if first != expected:
                found, values = first, []
            if values:
                yield expected, values
                expected += len(values)
            if found is not None:
                raise JournalError(f"{self.path}: expected seq {expected}, found seq {found}")

    def _scan(
        self, from_seq: int, to_seq: int | None, convert: Callable[[int, bytes | memoryview], T]
    ) -> Iterator[tuple[int, T]]:
        expected = None  # the first record may be > from_seq (archived prefix), later ones not
        next_seq = max(from_seq, 1)
        while to_seq is None or next_seq <= to_seq:
            chunk, damage = self._read_chunk(next_seq, to_seq, convert)
            for seq, item in chunk:
                if expected is not None and seq != expected:
                    raise CorruptRecord(seq, f"gap in journal: expected seq {expected}")
                expected = seq + 1
                yield seq, item
            if damage is not None:
                raise damage  # only after every intact record before it was yielded
            if not chunk:
                return
            next_seq = chunk[-1][0] + 1

    def _read_chunk(
        self, start: int, stop: int | None, convert: Callable[[int, bytes | memoryview], T]
    ) -> tuple[list[tuple[int, T]], CorruptRecord | None]:
        out: list[tuple[int, T]] = []
        with self._read_txn() as txn:
            cursor = txn.cursor()
            if not cursor.set_range(key(start)):
                return out, None
            for k, raw in cursor:
                seq = seq_of(k)
                if (stop is not None and seq > stop) or len(out) >= READ_CHUNK:
                    break
                try:
                    out.append((seq, convert(seq, raw)))
                except CorruptRecord as exc:
                    return out, exc
        return out, None

    def _read_txn(self) -> lmdb.Transaction:
        # buffers=True: values are views into the map, decoded before the txn ends (no copy).
        return self._begun(lambda: self._env.begin(db=self._db, buffers=True))

    def _copying_read_txn(self) -> lmdb.Transaction[bytes]:
        """A read txn whose values are bytes, for values that outlive it."""
        return self._begun(lambda: self._env.begin(db=self._db))

    def _begun(self, begin: Callable[[], T]) -> T:
        try:
            return begin()
        except lmdb.MapResizedError:
            # The writer (another process) grew the map past ours: adopt its size, retry.
            self._env.set_mapsize(0)
            return begin()

    def _edge_seq(self, *, last: bool) -> int:
        with self._read_txn() as txn:
            cursor = txn.cursor()
            found = cursor.last() if last else cursor.first()
            return seq_of(cursor.key()) if found else 0

    def _map_size(self) -> int:
        return self._env.info()["map_size"]

    def stat(self) -> dict[str, int | str]:
        """first/last seq, record count, bytes on disk and map size, from one snapshot."""
        with self._read_txn() as txn:
            cursor = txn.cursor()
            first = seq_of(cursor.key()) if cursor.first() else 0
            last = seq_of(cursor.key()) if cursor.last() else 0
            db_stat = txn.stat(self._db)
        info = self._env.info()
        return {
            "path": str(self.path),
            "first_seq": first,
            "last_seq": last,
            "records": db_stat["entries"],
            "file_bytes": os.stat(self.path).st_size,
            "used_bytes": (info["last_pgno"] + 1) * db_stat["psize"],
            "map_size": info["map_size"],
            "max_map_size": self._max_map_size,
        }


def _space_note(reason: str, directory: Path, payloads: Sequence[bytes]) -> str:
    """``reason``, plus the free space when the filesystem cannot take the batch.

    A disk that fills in the middle of a page write gives LMDB a short write, which it
    reports as EIO ("Input/output error"), not ENOSPC: the note says what it really is.
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return reason
    free = st.f_bavail * st.f_frsize
    if free >= sum(map(len, payloads)) + 2 * mmap.PAGESIZE:
        return reason
    enospc = os.strerror(errno.ENOSPC)
    return f"{reason} ({'' if enospc in reason else enospc + ': '}{free} bytes free in {directory})"


def _decode_at(seq: int, raw: memoryview | bytes) -> Record:
    record = decode(raw, seq)
    if record.seq != seq:
        raise CorruptRecord(seq, f"stored under seq {seq} but says seq {record.seq}")
    return record
