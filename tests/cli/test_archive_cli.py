"""`clob journal archive`, and every reading command on an archived journal: the same output
as before archiving. Journal and checkpoints written directly in tmp (no daemon)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from daemon.config import load
from gateway import protocol as p
from gateway.client import Client
from journal import Journal, journal_path
from journal.archive import archive_dir_for, list_segments
from journal.checkpoints import checkpoints_path
from journal.history import HistoryIndex
from tests.cli.clob_runner import ClobOn
from tests.e2e.conftest import ROOT, Daemon
from tests.matcher.checkpointed import build, corrupt
from tests.matcher.harness import SYMBOL, write_config

RECORDS = 400
CHECKPOINTS = (100, 200, 300)


class Data(ClobOn):
    def __init__(self, root: Path) -> None:
        self.config_path = write_config(root, Path(tempfile.gettempdir()))
        config = load(self.config_path)
        self.spec = config.instrument(SYMBOL).spec()
        self.data_dir = config.data_path
        self.journal = journal_path(config.journal_dir(), SYMBOL)
        self.journal.parent.mkdir(parents=True)
        self.store = checkpoints_path(config.data_path)
        self.hashes, self.snaps = build(self.journal, self.store, RECORDS, CHECKPOINTS, spec=self.spec)

    def live(self) -> tuple[int, int]:
        with Journal(self.journal, readonly=True) as j:
            return j.first_seq(), j.last_seq()

    def archive(self, *args: str) -> dict[str, object]:
        docs = self.json("journal", "archive", SYMBOL, *args)
        assert len(docs) == 1 and docs[0]["symbol"] == SYMBOL
        return dict(docs[0])


@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data(tmp_path)


# Everything a reader can print, as text and as JSON.
READS = [
    ("journal", "range", SYMBOL, "1", str(RECORDS)),
    ("journal", "range", SYMBOL, "95", "130", "--account", "bob"),
    ("journal", "show", SYMBOL, "7"),
    ("journal", "show", SYMBOL, "250"),
    ("journal", "tail", SYMBOL, "-n", "5"),
    ("journal", "export", SYMBOL, "--format", "jsonl"),
    ("journal", "export", SYMBOL, "--format", "csv", "--from", "150", "--to", "260"),
    ("replay", SYMBOL, "--snapshot", "none"),
    ("replay", SYMBOL, "--snapshot", "none", "--to-seq", "150"),
    ("orders", "--account", "alice"),
    ("order-history", "3", "--symbol", SYMBOL),
]


def _outputs(data: Data) -> list[str]:
    out = []
    for args in READS:
        out.append(data.ok(*args))
        out.append(data.ok(*args, "--json") if args[1] != "export" else "")
    return out


def _verify_doc(data: Data) -> dict[str, object]:
    docs = data.json("journal", "verify", SYMBOL)
    return dict(docs[0])


def test_archive_then_every_reader_prints_the_same(data: Data) -> None:
    before = _outputs(data)
    verified = _verify_doc(data)
    assert verified["ok"] and verified["records_checked"] == RECORDS

    doc = data.archive("--checkpoints", "1", "--segment-records", "120")
    assert doc["checkpoint_seqs"] == [300] and doc["covered_seq"] == doc["through_seq"] == 300
    assert (doc["archived"], doc["discarded"]) == (300, 300)
    assert doc["segments"] == [
        "00000000000000000001-00000000000000000120.seg",
        "00000000000000000121-00000000000000000240.seg",
        "00000000000000000241-00000000000000000300.seg",
    ]
    assert (doc["lmdb_first_seq"], doc["lmdb_last_seq"]) == (301, RECORDS) == data.live()

    assert _outputs(data) == before
    # The order-history index is derived: rebuilt after archiving, it reads the segments.
    for name in ("history-index.lmdb", "history-index.lmdb-lock"):
        (data.data_dir / name).unlink()
    assert _outputs(data) == before
    after = _verify_doc(data)
    assert after == verified  # same seqs, records checked, state hash; no problem

    # `stat`: LMDB's own range, and the segments.
    (stat,) = data.json("journal", "stat", SYMBOL)
    assert (stat["first_seq"], stat["last_seq"], stat["records"]) == (301, RECORDS, RECORDS - 300)
    assert (stat["archived_first_seq"], stat["archived_last_seq"], stat["archived_records"]) == (1, 300, 300)
    assert [s["file"] for s in stat["archived_segments"]] == doc["segments"]
    assert all(s["ok"] for s in stat["archived_segments"])
    assert stat["archived_bytes"] == sum(s.size() for s in list_segments(archive_dir_for(data.journal)))
    text = data.ok("journal", "stat", SYMBOL).splitlines()
    assert text[1].split()[:4] == [SYMBOL, "301", str(RECORDS), "100"]
    assert "3 segments, seq 1..300" in text[1]
    assert text[3].strip() == f"archive {archive_dir_for(data.journal)}"
    assert text[4].split()[:3] == ["00000000000000000001-00000000000000000120.seg", "seq", "1..120"]

    # A replay from a checkpoint past the archive needs no segment; one before it reads them.
    mid = data.snaps[0]
    assert data.json("replay", SYMBOL, "--snapshot", mid.snapshot_id)["state_hash"] == data.hashes[RECORDS]


def test_archive_stops_at_the_checkpoints(data: Data) -> None:
    # Default: what the two newest usable checkpoints cover (200), not the newest (300).
    doc = data.archive("--dry-run")
    assert (doc["checkpoint_seqs"], doc["through_seq"], doc["would_archive"]) == ([300, 200], 200, 200)
    assert data.live() == (1, RECORDS) and not archive_dir_for(data.journal).exists()
    assert data.archive()["through_seq"] == 200
    assert data.live() == (201, RECORDS)
    # --keep leaves recent records whatever the checkpoints cover.
    assert data.archive("--checkpoints", "1", "--keep", "250")["archived"] == 0
    assert data.live() == (201, RECORDS)
    text = data.ok("journal", "archive", SYMBOL, "--checkpoints", "1", "--keep", "190")
    assert text.startswith(f"{SYMBOL}: archived 10 record(s) into 1 segment(s)")
    assert "LMDB, which now holds seq 211..400" in text
    assert data.live() == (211, RECORDS)
    # The newest checkpoint is damaged: the usable ones are 200 and 100; nothing new moves.
    corrupt(data.store, SYMBOL, 300)
    doc = data.archive("--checkpoints", "1")
    assert (doc["checkpoint_seqs"], doc["archived"]) == ([200], 0)
    assert data.ok("journal", "archive", SYMBOL) == (
        f"{SYMBOL}: nothing new to archive (archived through seq 210)\n"
    )


def test_no_checkpoint_no_archive(tmp_path: Path) -> None:
    data = Data(tmp_path)
    data.store.unlink()
    doc = data.archive("--checkpoints", "1")
    assert "fewer than 1 usable checkpoint" in str(doc["note"]) and "archived" not in doc
    assert data.live() == (1, RECORDS)


def test_unarchive_then_recovery_needs_no_checkpoint(data: Data) -> None:
    data.archive("--checkpoints", "1")
    assert data.live() == (301, RECORDS)
    text = data.ok("journal", "unarchive", SYMBOL)
    assert text == f"{SYMBOL}: put 300 archived record(s) back into LMDB, which now holds seq 1..{RECORDS}\n"
    assert data.live() == (1, RECORDS)
    assert _verify_doc(data)["ok"]


def test_the_history_index_is_caught_up_before_records_leave(data: Data) -> None:
    data.archive("--checkpoints", "1")
    with HistoryIndex.in_data_dir(data.data_dir) as index:
        assert index.cursor(SYMBOL)[0] == RECORDS


def test_verify_finds_a_damaged_segment(data: Data) -> None:
    data.archive("--checkpoints", "1", "--segment-records", "100")
    second = list_segments(archive_dir_for(data.journal))[1].path
    raw = bytearray(second.read_bytes())
    raw[-7] ^= 0x01
    second.write_bytes(bytes(raw))
    result = data.run("journal", "verify", SYMBOL, "--json")
    assert result.exit_code == 1
    (doc,) = json.loads(result.stdout)
    assert doc["problems"] == 1
    assert doc["first_problem"]["seq"] == 101
    assert "body checksum mismatch" in doc["first_problem"]["reason"]
    (stat,) = data.json("journal", "stat", SYMBOL)
    assert all(s["ok"] for s in stat["archived_segments"])  # stat reads headers only
    # Reading around it still works, and the damaged range is named.
    lines = data.ok("journal", "range", SYMBOL, "195", "205").splitlines()
    assert lines[0].split(maxsplit=2) == [
        "195",
        "CORRUPT:",
        "archived segment 00000000000000000101-00000000000000000200.seg: body checksum mismatch",
    ]
    assert [int(line.split()[0]) for line in lines[1:]] == list(range(201, 206))
    shown = data.run("journal", "show", SYMBOL, "150")
    assert shown.exit_code == 1 and "body checksum mismatch" in shown.output


def test_verify_reports_a_missing_segment_and_checks_the_rest(data: Data) -> None:
    data.archive("--checkpoints", "1", "--segment-records", "100")
    list_segments(archive_dir_for(data.journal))[1].path.unlink()  # seqs 101..200
    result = data.run("journal", "verify", SYMBOL, "--json")
    assert result.exit_code == 1
    (doc,) = json.loads(result.stdout)
    assert doc["first_problem"] == {"seq": 201, "reason": "sequence gap: expected seq 101, found 201"}
    assert doc["records_checked"] == RECORDS - 100 and doc["state_hash"] is None


# --- beside a running daemon --------------------------------------------------------------------


def test_archive_beside_a_running_daemon_then_resend_and_restart(tmp_path: Path) -> None:
    """Archived while the daemon serves; trading goes on; a resend of an archived order gets
    its original answer, before and after a restart (recovery from the checkpoint)."""
    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        with Client(daemon.endpoint, timeout=10) as alice:
            alice.logon("alice")
            originals = [
                alice.new_order("BTCUSDT", "buy", "1", f"{90 + i}.00", client_order_id=f"a{i}")
                for i in range(6)
            ]
            assert all(isinstance(a, p.Ack) and not a.duplicate for a in originals)
            taken = json.loads(_clob(daemon, "snapshot", "take", "--json"))
            assert [(t["symbol"], t["seq"]) for t in taken] == [("BTCUSDT", 6)]
            (doc,) = json.loads(
                _clob(daemon, "journal", "archive", "BTCUSDT", "--checkpoints", "1", "--json")
            )
            assert (doc["through_seq"], doc["archived"], doc["lmdb_first_seq"]) == (5, 5, 6)
            after = alice.new_order("BTCUSDT", "sell", "1", "99.00", client_order_id="a6")  # trading goes on
            assert isinstance(after, p.Ack) and after.seq == 7
            again = alice.new_order("BTCUSDT", "buy", "1", "90.00", client_order_id="a0")
            assert isinstance(again, p.Ack) and again.duplicate
            assert (again.seq, again.events) == (1, originals[0].events) and again.events
        assert daemon.stop() == 0, daemon.log()
        daemon.start()
        recovered = [line for line in daemon.log().splitlines() if "matcher.BTCUSDT event=recovered" in line]
        assert int(recovered[-1].split("checkpoint_seq=")[1].split()[0]) >= 6  # LMDB starts at 6
        with Client(daemon.endpoint, timeout=10) as alice:
            alice.logon("alice")
            again = alice.new_order("BTCUSDT", "buy", "1", "90.00", client_order_id="a2")
            assert isinstance(again, p.Ack) and again.duplicate
            assert (again.seq, again.events) == (3, originals[2].events)
        verified = json.loads(_clob(daemon, "journal", "verify", "BTCUSDT", "--json"))
        assert verified[0]["ok"] and (verified[0]["first_seq"], verified[0]["last_seq"]) == (1, 7)
        # The order-history index lost: the snapshotter rebuilds it, archived orders included.
        assert daemon.stop() == 0, daemon.log()
        for index_file in daemon.data_dir.glob("history-index.lmdb*"):
            index_file.unlink()
        daemon.start()
        assert (daemon.data_dir / "history-index.lmdb").exists()  # the snapshotter's, not the CLI's
        with Client(daemon.endpoint, timeout=10) as alice:
            alice.logon("alice")
            assert isinstance(alice.new_order("BTCUSDT", "buy", "1", "80.00", client_order_id="a7"), p.Ack)
        deadline, listed = time.monotonic() + 15, []
        while len(listed) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
            listed = json.loads(_clob(daemon, "orders", "--account", "alice", "--json"))
        assert sorted(o["client_order_id"] for o in listed) == [f"a{i}" for i in range(8)], listed
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill_all()


def _clob(daemon: Daemon, *args: str) -> str:
    command = [sys.executable, "-m", "cli", *args, "--config", str(daemon.config_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
