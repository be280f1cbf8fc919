"""Who is logged on where: a connection (ROUTER routing id) has at most one account, and an
account may be logged on from several connections at once.

ZeroMQ does not tell a ROUTER when a peer goes away (ROUTER_NOTIFY is a draft API, not in
the libzmq wheels), so a session ends when the client logs out (`Client.close()` does),
when a send to its connection finds no such peer (ROUTER_MANDATORY: EHOSTUNREACH), when the
connection logs on again (possibly as another account), or, with `max_sessions` reached,
when a new logon evicts the session that was active least recently: clients that vanish
silently cannot grow the table without bound.
"""

from __future__ import annotations

from daemon.config import Config


class Sessions:
    __slots__ = ("account_of", "conns_of", "limit", "seen")

    def __init__(self, limit: int) -> None:
        # Plain dicts, read directly on the hot path (one lookup per message).
        self.account_of: dict[bytes, str] = {}
        self.conns_of: dict[str, set[bytes]] = {}
        # conn -> the gateway's request counter at its latest request (stored by the gateway)
        self.seen: dict[bytes, int] = {}
        self.limit = limit

    def bind(self, conn: bytes, account: str, tick: int) -> bytes | None:
        """Log `conn` on as `account`; returns the connection evicted to make room, if any."""
        self.drop(conn)
        evicted = None
        if len(self.account_of) >= self.limit:
            # O(sessions), but only for a logon at the limit, which is not the order path.
            evicted = min(self.seen, key=self.seen.__getitem__)
            self.drop(evicted)
        self.account_of[conn] = account
        self.conns_of.setdefault(account, set()).add(conn)
        self.seen[conn] = tick
        return evicted

    def drop(self, conn: bytes) -> None:
        account = self.account_of.pop(conn, None)
        if account is None:
            return
        del self.seen[conn]
        conns = self.conns_of[account]
        conns.discard(conn)
        if not conns:
            # An account with no connection must not keep costing event fan-out work.
            del self.conns_of[account]

    def __len__(self) -> int:
        return len(self.account_of)


class Admission:
    """Which account names may log on, and, with CURVE, which one a connection's key names."""

    __slots__ = ("curve", "names")

    def __init__(self, config: Config) -> None:
        self.names = frozenset(a.name for a in config.accounts)
        self.curve = config.curve_enabled()

    def admits(self, account: str, user_id: str | None) -> bool:
        """`user_id`: the account the connection's CURVE key maps to (None without CURVE)."""
        if not account:
            return False
        if self.curve:
            # The ZAP handler set User-Id to the key's account: the key decides, not the name.
            return user_id == account
        return not self.names or account in self.names
