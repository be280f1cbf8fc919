"""The client_ids index: (account, client order id) -> the journal seq that first used it.

It is written in the records' own write transaction, so whatever makes a batch fail (gap,
full map, an error inside the transaction) must leave the index untouched as well.
"""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from journal import Journal, JournalFull, JournalWriteError, SequenceGap, encode, journal_path
from journal.store import client_id_key
from tests.journal.journal_helpers import batch

KIB = 1024


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return journal_path(tmp_path / "journal", "BTCUSDT")


def _ids(first: int, n: int) -> list[tuple[bytes, int]]:
    return [(client_id_key(f"acct-{seq % 7}", f"c{seq}"), seq) for seq in range(first, first + n)]


def test_key_format() -> None:
    assert client_id_key("acct-é", "cl-1") == "acct-é".encode() + b"\x00cl-1"
    # The separator keeps ("a", "bc") and ("ab", "c") apart.
    assert client_id_key("a", "bc") != client_id_key("ab", "c")


def test_overlong_key_is_hashed_stably_and_never_equals_a_plain_one() -> None:
    long_a, long_b = client_id_key("acct", "x" * 600), client_id_key("acct", "x" * 599 + "y")
    assert len(long_a) == len(long_b) == 33
    assert long_a[0] == 0xFF and long_a != long_b
    assert long_a == client_id_key("acct", "x" * 600)  # no per-run salt
    assert len(client_id_key("a", "x" * 509)) == 511  # the longest key stored as is


def test_appended_ids_are_found_and_survive_reopen(path: Path) -> None:
    records = batch(1, 20)
    ids = _ids(1, 20)
    with Journal.open(path) as j:
        j.append_encoded(1, [encode(r) for r in records[:10]], ids[:10])
        j.append(records[10:], ids[10:])  # the record-level append takes them too
        assert j.client_id_seq(ids[3][0]) == 4
        assert j.client_id_seq(client_id_key("acct-1", "never")) is None
    with Journal.open(path, readonly=True) as ro:
        wanted = [k for k, _ in ids] + [client_id_key("x", "y")]
        assert ro.client_id_seqs(wanted) == dict(ids)


def test_a_known_key_keeps_its_first_seq(path: Path) -> None:
    k = client_id_key("a", "dup")
    with Journal.open(path) as j:
        j.append(batch(1, 1), [(k, 1)])
        j.append(batch(2, 1), [(k, 2)])
        assert j.client_id_seq(k) == 1


def test_a_gap_writes_no_ids(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 3), _ids(1, 3))
        with pytest.raises(SequenceGap):
            j.append_encoded(5, [encode(batch(5, 1)[0])], _ids(5, 1))
        assert j.client_id_seq(_ids(5, 1)[0][0]) is None


def test_journal_full_writes_no_ids(path: Path) -> None:
    with Journal.open(path, map_size=64 * KIB, max_map_size=128 * KIB) as j:
        j.append(batch(1, 50), _ids(1, 50))
        with pytest.raises(JournalFull):
            j.append(batch(51, 5000), _ids(51, 5000))
        assert j.client_id_seqs(k for k, _ in _ids(51, 5000)) == {}
        assert j.client_id_seqs(k for k, _ in _ids(1, 50)) == dict(_ids(1, 50))


def test_an_id_the_index_refuses_aborts_the_records_too(path: Path) -> None:
    with Journal.open(path) as j:
        j.append(batch(1, 1), _ids(1, 1))
        with pytest.raises(JournalWriteError, match="BAD_VALSIZE"):  # a key not from client_id_key
            j.append(batch(2, 2), [(b"k" * 600, 2)])
        assert j.last_seq() == 1
        j.append(batch(2, 2), _ids(2, 2))
        assert j.client_id_seqs(k for k, _ in _ids(1, 3)) == dict(_ids(1, 3))


def test_readonly_view_of_a_journal_without_the_index(path: Path) -> None:
    # A journal file as an older release wrote it: the records database only.
    path.parent.mkdir(parents=True)
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    db = env.open_db(b"records")
    with env.begin(db=db, write=True) as txn:
        txn.put((1).to_bytes(8, "big"), encode(batch(1, 1)[0]))
    env.close()
    with Journal.open(path, readonly=True) as ro:
        assert ro.client_id_seq(client_id_key("a", "b")) is None
        assert list(ro.read()) == batch(1, 1)
    with Journal.open(path) as j:  # a writer adds the index on open
        j.append(batch(2, 1), _ids(2, 1))
        assert j.client_id_seq(_ids(2, 1)[0][0]) == 2
