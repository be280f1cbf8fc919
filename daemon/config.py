"""The daemon's configuration: one TOML file, or the embedded default when none is given.

Every key is declared here with its default; `load` refuses unknown keys, wrong types and
inconsistent values with a message that names the key, so a bad config stops `clob serve`
before anything starts. Paths: `data_dir` defaults to `$STATE_DIRECTORY` (set by systemd's
StateDirectory=) or `./var`; `run_dir` (ipc sockets) to `$RUNTIME_DIRECTORY` or
`<data_dir>/run`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from engine.instrument import Instrument
from gateway.protocol import MAX_NAME_CHARS

_CFG = {"forbid_unknown_fields": True, "kw_only": True}


class InstrumentConfig(msgspec.Struct, **_CFG):
    symbol: str
    price_decimals: int = 2
    qty_decimals: int = 4
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int = 1
    max_qty: int = 10**12
    min_price: int = 1
    max_price: int = 10**15
    band_bps: int = 0

    def spec(self) -> Instrument:
        return Instrument(**msgspec.structs.asdict(self))


class AccountConfig(msgspec.Struct, **_CFG):
    name: str
    # Z85 CURVE public key of the client allowed to trade as this account (CURVE mode).
    curve_public_key: str = ""


class GatewayConfig(msgspec.Struct, **_CFG):
    bind: str = "tcp://127.0.0.1:7001"
    market_data_bind: str = "tcp://127.0.0.1:7002"
    max_message_bytes: int = 1 << 20
    max_batch_orders: int = 512  # orders in one client OrderBatch
    max_inflight_per_matcher: int = 20_000  # commands sent and not yet answered
    # Logged-on connections; at the limit a new logon evicts the least recently active one
    # (clients that vanish without logging out are otherwise never noticed).
    max_sessions: int = 10_000
    # "auto": CURVE on for any non-loopback bind; "on"/"off" force it.
    curve: Literal["auto", "on", "off"] = "auto"
    curve_keys_dir: str = ""  # server.key_secret here; default <data_dir>/keys


class MatcherConfig(msgspec.Struct, **_CFG):
    max_batch: int = 2048  # commands per group commit
    map_size_mb: int = 1024
    max_map_size_mb: int = 64 * 1024


class SupervisorConfig(msgspec.Struct, **_CFG):
    start_timeout_s: float = 60.0  # for every child to report ready (recovery included)
    stop_timeout_s: float = 10.0  # for children to drain and exit on SIGTERM
    restart_backoff_s: float = 0.5  # first restart delay, doubled up to the max
    restart_backoff_max_s: float = 10.0


class SnapshotterConfig(msgspec.Struct, **_CFG):
    checkpoint_interval_s: float = 300.0  # a checkpoint of every instrument that moved
    checkpoint_every_records: int = 100_000  # ... or of one after this many records; 0 = off
    poll_interval_s: float = 0.05  # how often the journals are read for new records
    # Checkpoints kept per instrument, newest first; older ones are deleted after each write
    # (a 100,000-order book takes ~6 MiB a checkpoint). 0 = keep all; else at least 2, so
    # that a damaged newest one still leaves one to recover from.
    keep_checkpoints: int = 48


class Config(msgspec.Struct, **_CFG):
    env: str = "dev"  # first part of market-data topics
    data_dir: str = ""
    run_dir: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["kv", "json"] = "kv"
    # Accounts allowed to log on. Empty: any account name may log on (for loopback only;
    # refused when CURVE is on, since then a key must map to an account).
    accounts: list[AccountConfig] = msgspec.field(default_factory=list)
    instruments: list[InstrumentConfig] = msgspec.field(default_factory=list)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    matcher: MatcherConfig = msgspec.field(default_factory=MatcherConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    snapshotter: SnapshotterConfig = msgspec.field(default_factory=SnapshotterConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    def instrument(self, symbol: str) -> InstrumentConfig:
        for inst in self.instruments:
            if inst.symbol == symbol:
                return inst
        raise KeyError(symbol)

    def curve_enabled(self) -> bool:
        if self.gateway.curve != "auto":
            return self.gateway.curve == "on"
        return not (_is_loopback(self.gateway.bind) and _is_loopback(self.gateway.market_data_bind))

    # Internal endpoints (ipc, in run_dir): matchers bind their command socket; the gateway
    # binds the reply and market-data sockets that every matcher connects to.
    def matcher_endpoint(self, symbol: str) -> str:
        return f"ipc://{self.run_path / f'matcher-{symbol}.sock'}"

    def replies_endpoint(self) -> str:
        return f"ipc://{self.run_path / 'gateway-replies.sock'}"

    def market_data_endpoint(self) -> str:
        return f"ipc://{self.run_path / 'market-data.sock'}"

    def admin_endpoint(self) -> str:
        """Local-only admin socket (`clob status`): ipc, file mode 0600, never tcp."""
        return f"ipc://{self.run_path / 'admin.sock'}"

    def children_path(self) -> Path:
        """The supervisor's children table (name, pid, restarts, ready), rewritten on change."""
        return self.run_path / "children.json"

    def journal_dir(self) -> Path:
        return self.data_path / "journal"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


