"""The `clob` command group: every command module is registered here."""

from __future__ import annotations

import click

from cli import history, journal, keys, market, orders, serve, snapshots, status
from gateway.protocol import PROTOCOL_VERSION

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=_CONTEXT)
@click.version_option(
    package_name="clobd", message=f"%(prog)s %(version)s (client protocol v{PROTOCOL_VERSION})"
)
def clob() -> None:
    """Operate clobd, the durable order-book matching daemon, and trade against it.

    Commands that talk to the gateway take --endpoint (default: the gateway bind address of
    --config, or of the embedded default config), --account (default $CLOB_ACCOUNT or "demo")
    and, when the gateway uses CURVE, --curve-key / --server-key.

    Exit codes: 0 done, 1 refused (a reject, an unknown order), 2 bad usage, 3 no usable
    answer from the gateway (timeout, protocol error).
    """


# One module per command or group. The daemon's own commands (`serve`, and the `journal`,
# `snapshot` and `replay` groups) are added to this tuple the same way, each in its module.
COMMANDS: tuple[click.Command, ...] = (
    serve.serve,
    orders.order,
    market.book,
    market.ping,
    status.status,
    keys.keys,
    journal.journal_group,
    snapshots.snapshot_group,
    snapshots.replay,
    history.orders,
    history.fills,
    history.order_history,
)

for _command in COMMANDS:
    clob.add_command(_command)
