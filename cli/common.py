"""What every gateway command shares: connection options, connecting, errors, exit codes."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from cli import output
from daemon.config import Config, ConfigError, load
from gateway.client import Client, ProtocolError, RequestRejected, curve_keys_from_files

R = TypeVar("R")

EXIT_REFUSED = 1  # a reject, an order that is not there
EXIT_NO_ANSWER = 3  # timeout or garbage from the gateway (2 is click's usage error)


class NoAnswer(click.ClickException):
    exit_code = EXIT_NO_ANSWER


@dataclass(frozen=True)
class Target:
    """Where and as whom a command talks to the gateway, and how it prints."""

    endpoint: str
    account: str
    timeout: float
    server_key: bytes | None = None
    keypair: tuple[bytes, bytes] | None = None
    as_json: bool = False


_OPTIONS = (
    click.option(
        "--config",
        "config_path",
        envvar="CLOB_CONFIG",
        type=click.Path(dir_okay=False, exists=True),
        help="daemon config (TOML) for the default endpoint and CURVE keys dir [env CLOB_CONFIG].",
    ),
    click.option("--endpoint", envvar="CLOB_ENDPOINT", help="gateway address, e.g. tcp://10.0.0.5:7001."),
    click.option(
        "--account", envvar="CLOB_ACCOUNT", default="demo", show_default=True, help="[env CLOB_ACCOUNT]"
    ),
    click.option(
        "--curve-key",
        envvar="CLOB_CURVE_KEY",
        type=click.Path(dir_okay=False, exists=True),
        help="your CURVE secret certificate (NAME.key_secret from `clob keys generate`).",
    ),
    click.option(
        "--server-key",
        envvar="CLOB_SERVER_KEY",
        type=click.Path(dir_okay=False, exists=True),
        help="the gateway's public certificate [default: server.key in the config's keys dir].",
    ),
    click.option(
        "--timeout", envvar="CLOB_TIMEOUT", type=float, default=5.0, show_default=True, help="seconds."
    ),
    click.option("--json", "as_json", is_flag=True, help="print the reply as JSON (decimals as strings)."),
)


def gateway_options(f: Callable[..., R]) -> Callable[..., R]:
    """Add the shared options; the command receives them as one `Target`, its first argument."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        config_path: str | None,
        endpoint: str | None,
        account: str,
        curve_key: str | None,
        server_key: str | None,
        timeout: float,
        as_json: bool,
        **kwargs: Any,
    ) -> R:
        config = _load_config(config_path)
        server_public, keypair = _curve_keys(config, curve_key, server_key)
        endpoint = endpoint or connectable(config.gateway.bind)
        target = Target(endpoint, account, timeout, server_public, keypair, as_json)
        return f(target, *args, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def order_ref_options(f: Callable[..., R]) -> Callable[..., R]:
    """--order-id / --client-order-id: exactly one names the order."""
    f = click.option("--client-order-id", default="", help="the client order id the order was placed with.")(
        f
    )
    return click.option("--order-id", type=int, default=0, help="the engine's order id.")(f)


def check_order_ref(order_id: int, client_order_id: str) -> None:
    if bool(order_id) == bool(client_order_id):
        raise click.UsageError("name the order with --order-id or --client-order-id (exactly one)")


_WILDCARDS = (
    ("tcp://*:", "tcp://127.0.0.1:"),
    ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
    ("tcp://[::]:", "tcp://[::1]:"),
)


def connectable(bind: str) -> str:
    """A bind address as a client can connect to it: a wildcard host becomes loopback."""
    for wildcard, loopback in _WILDCARDS:
        if bind.startswith(wildcard):
            return loopback + bind.removeprefix(wildcard)
    return bind


def _load_config(path: str | None) -> Config:
    try:
        return load(path)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc


def _curve_keys(
    config: Config, curve_key: str | None, server_key: str | None
) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    if curve_key is None and server_key is None and not config.curve_enabled():
        return None, None
    if curve_key is None:
        raise click.UsageError(
            "the gateway uses CURVE: pass --curve-key FILE"
            " (your NAME.key_secret; `clob keys generate` makes one)"
        )
    server_file = server_key or os.path.join(config.gateway.curve_keys_dir, "server.key")
    try:
        return curve_keys_from_files(curve_key, server_file)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot load CURVE keys ({curve_key}, {server_file}): {exc}") from exc


@contextmanager
def connected(target: Target, *, logon: bool = True) -> Iterator[Client]:
    """A client (logged on unless told otherwise); gateway trouble becomes an exit code."""
    client = Client(
        target.endpoint,
        curve_server_key=target.server_key,
        curve_keypair=target.keypair,
        timeout=target.timeout,
    )
    try:
        if logon:
            client.logon(target.account)
        yield client
    except RequestRejected as exc:
        refuse(target, output.reject_json(exc.reject), f"rejected: {exc}")
    except (TimeoutError, ProtocolError) as exc:
        raise NoAnswer(str(exc)) from exc
    except ValueError as exc:  # the client refused an input: too many decimals, unknown symbol
        raise click.UsageError(str(exc)) from exc
    finally:
        client.close()


def emit(target: Target, document: object, text: str) -> None:
    """Print `document` as JSON with --json, else `text`."""
    click.echo(output.dumps(document) if target.as_json else text)


def refuse(target: Target, document: object, text: str) -> NoReturn:
    emit(target, document, text)
    raise click.exceptions.Exit(EXIT_REFUSED)


def keys_dir_default() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "clob" / "keys"
