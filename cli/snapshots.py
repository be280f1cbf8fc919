"""`clob snapshot list|show|take` and `clob replay`: the checkpoints, and re-running a range.

Everything here opens the checkpoint store (DATA_DIR/checkpoints.lmdb) and the journals
read-only, so it is safe against a live daemon's data dir or a copy. `clob replay` restores
a checkpoint (or starts from an empty book) into an Engine in this process and re-executes
journal records, checking each one's events as recovery does; it never writes anything.
Prices and quantities are decimals via the instrument's decimals from --config.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path

import click
import lmdb

from cli import output
from cli.common import NoAnswer
from cli.journal import PROGRESS_MIN, Source, instrument_info, journal_options, utc
from cli.output import Units
from cli.status import ask
from engine.engine import Engine
from engine.instrument import Instrument
from engine.messages import Checkpoint, RestingOrder, Trade
from gateway import admin
from gateway.client import DecimalBook, Level
from journal import JournalError
from journal.checkpoints import CheckpointStore, Snapshot, SnapshotInfo, checkpoints_path
from journal.record import DeterminismAlarm
from journal.record import replay as replay_record
from snapshotter.process import PID_FILE

EXIT_PROBLEM = 1
VWAP_EXTRA_DECIMALS = 6  # VWAP is shown with the price's decimals plus these, rounded half-even
LIVE_DIFF_DEPTH = 1000  # levels per side compared by --compare-live (the gateway's book limit)

Levels = list[tuple[int, int, int]]  # (price, open qty, orders), best first


def store_path(source: Source) -> Path:
    return checkpoints_path(source.journal_dir.parent)


@contextlib.contextmanager
def open_store(source: Source) -> Iterator[CheckpointStore | None]:
    """The checkpoint store, read-only; None if there is none (yet)."""
    path = store_path(source)
    if not path.exists():
        yield None
        return
    try:
        store = CheckpointStore(path, readonly=True)
    except FileNotFoundError:
        yield None
        return
    except (OSError, lmdb.Error) as exc:
        raise click.ClickException(f"cannot open {path}: {exc}") from exc
    with store:
        yield store


def find_snapshot(source: Source, snapshot_id: str) -> Snapshot:
    with open_store(source) as store:
        snap = None if store is None else store.by_id(snapshot_id)
    if snap is None:
        raise click.ClickException(f"no intact checkpoint {snapshot_id} in {store_path(source)}")
    return snap


def levels(orders: list[RestingOrder]) -> Levels:
    """Aggregate resting orders (best first, queue order) into levels, best first."""
    out: Levels = []
    for order in orders:
        if out and out[-1][0] == order.price:
            price, qty, count = out[-1]
            out[-1] = (price, qty + order.remaining, count + 1)
        else:
            out.append((order.price, order.remaining, 1))
    return out


def _levels_doc(side: Levels, u: Units) -> list[list[object]]:
    return [[u.price(p), u.qty(q), n] for p, q, n in side]


def _ladder(symbol: str, seq: int, bids: Levels, asks: Levels, u: Units) -> str:
    def level(p: int, q: int) -> Level:
        return Level(Decimal(u.price(p)), Decimal(u.qty(q)))

    book = DecimalBook(symbol, seq, [level(p, q) for p, q, _ in bids], [level(p, q) for p, q, _ in asks])
    return output.ladder(book)


def _units(source: Source, symbol: str) -> Units:
    return Units(source.info(symbol))


def _last_trade(state: Checkpoint, u: Units) -> str | None:
    return u.price(state.last_trade_price) if state.last_trade_price else None


# --- clob snapshot ------------------------------------------------------------------------


@click.group("snapshot")
def snapshot_group() -> None:
    """The book checkpoints the snapshotter writes (read-only; safe on a live data dir).

    They live in DATA_DIR/checkpoints.lmdb; DATA_DIR comes from --config or --data-dir.
    """


@snapshot_group.command("list")
@click.argument("symbol", required=False)
@journal_options
def list_(source: Source, symbol: str | None) -> None:
    """Every intact checkpoint (of SYMBOL, or all), oldest first."""
    with open_store(source) as store:
        infos = [] if store is None else store.infos(symbol)
    if source.as_json:
        docs = [
            {
                "snapshot_id": i.snapshot_id,
                "symbol": i.symbol,
                "seq": i.seq,
                "taken_at": utc(i.taken_at),
                "taken_at_ns": i.taken_at,
                "state_hash": i.state_hash,
                "resting_orders": i.resting_orders,
                "size_bytes": i.size_bytes,
            }
            for i in infos
        ]
        click.echo(output.dumps(docs))
        return
    if not infos:
        click.echo(f"no checkpoints in {store_path(source)}")
        return
    header = f"{'id':<36}  {'symbol':<10}  {'seq':>10}  {'taken at (UTC)':<30}  {'orders':>8}"
    click.echo(f"{header}  {'bytes':>10}")
    for i in infos:
        click.echo(
            f"{i.snapshot_id:<36}  {i.symbol:<10}  {i.seq:>10}  {utc(i.taken_at):<30}"
            f"  {i.resting_orders:>8}  {i.size_bytes:>10}"
        )


@snapshot_group.command()
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait.")
@journal_options
def take(source: Source, timeout: float) -> None:
    """Ask the running daemon's snapshotter for a checkpoint of every instrument that moved.

    Sends SIGUSR1 to the pid in RUN_DIR/snapshotter.pid, then waits until the new
    checkpoints are in the store and lists them. Instruments that did not move since their
    last checkpoint get none (there would be nothing new to save).
    """
    pid_file = source.config.run_path / PID_FILE
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise click.ClickException(f"no running snapshotter ({pid_file}: {exc})") from exc
    with open_store(source) as store:
        before = {i.snapshot_id for i in store.infos()} if store is not None else set()
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError as exc:
        raise click.ClickException(f"snapshotter pid {pid} is not running") from exc
    new = _wait_for_new(source, before, timeout)
    if source.as_json:
        click.echo(
            output.dumps([{"snapshot_id": i.snapshot_id, "symbol": i.symbol, "seq": i.seq} for i in new])
        )
    elif not new:
        click.echo("no instrument moved since its last checkpoint: nothing new written")
    for i in [] if source.as_json else new:
        click.echo(f"{i.snapshot_id}  {i.symbol}  seq {i.seq}  {i.resting_orders} resting orders")


def _wait_for_new(source: Source, before: set[str], timeout: float) -> list[SnapshotInfo]:
    """The checkpoints that appear within `timeout` (waits for one quiet second after the
    first, since instruments are checkpointed one after the other)."""
    deadline = time.monotonic() + timeout
    found: list[SnapshotInfo] = []
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        with open_store(source) as store:
            now = [i for i in (store.infos() if store is not None else []) if i.snapshot_id not in before]
        if len(now) != len(found):
            found, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            break
        time.sleep(0.1)
    return found


@snapshot_group.command()
@click.argument("snapshot_id", metavar="ID")
@click.option("--depth", type=click.IntRange(min=0), default=10, show_default=True, help="levels per side.")
@journal_options
def show(source: Source, snapshot_id: str, depth: int) -> None:
    """One checkpoint: its book (aggregated levels), last trade, sequence, time and hash."""
    snap = find_snapshot(source, snapshot_id)
    state = snap.state
    u = _units(source, snap.symbol)
    bids, asks = levels(state.bids), levels(state.asks)
    if source.as_json:
        doc = {
            "snapshot_id": snap.snapshot_id,
            "symbol": snap.symbol,
            "seq": snap.seq,
            "taken_at": utc(snap.taken_at),
            "taken_at_ns": snap.taken_at,
            "book_time": utc(state.last_ts),
            "state_hash": snap.state_hash,
            "last_trade_price": _last_trade(state, u),
            "resting_orders": len(state.bids) + len(state.asks),
            "bids": _levels_doc(bids[:depth], u),
            "asks": _levels_doc(asks[:depth], u),
        }
        click.echo(output.dumps(doc))
        return
    click.echo(
        "\n".join(
            [
                f"checkpoint        {snap.snapshot_id}",
                f"symbol            {snap.symbol}",
                f"journal seq       {snap.seq}",
                f"taken at          {utc(snap.taken_at)}",
                f"book time         {utc(state.last_ts)}",
                f"state hash        {snap.state_hash}",
                f"last trade price  {_last_trade(state, u) or '-'}",
                f"resting orders    {len(state.bids) + len(state.asks)}"
                f" ({len(state.bids)} bids, {len(state.asks)} asks; {len(bids)} / {len(asks)} levels)",
                "",
                _ladder(snap.symbol, snap.seq, bids[:depth], asks[:depth], u),
            ]
        )
    )


# --- clob replay --------------------------------------------------------------------------


class Metrics:
    """Trades over the replayed range: exact integer sums, VWAP as one rounded Decimal."""

    def __init__(self) -> None:
        self.count = 0
        self.volume = 0  # qty units
        self.notional = 0  # price units x qty units

    def add(self, trade: Trade) -> None:
        self.count += 1
        self.volume += trade.qty
        self.notional += trade.price * trade.qty

    def vwap(self, spec: Instrument) -> Decimal | None:
        if not self.volume:
            return None
        with localcontext() as ctx:
            ctx.prec = 60  # ample for 2**64-sized sums: the result does not depend on the default
            ctx.rounding = ROUND_HALF_EVEN
            exact = (Decimal(self.notional) / Decimal(self.volume)).scaleb(-spec.price_decimals)
            return exact.quantize(Decimal(1).scaleb(-(spec.price_decimals + VWAP_EXTRA_DECIMALS)))

    def doc(self, spec: Instrument) -> dict[str, object]:
        vwap = self.vwap(spec)
        notional = Decimal(self.notional).scaleb(-(spec.price_decimals + spec.qty_decimals))
        return {
            "trade_count": self.count,
            "traded_volume": str(spec.qty_from_units(self.volume)),
            "notional": str(notional),
            "vwap": None if vwap is None else str(vwap),
        }


class Replayed:
    def __init__(self, engine: Engine, snapshot: Snapshot | None, last_seq: int, records: int) -> None:
        self.engine = engine
        self.snapshot = snapshot
        self.last_seq = last_seq
        self.records = records
        self.metrics = Metrics()


def replay_range(
    source: Source, symbol: str, spec: Instrument, snapshot: Snapshot | None, to_seq: int | None
) -> Replayed:
    """Restore `snapshot` (or start empty), then re-execute its journal up to `to_seq`."""
    engine = Engine(spec)
    start = 1
    if snapshot is not None:
        if snapshot.symbol != symbol:
            text = f"checkpoint {snapshot.snapshot_id} is of {snapshot.symbol}, not {symbol}"
            raise click.BadParameter(text, param_hint="--snapshot")
        try:
            engine.restore(snapshot.state)
        except (ValueError, TypeError) as exc:
            text = f"checkpoint {snapshot.snapshot_id} cannot be restored: {exc}"
            raise click.ClickException(text) from exc
        if not engine.state_hash_matches(snapshot.state_hash):
            text = f"checkpoint {snapshot.snapshot_id} is damaged: its state does not match its hash"
            raise click.ClickException(text)
        start = snapshot.seq + 1
    with source.open(symbol) as journal:
        last = journal.last_seq()  # a live journal keeps growing: stop where it stood now
        end = last if to_seq is None else to_seq
        if end > last:
            raise click.BadParameter(f"the journal of {symbol} ends at seq {last}", param_hint="--to-seq")
        if end < start - 1:
            raise click.BadParameter(f"before the checkpoint's seq {start - 1}", param_hint="--to-seq")
        first = journal.first_seq()
        if end >= start and first > start:
            raise click.ClickException(
                f"the journal of {symbol} starts at seq {first}: replaying from {start} needs a checkpoint"
                f" at seq >= {first - 1}"
            )
        result = Replayed(engine, snapshot, start - 1, 0)
        count = end - start + 1
        records = journal.read_raw(start, end) if count > 0 else iter(())
        if count >= PROGRESS_MIN:  # on stderr: stdout stays the result alone
            label = f"replaying {symbol}"
            with click.progressbar(length=count, label=label, file=sys.stderr) as bar:
                _run(records, result, bar.update)
        else:
            _run(records, result, None)
    if result.last_seq != end:
        raise click.ClickException(f"the journal of {symbol} has no record {result.last_seq + 1}")
    return result


def _run(
    records: Iterator[tuple[int, bytes]], result: Replayed, update: Callable[[int], None] | None
) -> None:
    process = result.engine.process
    metrics = result.metrics
    try:
        for seq, raw in records:
            if seq != result.last_seq + 1:
                raise click.ClickException(f"journal gap: expected seq {result.last_seq + 1}, found {seq}")
            for event in replay_record(raw, seq, process):  # the checks recovery makes
                if type(event) is Trade:
                    metrics.add(event)
            result.last_seq = seq
            result.records += 1
            if update is not None:
                update(1)
    except DeterminismAlarm as exc:
        raise click.ClickException(
            f"determinism mismatch at seq {exc.seq}: re-execution gave other events than the journal"
            " holds (`clob journal verify` shows the difference)"
        ) from exc
    except JournalError as exc:
        raise click.ClickException(f"journal: {exc}") from exc


@click.command("replay")
@click.argument("symbol")
@click.option(
    "--snapshot",
    "snapshot_id",
    default="none",
    show_default=True,
    help="checkpoint ID to start from (`clob snapshot list`); none = an empty book at seq 1.",
)
@click.option("--to-seq", type=click.IntRange(min=0), help="last journal seq to apply [default: the end].")
@click.option("--depth", type=click.IntRange(min=0), default=5, show_default=True, help="levels per side.")
@click.option(
    "--compare-live",
    is_flag=True,
    help="replay to the running daemon's seq and diff the result against its live book (exit 1 if"
    " they differ).",
)
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="seconds to wait for the daemon."
)
@journal_options
def replay(
    source: Source,
    symbol: str,
    snapshot_id: str,
    to_seq: int | None,
    depth: int,
    compare_live: bool,
    timeout: float,
) -> None:
    """Re-run SYMBOL's journal offline, from a checkpoint or from scratch, up to --to-seq.

    Restores the checkpoint into an engine in this process (nothing is written: the journal
    and the checkpoint store are opened read-only), re-executes every record after it,
    checking each one's events, and prints the resulting book, its state hash, and the
    trades over the replayed range (count, volume, VWAP). The same range always gives the
    same hash and figures. Exits 1 if a record cannot be replayed.

    --compare-live asks the running daemon (its local admin socket) for the matcher's seq,
    state hash and levels, replays to that very seq, and prints whether the two books are
    identical, with the levels that differ if not. Exits 1 on a difference, 3 if the daemon
    does not answer.
    """
    spec = source.spec(symbol)
    if spec is None:
        raise click.ClickException(f"{symbol} is not in the config: replay needs its instrument spec")
    snapshot = None if snapshot_id.lower() == "none" else find_snapshot(source, snapshot_id)
    live = None
    if compare_live:
        if to_seq is not None:
            raise click.BadParameter("--compare-live replays to the live seq: leave --to-seq out")
        live = live_book(source, symbol, timeout)
        to_seq = live.seq
    result = replay_range(source, symbol, spec, snapshot, to_seq)
    engine = result.engine
    state = engine.checkpoint()
    u = Units(instrument_info(spec))
    bids, asks = levels(state.bids), levels(state.asks)
    metrics = result.metrics.doc(spec)
    comparison = None if live is None else compare(live, engine, u)
    if source.as_json:
        doc = {
            "symbol": symbol,
            "from_snapshot": None if snapshot is None else snapshot.snapshot_id,
            "from_seq": 0 if snapshot is None else snapshot.seq,
            "last_seq": result.last_seq,
            "records": result.records,
            "state_hash": engine.state_hash(),
            "resting_orders": engine.order_count(),
            "last_trade_price": _last_trade(state, u),
            "bids": _levels_doc(bids[:depth], u),
            "asks": _levels_doc(asks[:depth], u),
            **metrics,
        }
        if comparison is not None:
            doc["live"] = comparison
        click.echo(output.dumps(doc))
        _exit_on_difference(comparison)
        return
    origin = "an empty book"
    if snapshot is not None:
        origin = f"checkpoint {snapshot.snapshot_id} (seq {snapshot.seq})"
    click.echo(
        "\n".join(
            [
                f"replayed {symbol} from {origin} to seq {result.last_seq}",
                f"records replayed  {result.records}",
                f"last seq          {result.last_seq}",
                f"state hash        {engine.state_hash()}",
                f"resting orders    {engine.order_count()} ({len(state.bids)} bids, {len(state.asks)} asks)",
                f"last trade price  {_last_trade(state, u) or '-'}",
                f"trade count       {metrics['trade_count']}",
                f"traded volume     {metrics['traded_volume']}",
                f"notional          {metrics['notional']}",
                f"vwap              {metrics['vwap'] or '-'}",
                "",
                _ladder(symbol, result.last_seq, bids[:depth], asks[:depth], u),
                *([] if comparison is None else ["", *_comparison_lines(comparison)]),
            ]
        )
    )
    _exit_on_difference(comparison)


# --- clob replay --compare-live ----------------------------------------------------------


def live_book(source: Source, symbol: str, timeout: float) -> admin.InstrumentStatus:
    """The running matcher's seq, state hash and top levels, all taken at one instant."""
    reply = ask(source.config, timeout, state_hash=True, depth=LIVE_DIFF_DEPTH)
    if reply is None:
        raise NoAnswer(f"no answer from the daemon at {source.config.admin_endpoint()} within {timeout}s")
    row = next((i for i in reply.instruments if i.symbol == symbol), None)
    if row is None:
        raise click.ClickException(f"the running daemon has no instrument {symbol}")
    if not row.answered or not row.state_hash:
        raise NoAnswer(f"the matcher of {symbol} did not answer (restarting or busy): try again")
    return row


