"""``python -m matcher --symbol BTCUSDT [--config FILE]``: one instrument's matcher process.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when it cannot start (bad config,
unknown symbol, journal locked or damaged, sockets), 2 for bad arguments (argparse),
3 on a determinism alarm (the journal does not replay to the events it records).
"""

from __future__ import annotations

import argparse
import logging
import sys

from daemon import config as daemon_config
from daemon import logs
from matcher import process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher", description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", required=True, help="the instrument this matcher owns")
    parser.add_argument("--config", default=None, help="TOML file (default: the embedded default)")
    args = parser.parse_args(argv)
    logger = logs.get(f"matcher.{args.symbol}")
    try:
        config = daemon_config.load(args.config)
    except daemon_config.ConfigError as exc:
        logs.setup()
        logs.log(logger, "cannot_start", logging.ERROR, reason=str(exc))
        return process.EXIT_CANNOT_START
    logs.setup(config.log_level, config.log_format)
    try:
        return process.run(config, args.symbol)
    except Exception:  # a bug: say so in one line and let the supervisor restart us
        logger.exception("crashed")
        return process.EXIT_CANNOT_START


if __name__ == "__main__":
    sys.exit(main())
