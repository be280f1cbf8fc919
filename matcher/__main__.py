"""``python -m matcher --symbol BTCUSDT [--config FILE]``: one instrument's matcher process.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when it cannot start (bad config,
unknown symbol, journal locked or damaged, sockets), 2 for bad arguments (argparse),
3 on a determinism alarm (the journal does not replay to the events it records).
"""

from __future__ import annotations

import argparse
import sys

from daemon import child
from matcher import process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher", description=__doc__.splitlines()[0])
    parser.add_argument("--symbol", required=True, help="the instrument this matcher owns")
    parser.add_argument("--config", default=None, help="TOML file (default: the embedded default)")
    args = parser.parse_args(argv)
    return child.main(f"matcher.{args.symbol}", args.config, lambda config: process.run(config, args.symbol))


if __name__ == "__main__":
    sys.exit(main())