def compare(live: admin.InstrumentStatus, engine: Engine, u: Units) -> dict[str, object]:
    """Replayed against live: equal hashes mean equal books (every order, in queue order,
    and the counters); on a difference, the aggregated levels that differ say where."""
    replayed_bids, replayed_asks = engine.depth(LIVE_DIFF_DEPTH)
    differences: list[dict[str, object]] = []
    for side, mine, theirs in (("bid", replayed_bids, live.bids), ("ask", replayed_asks, live.asks)):
        replayed_at, live_at = dict(mine), dict(theirs)
        for price in sorted(replayed_at.keys() | live_at.keys()):
            if replayed_at.get(price) != live_at.get(price):
                differences.append({
                    "side": side,
                    "price": u.price(price),
                    "replayed_qty": None if price not in replayed_at else u.qty(replayed_at[price]),
                    "live_qty": None if price not in live_at else u.qty(live_at[price]),
                })  # fmt: skip
    return {
        "seq": live.seq,
        "state_hash": live.state_hash,
        "matcher_pid": live.matcher_pid,
        "identical": live.state_hash == engine.state_hash(),
        "level_differences": differences,
    }


def _comparison_lines(c: dict[str, object]) -> list[str]:
    verdict = "IDENTICAL to" if c["identical"] else "DIFFERENT from"
    lines = [
        f"live book         seq {c['seq']}, state hash {c['state_hash']} (matcher pid {c['matcher_pid']})",
        f"replay is {verdict} the live book",
    ]
    differences = c["level_differences"]
    assert isinstance(differences, list)
    if not c["identical"] and not differences:
        lines.append(f"  the top {LIVE_DIFF_DEPTH} aggregated levels agree: the difference is in queue"
                     " order, order ids or counters")  # fmt: skip
    for d in differences:
        replayed, live = d["replayed_qty"] or "-", d["live_qty"] or "-"
        lines.append(f"  {d['side']} {d['price']}: replayed {replayed}, live {live}")
    return lines


def _exit_on_difference(comparison: dict[str, object] | None) -> None:
    if comparison is not None and not comparison["identical"]:
        raise click.exceptions.Exit(EXIT_PROBLEM)
