"""Print /etc/clobd/clobd.toml as `make install-service` installs it: the embedded default.

The same instruments and settings as `clob serve` without --config (daemon/config.py
DEFAULT_TOML), with a header saying where the data goes under systemd: data_dir and
run_dir stay unset, so StateDirectory= and RuntimeDirectory= of clobd.service supply them.
"""

from __future__ import annotations

import sys

from daemon.config import DEFAULT_TOML

HEADER = """\
# clobd configuration, installed by `make install-service` from the embedded default
# (daemon/config.py declares every key and its default; `clob serve --check --config
# FILE` validates this file). data_dir and run_dir are left unset: under systemd they
# come from StateDirectory= ($STATE_DIRECTORY, /var/lib/clobd: journals, CURVE keys)
# and RuntimeDirectory= ($RUNTIME_DIRECTORY, /run/clobd: ipc sockets).
"""


def main() -> None:
    lines = DEFAULT_TOML.splitlines(keepends=True)
    if lines and lines[0].startswith("# The embedded default"):
        lines = lines[1:]  # "data under ./var" is not true here
    sys.stdout.write(HEADER + "".join(lines))


if __name__ == "__main__":
    main()
