"""The fault campaign: the real daemon (tests/e2e's `Daemon`) tried the way it fails in production.

`make test` runs the short version of everything here; `make faults` the long crash campaign.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Daemon, daemon, free_port

__all__ = ["Daemon", "daemon", "free_port", "live"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by a module's tests (they must leave it serving)."""
    d = Daemon(tmp_path_factory.mktemp("live"))
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.kill_all()
