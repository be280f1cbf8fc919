"""Checkpoints: a book's full state at a journal sequence, so recovery replays only the tail.

One LMDB file, `<data_dir>/checkpoints.lmdb`, written by the snapshotter alone and read by
matchers (recovery), the CLI and replays. Key = symbol, NUL, 8-byte big-endian journal seq,
so one instrument's checkpoints sit together in sequence order and "the newest at or before
seq N" is one cursor step. Value = CRC32 + msgpack `Snapshot`, like journal records (a long
one stored in parts, see `PART_BYTES`): a
checkpoint is only an accelerator, so a damaged one is skipped (for an older one, or for a
full replay) — never trusted.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import lmdb
import msgspec

from engine.messages import SCHEMA_VERSION, Checkpoint
from journal.lmdb_files import check_complete, reserve_lock_file

_DB = b"checkpoints"
# A stored value longer than PART_BYTES continues in `_PARTS_DB` under its key + 4-byte
# part number (1, 2, ...), each part committed and synced on its own before the first one
# goes into `_DB`: one synced transaction of a whole big book (5.8 MiB for 133,000 orders)
# would make every matcher's journal fsync queue behind it. The value is the same either
# way (CRC32 + msgpack `Snapshot`), and a checkpoint exists once its first part does.
_PARTS_DB = b"checkpoint_parts"
PART_BYTES = 1 << 18
FILE_NAME = "checkpoints.lmdb"  # in the data directory, beside journal/
_CRC = 4


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


class CorruptSnapshot(Exception):
    def __init__(self, symbol: str, seq: int, reason: str) -> None:
        super().__init__(f"checkpoint {symbol}@{seq}: {reason}")
        self.symbol, self.seq, self.reason = symbol, seq, reason


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


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


def _key(symbol: str, seq: int) -> bytes:
    return symbol.encode() + b"\x00" + seq.to_bytes(8, "big")


def _part_key(key: bytes, number: int) -> bytes:
    return key + number.to_bytes(4, "big")


def _split(key: bytes | memoryview) -> tuple[str, int]:
    raw = bytes(key)  # the seq's 8 bytes may hold NULs too: split by position
    # errors="replace": a damaged key names no real symbol (its value fails its checksum and
    # is skipped), rather than raising out of a listing or a recovery.
    return raw[:-9].decode(errors="replace"), int.from_bytes(raw[-8:], "big")


class CheckpointStore:
    """`CheckpointStore(path)` to write (the snapshotter), `readonly=True` to read."""

    def __init__(
        self, path: str | os.PathLike[str], *, readonly: bool = False, map_size: int = 1 << 34
    ) -> None:
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"no checkpoint store at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        reserve_lock_file(self.path)  # a full disk: ENOSPC here, not a SIGBUS inside LMDB
        self._env = lmdb.open(
            str(self.path), subdir=False, readonly=readonly, map_size=map_size, max_dbs=3,
            sync=True, metasync=True, readahead=False,
        )  # fmt: skip
        try:
            check_complete(self._env, self.path)  # a read past its end would be a SIGBUS
            self._db = self._env.open_db(_DB, create=not readonly)
            self._parts = self._open_parts(readonly)
        except lmdb.NotFoundError:
            self._env.close()
            raise FileNotFoundError(f"{self.path} holds no checkpoints yet") from None
        except BaseException:
            self._env.close()
            raise

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _open_parts(self, readonly: bool) -> lmdb._Database | None:
        try:
            return self._env.open_db(_PARTS_DB, create=not readonly)
        except lmdb.NotFoundError:
            return None  # a store written before parts existed: every value is whole

    def put(self, snapshot: Snapshot) -> int:
        """Durably store one checkpoint; its size in bytes."""
        steps = self.put_steps(snapshot)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                size: int = done.value
                return size

    def put_steps(
        self, snapshot: Snapshot, state: Sequence[bytes] | None = None
    ) -> Generator[None, None, int]:
        """`put`, yielding after each synced part, so that the caller can pause between them.

        `state`: the msgpack of the snapshot's state in pieces, for a snapshot made with
        STATE_IN_PIECES. The value is cut into parts as the pieces come, through one part-sized
        buffer, its CRC taken on the way: no buffer the size of the book is made (on a small
        machine, fresh megabytes per checkpoint showed in the matchers' ack latency). The
        first transaction removes what a checkpoint at the same key left (one written before,
        or one cut short by a crash); the last publishes the first part, which begins with
        the CRC of all.
        """
        key = _key(snapshot.symbol, snapshot.seq)
        part = bytearray(PART_BYTES)
        filled = _CRC  # the first part begins with the CRC, known at the end
        number = 0  # of the part being filled
        first = b""
        crc = 0
        size = _CRC
        for piece in _payload(snapshot, state):
            view = memoryview(piece)
            while view:
                n = min(len(view), PART_BYTES - filled)
                crc = zlib.crc32(view[:n], crc)
                part[filled : filled + n] = view[:n]
                filled += n
                size += n
                view = view[n:]
                if filled < PART_BYTES:
                    continue
                if number == 0:
                    first = bytes(part)
                else:
                    self._put_part(key, number, part)
                    yield
                number, filled = number + 1, 0
        if number == 0:
            first = bytes(part[:filled])
        elif filled:
            self._put_part(key, number, memoryview(part)[:filled])
            number += 1
            yield
        with self._env.begin(write=True) as txn:
            if number <= 1:
                self._remove(txn, key)  # no part was written: this is the first transaction
            txn.put(key, crc.to_bytes(_CRC, "big") + first[_CRC:], db=self._db)
        return size

    def _put_part(self, key: bytes, number: int, value: bytes | bytearray | memoryview) -> None:
        """One synced transaction storing part `number` (>= 1) of the value under `key`."""
        with self._env.begin(write=True) as txn:
            if number == 1:
                self._remove(txn, key)
            txn.put(_part_key(key, number), value, db=self._parts)

    def prune(self, symbol: str, keep: int) -> int:
        """Delete all but `symbol`'s newest `keep` checkpoints (parts too) in one synced
        transaction; how many were deleted."""
        prefix = symbol.encode() + b"\x00"
        with self._env.begin(db=self._db, write=True) as txn:
            keys: list[bytes] = []
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key in cursor.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    if len(key) == len(prefix) + 8:  # else a damaged key: not ours to count
                        keys.append(key)
            old = keys[: max(0, len(keys) - keep)]
            for key in old:
                self._remove(txn, key)
        return len(old)

    def _remove(self, txn: lmdb.Transaction, key: bytes) -> None:
        txn.delete(key, db=self._db)
        for part_key in self._part_keys(txn, key):
            txn.delete(part_key, db=self._parts)

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
        """The stored value under `key`: its first part and the ones that continue it."""
        rest = [txn.get(part_key, db=self._parts) for part_key in self._part_keys(txn, key)]
        return b"".join([bytes(first), *(bytes(part) for part in rest if part is not None)])

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
                raw = self._whole(txn, bytes(key), first)
                try:
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

    def _backwards(self, symbol: str, at_most_seq: int | None) -> Iterator[tuple[str, int, bytes]]:
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
                raw = self._whole(txn, key, cursor.value())
            if not key.startswith(prefix):
                return
            sym, seq = _split(key)
            yield sym, seq, raw
            # Step from the stored key itself, not from the seq parsed out of it: a damaged
            # key must not make the walk skip older checkpoints or go round in circles.
            position, inclusive = key, False
