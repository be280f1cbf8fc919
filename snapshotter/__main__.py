"""``python -m snapshotter [--config FILE]``: the checkpoint writer of every instrument.

Signals: SIGUSR1 = checkpoint every instrument that moved, now (what ``clob snapshot take``
sends, to the pid in ``<run_dir>/snapshotter.pid``); SIGTERM/SIGINT = a final checkpoint of
every instrument that moved, then exit 0. Exit 1 when it cannot start (bad config, store
unusable, another snapshotter running).
"""

from __future__ import annotations

import argparse
import sys

from daemon import child
from snapshotter import process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapshotter", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="TOML file (default: the embedded default)")
    args = parser.parse_args(argv)
    return child.main("snapshotter", args.config, process.run)


if __name__ == "__main__":
    sys.exit(main())
