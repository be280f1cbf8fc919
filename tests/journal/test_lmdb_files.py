"""journal/lmdb_files.py: a write transaction whose commit runs inside the caller's wrapper."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path

import lmdb
import pytest

from journal.lmdb_files import write_txn


class Seen:
    """A `committing` that records, on entering and leaving, what a reader sees of b"k"."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.log: list[tuple[str, bytes | None]] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.log.append(("enter", self._read()))
        yield
        self.log.append(("exit", self._read()))

    def _read(self) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(b"k")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    env = lmdb.open(str(tmp_path / "f.lmdb"), subdir=False, map_size=1 << 20)
    yield env
    env.close()


def test_the_commit_and_only_it_runs_inside_committing(env: lmdb.Environment) -> None:
    seen = Seen(env)
    with write_txn(env, seen) as txn:
        txn.put(b"k", b"v")
        assert seen.log == []  # the block itself runs outside
    assert seen.log == [("enter", None), ("exit", b"v")]


def test_a_block_that_raises_is_aborted_and_never_committing(env: lmdb.Environment) -> None:
    seen = Seen(env)
    with pytest.raises(ValueError), write_txn(env, seen) as txn:
        txn.put(b"k", b"v")
        raise ValueError("stop")
    assert seen.log == [] and seen._read() is None


def test_a_generator_closed_inside_the_block_aborts_it(env: lmdb.Environment) -> None:
    seen = Seen(env)

    def steps() -> Generator[None, None, None]:
        with write_txn(env, seen) as txn:
            txn.put(b"k", b"v")
            yield

    running = steps()
    next(running)
    running.close()
    assert seen.log == [] and seen._read() is None
    with write_txn(env) as txn:  # and the write lock was released
        txn.put(b"k", b"w")
    assert seen._read() == b"w"
