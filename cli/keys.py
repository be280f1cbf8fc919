"""`clob keys generate`: CURVE key pairs for encrypted, authenticated gateway connections."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import click
import zmq.auth

from cli.common import keys_dir_default
from cli.output import dumps


@click.group()
def keys() -> None:
    """CURVE keys: the gateway's own pair, and one pair per client account."""


@keys.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=keys_dir_default,
    show_default="$XDG_CONFIG_HOME/clob/keys",
    help="where to write NAME.key (public) and NAME.key_secret (secret).",
)
@click.option(
    "--name", default="client", show_default=True, help='file name; "server" for the gateway\'s pair.'
)
@click.option(
    "--account", envvar="CLOB_ACCOUNT", default="demo", show_default=True, help="for the config snippet."
)
@click.option("--force", is_flag=True, help="replace an existing pair of that name.")
@click.option("--json", "as_json", is_flag=True, help="print the key and file names as JSON.")
def generate(directory: Path, name: str, account: str, force: bool, as_json: bool) -> None:
    """Write a new CURVE key pair (secret file 0600, directory 0700) and print its public key."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise click.BadParameter("letters, digits, '.', '_' and '-' only", param_hint="--name")
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [f for f in (public_file, secret_file) if f.exists()]
    if existing and not force:
        raise click.ClickException(f"{existing[0]} exists; pass --force to replace the pair")
    _private_dir(directory)
    for f in existing:
        f.unlink()  # a rewritten file would keep its old (maybe readable) mode while the key goes in
    public_key = _create(directory, name)
    if as_json:
        click.echo(
            dumps(
                {"public_key": public_key, "public_file": str(public_file), "secret_file": str(secret_file)}
            )
        )
    else:
        click.echo(_report(name, account, public_key, public_file, secret_file))


def _private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is filtered through the umask
    elif directory.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        click.echo(f"warning: {directory} is accessible to other users (chmod 700 it)", err=True)


def _create(directory: Path, name: str) -> str:
    # The umask makes the secret file private from the moment it exists, not after a chmod.
    old = os.umask(0o077)
    try:
        public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    Path(secret_file).chmod(0o600)
    Path(public_file).chmod(0o644)  # public by nature; the 0700 directory still guards it
    public, _ = zmq.auth.load_certificate(public_file)
    return public.decode()


def _report(name: str, account: str, public_key: str, public_file: Path, secret_file: Path) -> str:
    lines = [
        f"public key: {public_key}",
        f"wrote {public_file} (public)",
        f"      {secret_file} (secret, 0600)",
        "",
    ]
    if name == "server":
        lines += [
            f"The gateway reads {secret_file.name} from gateway.curve_keys_dir (default <data_dir>/keys).",
            f"Give clients {public_file} for --server-key.",
        ]
    else:
        lines += [
            "Add the account to the daemon's config:",
            "",
            "[[accounts]]",
            f'name = "{account}"',
            f'curve_public_key = "{public_key}"',
            "",
            f"and connect with: --curve-key {secret_file} --server-key <the gateway's server.key>",
        ]
    return "\n".join(lines)
