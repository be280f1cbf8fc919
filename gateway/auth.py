"""CURVE for the client-facing sockets: the server's key pair and the ZAP handler.

The server key pair lives in `<gateway.curve_keys_dir>/server.key` (public, to hand to
clients) and `server.key_secret` (0600, in a 0700 directory); both are created on first
start. The ZAP handler admits only the `curve_public_key`s listed in `config.accounts` and
sets each connection's ZeroMQ User-Id to the account its key belongs to, so a logon can be
checked against the key that was actually used (`Frame.get("User-Id")`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from daemon import logs
from daemon.config import Config

SECRET_NAME = "server.key_secret"


class ServerKeys:
    __slots__ = ("public", "public_path", "secret")

    def __init__(self, public: bytes, secret: bytes, public_path: Path) -> None:
        self.public = public
        self.secret = secret
        self.public_path = public_path


def server_keys(keys_dir: str | os.PathLike[str], logger: logging.Logger) -> ServerKeys:
    """Load the server key pair, creating the directory and the pair if they are missing."""
    directory = Path(keys_dir)
    secret_path = directory / SECRET_NAME
    if not secret_path.exists():
        # umask, not a chmod afterwards: the secret must never exist readable by others.
        umask = os.umask(0o077)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            zmq.auth.create_certificates(directory, "server")
        finally:
            os.umask(umask)
        logs.log(logger, "curve_keys_created", dir=directory)
    _tighten(directory, secret_path, logger)
    public, secret = zmq.auth.load_certificate(secret_path)
    if secret is None:
        raise ValueError(f"{secret_path}: no secret key in this certificate")
    public_path = directory / "server.key"
    logs.log(logger, "curve_server_key", public_key_file=public_path, public_key=public.decode())
    return ServerKeys(public, secret, public_path)


def _tighten(directory: Path, secret_path: Path, logger: logging.Logger) -> None:
    """A secret key readable by others is no secret: tighten what an operator left, or warn
    when the files are not ours to change (then the operator's modes stand)."""
    for path, mode in ((directory, 0o700), (secret_path, 0o600)):
        try:
            if path.stat().st_mode & 0o077:
                os.chmod(path, mode)
        except PermissionError:
            logs.log(logger, "curve_key_permissions", level=logging.WARNING, path=path,
                     mode=oct(path.stat().st_mode & 0o777), wanted=oct(mode))


class _AccountKeys:
    """The ZAP credentials provider: a client key is admitted if an account lists it."""

    def __init__(self, accounts: dict[bytes, str]) -> None:
        self.accounts = accounts

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.accounts


class _Authenticator(ThreadAuthenticator):
    accounts: dict[bytes, str]

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called only after the key was admitted, so the lookup cannot miss.
        return self.accounts[z85.encode(client_public_key)]


def start_authenticator(context: zmq.Context[zmq.Socket[bytes]], config: Config) -> ThreadAuthenticator:
    """Start the ZAP handler (before any CURVE socket binds, or libzmq admits everyone)."""
    accounts = {a.curve_public_key.encode(): a.name for a in config.accounts if a.curve_public_key}
    auth = _Authenticator(context, log=logs.get("gateway.zap"))
    auth.accounts = accounts
    auth.configure_curve_callback(domain="*", credentials_provider=_AccountKeys(accounts))
    auth.start()
    return auth


def make_curve_server(sock: zmq.Socket[bytes], keys: ServerKeys) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