DEFAULT_TOML = """\
# The embedded default: two instruments on loopback, data under ./var.
env = "dev"

[[instruments]]
symbol = "BTCUSDT"
price_decimals = 2      # prices in cents
qty_decimals = 6        # quantities in millionths of a BTC
tick_size = 1           # 0.01
lot_size = 100          # 0.0001 BTC
min_qty = 100
max_qty = 1000000000    # 1000 BTC

[[instruments]]
symbol = "ETHUSDT"
price_decimals = 2
qty_decimals = 5
tick_size = 1
lot_size = 100          # 0.001 ETH
min_qty = 100
max_qty = 1000000000    # 10000 ETH
"""


def load(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read `path` (or the embedded default), fill in paths, and check everything."""
    environ = dict(os.environ) if environ is None else environ
    source = "embedded default" if path is None else str(path)
    try:
        text = DEFAULT_TOML if path is None else Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
    try:
        tomllib.loads(text)  # for TOML syntax errors with line and column
        config = msgspec.toml.decode(text, type=Config)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_key_named(str(exc))}") from exc
    config = _with_paths(config, environ)
    problems = check(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


def check(config: Config) -> list[str]:
    """Every inconsistency, each naming its key."""
    out: list[str] = []
    if not re.fullmatch(r"[A-Za-z0-9_-]+", config.env):
        out.append("env: letters, digits, '-' and '_' only (it starts every topic)")
    if not config.instruments:
        out.append("instruments: at least one is needed")
    seen: set[str] = set()
    for i, inst in enumerate(config.instruments):
        where = f"instruments[{i}]"
        if inst.symbol in seen:
            out.append(f"{where}.symbol: {inst.symbol!r} appears twice")
        if len(inst.symbol) > MAX_NAME_CHARS:
            out.append(f"{where}.symbol: at most {MAX_NAME_CHARS} characters (the protocol's limit)")
        seen.add(inst.symbol)
        try:
            inst.spec()
        except ValueError as exc:
            out.append(f"{where}: {exc}")
    names = [a.name for a in config.accounts]
    for i, account in enumerate(config.accounts):
        if not account.name or names.count(account.name) > 1:
            out.append(f"accounts[{i}].name: must be non-empty and unique")
        if len(account.name) > MAX_NAME_CHARS:
            out.append(f"accounts[{i}].name: at most {MAX_NAME_CHARS} characters (the protocol's limit)")
    for key in ("bind", "market_data_bind"):
        endpoint = getattr(config.gateway, key)
        if not endpoint.startswith(("tcp://", "ipc://")):
            out.append(f"gateway.{key}: {endpoint!r} must be tcp://HOST:PORT or ipc://PATH")
    for key in ("max_message_bytes", "max_batch_orders", "max_inflight_per_matcher", "max_sessions"):
        if getattr(config.gateway, key) <= 0:
            out.append(f"gateway.{key}: must be positive")
    if config.matcher.max_batch <= 0:
        out.append("matcher.max_batch: must be positive")
    if not 0 < config.matcher.map_size_mb <= config.matcher.max_map_size_mb:
        out.append("matcher.map_size_mb: must be positive and at most matcher.max_map_size_mb")
    if not config.snapshotter.checkpoint_interval_s > 0:
        out.append("snapshotter.checkpoint_interval_s: must be positive")
    if config.snapshotter.checkpoint_every_records < 0:
        out.append("snapshotter.checkpoint_every_records: must be 0 (off) or positive")
    if config.snapshotter.keep_checkpoints < 0 or config.snapshotter.keep_checkpoints == 1:
        out.append("snapshotter.keep_checkpoints: must be 0 (keep all) or at least 2")
    if not 0 < config.snapshotter.poll_interval_s <= 10:
        out.append("snapshotter.poll_interval_s: must be positive and at most 10")
    if config.curve_enabled():
        if not config.accounts:
            out.append("accounts: CURVE is on (non-loopback bind), so every account needs an entry")
        for i, account in enumerate(config.accounts):
            if len(account.curve_public_key) != 40:
                out.append(f"accounts[{i}].curve_public_key: a 40-character Z85 key is required with CURVE")
    return out


def _with_paths(config: Config, environ: dict[str, str]) -> Config:
    # Absolute, because every process resolves ipc:// paths against its own working dir.
    data_dir = config.data_dir or environ.get("STATE_DIRECTORY", "").split(":")[0] or "./var"
    data_dir = str(Path(data_dir).resolve())
    run_dir = config.run_dir or environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or f"{data_dir}/run"
    run_dir = str(Path(run_dir).resolve())
    keys_dir = config.gateway.curve_keys_dir or f"{data_dir}/keys"
    gateway = msgspec.structs.replace(config.gateway, curve_keys_dir=keys_dir)
    return msgspec.structs.replace(config, data_dir=data_dir, run_dir=run_dir, gateway=gateway)


def _key_named(message: str) -> str:
    # msgspec says "... - at `$.gateway.bind`"; operators want "gateway.bind: ...".
    match = re.search(r"^(.*?) - at `\$\.?(.*)`$", message)
    if match is None:
        return message
    return f"{match.group(2) or '(top level)'}: {match.group(1)}"


def _is_loopback(endpoint: str) -> bool:
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard ("*"): reachable from outside
