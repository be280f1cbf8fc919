"""Recovery from the newest usable checkpoint plus the journal after it (real LMDB files)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest

from engine.engine import Engine, checkpoint_hash_v1
from engine.messages import Side
from journal import Journal, JournalError
from journal.checkpoints import checkpoints_path
from matcher.recovery import DeterminismAlarm, open_checkpoints, rebuild
from tests.matcher.checkpointed import SPEC, build, command, corrupt, put
from tests.matcher.conftest import Rig
from tests.matcher.harness import SYMBOL, journal_file


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage(), getattr(record, "fields", {})))


@pytest.fixture
def logger() -> Any:
    logger = logging.getLogger("clobd.test.recovery")
    logger.setLevel(logging.DEBUG)
    handler = Captured()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "BTCUSDT.lmdb", checkpoints_path(tmp_path)


def _rebuild(journal_path: Path, store_path: Path | None, logger: logging.Logger | None = None) -> Any:
    store = None if store_path is None else open_checkpoints(store_path)
    try:
        with Journal(journal_path, readonly=True) as journal:
            return rebuild(journal, SPEC, store, logger)
    finally:
        if store is not None:
            store.close()


def test_checkpoint_plus_tail_equals_a_full_replay(tmp_path: Path, logger: Any) -> None:
    journal, store = _files(tmp_path)
    hashes, snaps = build(journal, store, 400, [100, 200, 300])
    full = _rebuild(journal, None)
    fast = _rebuild(journal, store, logger[0])
    assert full.checkpoint_id is None and full.records == 400
    assert fast.checkpoint_id == snaps[-1].snapshot_id and fast.checkpoint_seq == 300
    assert fast.records == 100 and fast.seq == full.seq == 400
    assert fast.engine.state_hash() == full.engine.state_hash() == hashes[400]
    assert fast.engine.checkpoint() == full.engine.checkpoint()
    assert not [line for line in logger[1].lines if line[0] >= logging.WARNING]
    # And the two engines go on identically.
    for seq in range(401, 460):
        cmd = command(seq)
        assert fast.engine.process(cmd) == full.engine.process(cmd)
    assert fast.engine.state_hash() == full.engine.state_hash()


def test_checkpoint_at_the_last_seq_replays_nothing(tmp_path: Path) -> None:
    journal, store = _files(tmp_path)
    hashes, _snaps = build(journal, store, 150, [150])
    fast = _rebuild(journal, store)
    assert (fast.checkpoint_seq, fast.records, fast.seq) == (150, 0, 150)
    assert fast.engine.state_hash() == hashes[150]


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path, logger: Any) -> None:
    journal, store = _files(tmp_path)
    hashes, snaps = build(journal, store, 300, [100, 200, 250])
    corrupt(store, "BTCUSDT", 250)
    fast = _rebuild(journal, store, logger[0])
    assert fast.checkpoint_id == snaps[1].snapshot_id and fast.checkpoint_seq == 200
    assert fast.records == 100 and fast.engine.state_hash() == hashes[300]
    warnings = [(event, fields) for level, event, fields in logger[1].lines if level == logging.WARNING]
    assert len(warnings) == 1
    event, fields = warnings[0]
    assert event == "checkpoint_skipped"
    assert fields["symbol"] == "BTCUSDT" and fields["seq"] == 250 and "checksum" in fields["reason"]


def test_a_checkpoint_whose_hash_does_not_match_its_state_is_skipped(tmp_path: Path, logger: Any) -> None:
    journal, store = _files(tmp_path)
    hashes, snaps = build(journal, store, 300, [100, 200])
    # An intact record (checksum fine) whose state is not what its hash says: a lie, not trusted.
    forged = msgspec.structs.replace(snaps[1], snapshot_id="forged", seq=260, state_hash=hashes[260])
    put(store, forged)
    fast = _rebuild(journal, store, logger[0])
    assert fast.checkpoint_id == snaps[1].snapshot_id and fast.checkpoint_seq == 200
    assert fast.engine.state_hash() == hashes[300]
    ((event, fields),) = [(e, f) for level, e, f in logger[1].lines if level == logging.WARNING]
    assert event == "checkpoint_skipped" and fields["seq"] == 260 and "state hash" in fields["reason"]


def test_a_checkpoint_stored_with_a_version_1_state_hash_is_checked_against_it(
    tmp_path: Path, logger: Any
) -> None:
    journal, store = _files(tmp_path)
    hashes, snaps = build(journal, store, 300, [100])
    # As a store written before state hashes took their version: the hash of the whole msgpack.
    old = msgspec.structs.replace(snaps[0], snapshot_id="v1", seq=200)
    engine_at_200 = _rebuild_to(journal, 200)
    v1_hash = checkpoint_hash_v1(engine_at_200.checkpoint())
    put(store, msgspec.structs.replace(old, state=engine_at_200.checkpoint(), state_hash=v1_hash))
    # ... and one whose v1 hash is not its state's (seq 100's): skipped like any other lie.
    put(store, msgspec.structs.replace(old, snapshot_id="v1-forged", seq=250, state_hash=v1_hash))
    fast = _rebuild(journal, store, logger[0])
    assert fast.checkpoint_id == "v1" and fast.checkpoint_seq == 200
    assert fast.records == 100 and fast.engine.state_hash() == hashes[300]
    ((event, fields),) = [(e, f) for level, e, f in logger[1].lines if level == logging.WARNING]
    assert event == "checkpoint_skipped" and fields["seq"] == 250 and "state hash" in fields["reason"]


def _rebuild_to(journal_path: Path, seq: int) -> Engine:
    engine = Engine(SPEC)
    with Journal(journal_path, readonly=True) as journal:
        for record in journal.read(1, seq):
            engine.process(record.command)
    return engine


def test_every_checkpoint_damaged_means_a_full_replay(tmp_path: Path, logger: Any) -> None:
    journal, store = _files(tmp_path)
    hashes, _ = build(journal, store, 200, [50, 150])
    corrupt(store, "BTCUSDT", 50)
    corrupt(store, "BTCUSDT", 150)
    fast = _rebuild(journal, store, logger[0])
    assert fast.checkpoint_id is None and fast.records == 200 and fast.engine.state_hash() == hashes[200]
    assert [f["seq"] for lvl, _, f in logger[1].lines if lvl == logging.WARNING] == [150, 50]


def test_a_checkpoint_beyond_the_journal_is_not_used(tmp_path: Path) -> None:
    journal, store = _files(tmp_path)
    build(journal, None, 100)
    _, later = build(tmp_path / "other.lmdb", None, 180, [180])
    put(store, later[0])  # ahead of this journal (e.g. a journal restored from an older copy)
    fast = _rebuild(journal, store)
    assert fast.checkpoint_id is None and fast.records == 100


def test_no_store_file_is_a_full_replay(tmp_path: Path) -> None:
    journal, store = _files(tmp_path)
    hashes, _ = build(journal, None, 120)
    assert open_checkpoints(store) is None
    assert _rebuild(journal, store).engine.state_hash() == hashes[120]


def test_the_tail_is_still_checked_against_the_journal(tmp_path: Path) -> None:
    journal, store = _files(tmp_path)
    _, snaps = build(journal, store, 120, [60])
    # A checkpoint that restores cleanly but is not this journal's state at seq 60.
    engine = Engine(SPEC)
    for seq in range(1, 40):
        engine.process(command(seq))
    wrong = msgspec.structs.replace(snaps[0], snapshot_id="wrong", state=engine.checkpoint(),
                                    state_hash=engine.state_hash())  # fmt: skip
    put(store, wrong)  # same key: replaces the good one
    with pytest.raises(DeterminismAlarm):
        _rebuild(journal, store)


def _archive_prefix(journal_path: Path, upto: int) -> None:
    """Drop records 1..upto, as archiving will."""
    env = lmdb.open(str(journal_path), subdir=False, max_dbs=4)
    db = env.open_db(b"records")
    with env.begin(db=db, write=True) as txn:
        for seq in range(1, upto + 1):
            assert txn.delete(seq.to_bytes(8, "big"))
    env.close()


def test_an_archived_prefix_needs_a_checkpoint_covering_it(tmp_path: Path) -> None:
    journal, store = _files(tmp_path)
    hashes, _snaps = build(journal, store, 200, [80, 150])
    _archive_prefix(journal, 100)
    with Journal(journal, readonly=True) as j:
        assert j.first_seq() == 101
    fast = _rebuild(journal, store)
    assert fast.checkpoint_seq == 150 and fast.engine.state_hash() == hashes[200]
    corrupt(store, "BTCUSDT", 150)  # left: the one at 80, which does not reach seq 100
    with pytest.raises(JournalError, match="starts at seq 101"):
        _rebuild(journal, store)
    with pytest.raises(JournalError, match="starts at seq 101"):
        _rebuild(journal, None)


def test_the_matcher_process_recovers_from_a_checkpoint(rig: Rig) -> None:
    config = rig.config
    spec = config.instrument(SYMBOL).spec()
    path = journal_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = checkpoints_path(config.data_path)
    _hashes, snaps = build(path, store, 500, [200, 450], spec=spec)
    corrupt(store, SYMBOL, 450)
    matcher = rig.start()
    assert rig.last_ready.seq == 500
    line = matcher.wait_log("event=recovered")
    recovered = next(x for x in line.splitlines() if "event=recovered" in x)
    assert f"from_checkpoint={snaps[0].snapshot_id}" in recovered
    assert "checkpoint_seq=200" in recovered and "records=300" in recovered
    skipped = next(x for x in line.splitlines() if "event=checkpoint_skipped" in x)
    assert "level=warning" in skipped and "seq=450" in skipped and "symbol=BTCUSDT" in skipped
    # It serves the journal's book.
    with Journal(path, readonly=True) as journal:
        reference = rebuild(journal, spec).engine
    bids, asks = reference.depth(1000)
    book = rig.gateway.book(1000)
    assert (book.bids, book.asks, book.seq) == (bids, asks, 500)
    # And continues the journal from there.
    gw = rig.gateway
    outcome = gw.outcomes([gw.order("carol", "c1", Side.BUY, 10_000, 9_000)])[0]
    assert outcome.seq == 501
    assert matcher.stop() == 0
