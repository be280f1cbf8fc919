"""`python -m gateway [--config FILE]`: run the gateway process (no --config: the embedded default)."""

from __future__ import annotations

import argparse
import sys

from daemon import config as cfg
from daemon import logs
from daemon.child import die_with_parent
from gateway.server import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (default: the embedded one)")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format)
    try:
        return run(config)
    except Exception:
        logs.get("gateway").exception("gateway_failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
