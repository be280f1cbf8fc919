"""`clob serve`: run the daemon in the foreground (systemd runs exactly this)."""

from __future__ import annotations

import sys

import click

from daemon import logs
from daemon.config import ConfigError, load
from daemon.supervisor import serve as run_supervisor


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file; without it, the embedded default (BTCUSDT, ETHUSDT on loopback).",
)
@click.option("--check", is_flag=True, help="Only validate the configuration and print the result.")
def serve(config_path: str | None, check: bool) -> None:
    """Start the gateway and one matcher per instrument; stop cleanly on SIGTERM/SIGINT."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        click.echo(f"clob serve: bad configuration: {exc}", err=True)
        sys.exit(2)
    if check:
        symbols = ", ".join(i.symbol for i in config.instruments)
        click.echo(f"configuration OK: {symbols}; data in {config.data_dir}")
        return
    logs.setup(config.log_level, config.log_format)
    sys.exit(run_supervisor(config, config_path))
