"""The systemd notify protocol (sd_notify), spoken without libsystemd.

A process tells its manager about itself by sending one datagram of `KEY=VALUE` lines to
the unix socket named by `$NOTIFY_SOCKET` (a leading '@' means the abstract namespace).
systemd is the manager of `clob serve`; `clob serve` is, in turn, the manager of its
children: it points each child's NOTIFY_SOCKET at its own socket, so a matcher says
`READY=1` exactly as the daemon says it to systemd. Without NOTIFY_SOCKET, `notify` does
nothing and returns False.
"""

from __future__ import annotations

import os
import socket


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # Never block: a manager that stopped reading must not stall the process.
            sock.sendto(message.encode(), socket.MSG_DONTWAIT, address)
        except OSError:
            return False  # nor may one that went away take the process with it
    return True


def parse(datagram: bytes) -> dict[str, str]:
    """`KEY=VALUE` lines into a dict (later keys win)."""
    out: dict[str, str] = {}
    for line in datagram.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out
