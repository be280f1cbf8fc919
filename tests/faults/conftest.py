"""The fault campaign: the real daemon (tests/e2e's `Daemon`) tried the way it fails in production.

`make test` runs the short version of everything here; `make faults` the long crash campaign.
"""

from __future__ import annotations

from tests.e2e.conftest import Daemon, daemon, free_port

__all__ = ["Daemon", "daemon", "free_port"]
