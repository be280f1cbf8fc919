"""``python -m snapshotter [--config FILE]``: the checkpoint writer of every instrument.

Signals: SIGUSR1 = checkpoint every instrument that moved, now (what ``clob snapshot take``
sends, to the pid in ``<run_dir>/snapshotter.pid``); SIGTERM/SIGINT = a final checkpoint of
every instrument that moved, then exit 0. Exit 1 when it cannot start (bad config, store
unusable, another snapshotter running).
"""

from __future__ import annotations

import argparse
import logging
import sys

from daemon import config as daemon_config
from daemon import logs
from snapshotter import process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapshotter", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="TOML file (default: the embedded default)")
    args = parser.parse_args(argv)
    logger = logs.get("snapshotter")
    try:
        config = daemon_config.load(args.config)
    except daemon_config.ConfigError as exc:
        logs.setup()
        logs.log(logger, "cannot_start", logging.ERROR, reason=str(exc))
        return process.EXIT_CANNOT_START
    logs.setup(config.log_level, config.log_format)
    try:
        return process.run(config)
    except Exception:  # a bug: say so in one line and let the supervisor restart us
        logger.exception("crashed")
        return process.EXIT_CANNOT_START


if __name__ == "__main__":
    sys.exit(main())
