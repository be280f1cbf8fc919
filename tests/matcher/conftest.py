"""A rig per test: config and data under tmp_path, ipc sockets in a short /tmp directory,
the fake gateway bound before any matcher starts, every matcher killed at the end."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import load
from tests.matcher.harness import FakeGateway, MatcherProc, write_config


class Rig:
    def __init__(self, workdir: Path, run_dir: Path, matcher_toml: str = "") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True)
        self.config_path = write_config(workdir, run_dir, matcher_toml)
        self.config = load(self.config_path)
        self.gateway = FakeGateway(self.config)
        self.matchers: list[MatcherProc] = []

    def start(self, ready: bool = True, **kwargs: Any) -> MatcherProc:
        """Start a matcher (and, unless `ready` is False, wait for its MatcherReady)."""
        matcher = MatcherProc(self.config_path, self.workdir / f"matcher-{len(self.matchers)}.log")
        matcher.start(**kwargs)
        self.matchers.append(matcher)
        self.gateway.connect()
        if ready:
            self.last_ready = self.gateway.wait_ready()
        return matcher

    def close(self) -> None:
        for matcher in self.matchers:
            matcher.kill()
        self.gateway.close()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    run_dir = Path(tempfile.mkdtemp(prefix="clm-", dir="/tmp"))
    rigs: list[Rig] = []

    def make(matcher_toml: str = "") -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", run_dir, matcher_toml)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()
