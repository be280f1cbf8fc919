"""What every LMDB file of ours shares: two ways a damaged or full disk kills an LMDB
process with SIGBUS, made into errors, and a write transaction whose commit can be wrapped.

1. A lock file written on a full disk (``reserve_lock_file``).

LMDB keeps its reader table in ``<file>-lock``, which it creates sparse (``ftruncate``) and
then writes through a shared mapping. On a full filesystem a write to a page with no block
behind it is not an error but a SIGBUS: the process dies with no word of why (a matcher
exited with code -7). That happens whenever the lock file is missing and the disk is full;
a data directory restored from a file copy or ``mdb_copy`` has no lock files. Allocating
them first (``posix_fallocate``) turns it into ``OSError(ENOSPC)``, which every opener
already reports as a reason.

2. A file shorter than its meta page says (``check_complete``). LMDB trusts the meta page:
pages up to ``last_pgno`` are read through the map, and a read past the end of a mapped
file is a SIGBUS. A file cut short (truncated by a bad copy, a full disk during a copy, a
damaged filesystem) must be refused when it is opened, never read.

3. A commit wrapped (``write_txn``). A commit is where LMDB writes the transaction's pages
and flushes the disk; a background process that does everything else at idle priority
runs just that part at its normal one (see snapshotter/scheduling.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import lmdb

# LMDB's lock file at py-lmdb's default of 126 readers (header + reader slots): 8 KiB.
LOCK_FILE_BYTES = 8192
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# What a store runs each of its commits inside (``write_txn``); by default, nothing.
Committing = Callable[[], AbstractContextManager[object]]


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of an LMDB file opened with ``subdir=False``."""
    path = Path(path)
    return path.with_name(path.name + "-lock")


def reserve_lock_file(path: str | os.PathLike[str]) -> None:
    """Allocate the blocks of ``path``'s LMDB lock file (created if missing).

    Raises ``OSError`` (ENOSPC, EDQUOT) when the filesystem has no room for it. Any other
    failure is left for LMDB to meet and report itself, e.g. a read-only filesystem, where
    LMDB opens a read-only environment without a lock file. Never shrinks or rewrites a
    lock file in use: it only allocates blocks, up to the file's current size or
    ``LOCK_FILE_BYTES``, whichever is larger.
    """
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError:
        return
    try:
        size = max(os.fstat(fd).st_size, LOCK_FILE_BYTES)
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise OSError(exc.errno, f"{os.strerror(exc.errno)}: cannot allocate {lock_path(path)}") from None
    finally:
        os.close(fd)


class TruncatedFile(lmdb.CorruptedError):
    """The file ends before the last page its meta page names: refused, never read."""


def check_complete(env: lmdb.Environment, path: str | os.PathLike[str]) -> None:
    """Raise ``TruncatedFile`` if ``path`` is shorter than the pages ``env``'s meta names."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.stat(path).st_size
    if size < needed:
        raise TruncatedFile(f"{path} is truncated: {size} bytes, but its pages end at byte {needed}")


@contextlib.contextmanager
def write_txn(
    env: lmdb.Environment, committing: Committing = contextlib.nullcontext
) -> Iterator[lmdb.Transaction]:
    """A write transaction of `env` for the block: committed after it, inside `committing()`,
    or aborted if the block raises (or, in a generator, is closed)."""
    txn = env.begin(write=True)
    try:
        yield txn
    except BaseException:
        txn.abort()
        raise
    with committing():
        txn.commit()
