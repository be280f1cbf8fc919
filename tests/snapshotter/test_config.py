"""The `[snapshotter]` section: defaults, and bad values refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config

BASE = '[[instruments]]\nsymbol = "BTCUSDT"\n'


def load(tmp_path: Path, extra: str) -> config.Config:
    path = tmp_path / "clobd.toml"
    path.write_text(BASE + extra)
    return config.load(path, environ={})


def test_defaults(tmp_path: Path) -> None:
    snap = load(tmp_path, "").snapshotter
    assert (snap.checkpoint_interval_s, snap.checkpoint_every_records, snap.poll_interval_s) == (
        300.0,
        100_000,
        0.05,
    )
    assert snap.keep_checkpoints == 48
    assert config.load(None, environ={}).snapshotter == snap


def test_values(tmp_path: Path) -> None:
    snap = load(
        tmp_path, "[snapshotter]\ncheckpoint_interval_s = 5\ncheckpoint_every_records = 0\n"
    ).snapshotter
    assert (snap.checkpoint_interval_s, snap.checkpoint_every_records) == (5.0, 0)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("checkpoint_interval_s = 0", "snapshotter.checkpoint_interval_s"),
        ("checkpoint_every_records = -1", "snapshotter.checkpoint_every_records"),
        ("keep_checkpoints = -1", "snapshotter.keep_checkpoints"),
        ("keep_checkpoints = 1", "snapshotter.keep_checkpoints"),
        ("poll_interval_s = 0", "snapshotter.poll_interval_s"),
        ("poll_interval_s = 60", "snapshotter.poll_interval_s"),
        ('checkpoint_every_records = "many"', "snapshotter.checkpoint_every_records"),
        ("interval = 3", "snapshotter"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, line: str, named: str) -> None:
    with pytest.raises(config.ConfigError, match=named.replace(".", r"\.")):
        load(tmp_path, f"[snapshotter]\n{line}\n")
