"""`clob journal ...`: read the per-instrument journals, of a live daemon or of a copied data dir.

Every command but `archive` opens the journals read-only (``ArchivedJournal``, a read-only
``Journal`` that also reads the archived segments beside it): LMDB read transactions, short
ones, never a write transaction, so a running matcher is not disturbed (MVCC: a reader never
blocks the writer, and no txn is held while printing or sleeping). `archive` moves records a
checkpoint covers out of LMDB into compressed segments (``journal.archive``); every reading
command reads through them, so the audit trail looks the same before and after.
Prices and quantities are shown in decimals, using the instrument's decimals from --config
(raw integer units if the journal's symbol is not configured).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import lmdb
import msgspec

from cli import output
from cli.output import Units
from daemon.config import Config, ConfigError, load
from engine.engine import Engine
from engine.instrument import Instrument
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    Cancelled,
    Command,
    Event,
    Filled,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    Trade,
)
from gateway.client import from_units
from gateway.protocol import InstrumentInfo
from journal import CorruptRecord, Journal, JournalError, Record, decode
from journal.archive import (
    SEGMENT_RECORDS,
    ArchivedJournal,
    ArchiveError,
    CorruptSegment,
    archive_dir_for,
    list_segments,
    overlap_problems,
    read_header,
)
from journal.archive import archive as archive_records
from journal.archive import unarchive as unarchive_records
from journal.checkpoints import CheckpointStore, checkpoints_path, flush_store
from journal.history import HistoryError, HistoryIndex, catch_up

R = TypeVar("R")

EXIT_PROBLEM = 1
FOLLOW_POLL_S = 0.2  # `tail -f`: how often the journal's last seq is read (one short read txn)
PROGRESS_MIN = 20_000  # `verify` shows a progress bar (on stderr) from this many records on

_COMMAND_NAMES: dict[type, str] = {
    NewOrder: "new_order",
    Cancel: "cancel",
    Amend: "amend",
    MassCancel: "mass_cancel",
}
_EVENT_NAMES: dict[type, str] = {
    cls: cls.__name__.lower() for cls in (Accepted, Rejected, Trade, Cancelled, Amended, Filled)
}
_PRICES = frozenset({"price"})
_QTYS = frozenset({"qty", "remaining", "maker_remaining", "taker_remaining"})
_ORDER_ID_FIELDS = ("order_id", "maker_order_id", "taker_order_id")
_ACCOUNT_FIELDS = ("account", "maker_account", "taker_account")


# --- where the journals are -------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The journals a command reads, the config that gives their decimals, and how to print."""

    config: Config
    journal_dir: Path
    as_json: bool

    def symbols(self, symbol: str | None = None) -> list[str]:
        """[symbol] if given, else every journal in the directory (sorted)."""
        if symbol is not None:
            return [symbol]
        found = sorted(p.name.removesuffix(".lmdb") for p in self.journal_dir.glob("*.lmdb") if p.is_file())
        if not found:
            raise click.ClickException(f"no journals in {self.journal_dir}")
        return found

    def spec(self, symbol: str) -> Instrument | None:
        try:
            return self.config.instrument(symbol).spec()
        except KeyError:
            return None

    def info(self, symbol: str) -> InstrumentInfo | None:
        spec = self.spec(symbol)
        return None if spec is None else instrument_info(spec)

    def path(self, symbol: str) -> Path:
        try:
            return self.journal_dir / f"{_checked_symbol(symbol)}.lmdb"
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="SYMBOL") from exc

    def open(self, symbol: str) -> Journal:
        """The journal of `symbol`, read-only, reading its archived segments too (an
        ``ArchivedJournal``); a missing or unreadable one is a clear error."""
        return self.open_archived(symbol)

    def open_archived(self, symbol: str) -> ArchivedJournal:
        """`open`, typed for what only an ``ArchivedJournal`` has (segments, LMDB's first)."""
        path = self.path(symbol)
        if not path.is_file():
            raise click.ClickException(f"no journal for {symbol} at {path}")
        try:
            return ArchivedJournal(path, readonly=True)
        except (OSError, lmdb.Error, JournalError) as exc:
            raise click.ClickException(f"cannot open {path}: {exc}") from exc


def instrument_info(spec: Instrument) -> InstrumentInfo:
    """What the client-side formatters (`cli.output`) take, from the engine's spec."""
    return InstrumentInfo(
        spec.symbol,
        spec.price_decimals,
        spec.qty_decimals,
        spec.tick_size,
        spec.lot_size,
        spec.min_qty,
        spec.max_qty,
    )


def _checked_symbol(symbol: str) -> str:
    if not symbol or symbol.startswith(".") or any(c in symbol for c in "/\\\0"):
        raise ValueError(f"symbol {symbol!r} cannot name a journal file")
    return symbol


_OPTIONS = (
    click.option(
        "--config",
        "config_path",
        envvar="CLOB_CONFIG",
        type=click.Path(dir_okay=False, exists=True),
        help="daemon config (TOML): data_dir and the instruments' decimals [env CLOB_CONFIG;"
        " default: the embedded one].",
    ),
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="data directory to read instead of the config's (e.g. a copy); journals are"
        " DATA_DIR/journal/SYMBOL.lmdb.",
    ),
    click.option("--json", "as_json", is_flag=True, help="JSON output (decimals as strings)."),
)


def journal_options(f: Callable[..., R]) -> Callable[..., R]:
    """Add --config/--data-dir/--json; the command receives them as one `Source`, first."""

    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, data_dir: str | None, as_json: bool, **kwargs: Any) -> R:
        try:
            config = load(config_path)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from exc
        directory = Path(data_dir) / "journal" if data_dir else config.journal_dir()
        return f(Source(config, directory, as_json), *args, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


# --- reading ----------------------------------------------------------------------------


def records(
    journal: Journal, from_seq: int, to_seq: int | None
) -> Iterator[tuple[int, Record | CorruptRecord]]:
    """(seq, record) in order; a damaged record is yielded as its `CorruptRecord`, not raised.

    Gaps are not reported here (callers compare seqs); reading simply resumes after one. A
    damaged archived segment is yielded once, at its first seq, and reading resumes after it.
    """
    start = from_seq
    while True:
        try:
            for seq, raw in journal.read_raw(start, to_seq):
                start = seq + 1
                try:
                    record = decode(raw, seq)
                except CorruptRecord as exc:
                    yield seq, exc
                    continue
                if record.seq != seq:
                    yield seq, CorruptRecord(seq, f"stored under seq {seq} but says seq {record.seq}")
                    continue
                yield seq, record
            return
        except CorruptSegment as damage:
            yield damage.seq_hint or start, damage
            start = damage.resume_seq
        except CorruptRecord as gap:  # read_raw refuses to step over a gap: resume at its far side
            if gap.seq_hint is None or gap.seq_hint < start:
                raise
            start = gap.seq_hint


def utc(ts: int) -> str:
    """Unix nanoseconds as UTC ISO 8601, to the nanosecond."""
    seconds, nanos = divmod(ts, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


# --- formatting -------------------------------------------------------------------------


def _name(value: IntEnum) -> str:
    return value.name.lower()


def command_summary(command: Command, u: Units) -> str:
    if isinstance(command, NewOrder):
        price = "market" if command.order_type is OrderType.MARKET else u.price(command.price)
        extra = " post-only" if command.post_only else ""
        return (
            f"new {_name(command.side)} {u.qty(command.qty)} @ {price}"
            f" {_name(command.order_type)} {_name(command.tif)}{extra} coid={command.client_order_id}"
        )
    if isinstance(command, Cancel | Amend):
        ref = f"order {command.order_id}" if command.order_id else f"coid={command.orig_client_order_id}"
        if isinstance(command, Cancel):
            return f"cancel {ref}"
        qty = f" qty {u.qty(command.qty)}" if command.qty else ""
        price = f" price {u.price(command.price)}" if command.price else ""
        return f"amend {ref}{qty}{price}"
    return "mass-cancel"


def event_summary(event: Event, u: Units) -> str:
    if isinstance(event, Accepted):
        return f"accepted #{event.order_id}"
    if isinstance(event, Rejected):
        return f"rejected {event.reason.name}"
    if isinstance(event, Trade):
        return f"trade {event.trade_id} {u.qty(event.qty)} @ {u.price(event.price)}"
    if isinstance(event, Cancelled):
        return f"cancelled #{event.order_id} ({_name(event.reason)})"
    if isinstance(event, Amended):
        return f"amended #{event.order_id} {u.qty(event.qty)} @ {u.price(event.price)}"
    return f"filled #{event.order_id}"


def record_line(record: Record, u: Units, symbol: str | None = None) -> str:
    """One line: seq, time, account, command, events."""
    events = ", ".join(event_summary(e, u) for e in record.events) or "no events"
    where = f"{symbol} " if symbol else ""
    return (
        f"{where}{record.seq:>7}  {utc(record.ts)}  {record.command.account:<10}"
        f"  {command_summary(record.command, u)}  => {events}"
    )


def corrupt_line(seq: int, damage: CorruptRecord, symbol: str | None = None) -> str:
    where = f"{symbol} " if symbol else ""
    return f"{where}{seq:>7}  CORRUPT: {damage.reason}"


def _field(name: str, value: object, inst: InstrumentInfo | None) -> dict[str, object]:
    """A struct field as JSON: enums by name; prices and quantities as units AND decimals."""
    if isinstance(value, IntEnum):
        return {name: _name(value)}
    out: dict[str, object] = {name: value}
    if inst is not None and isinstance(value, int) and not isinstance(value, bool):
        if name in _PRICES:
            out[f"{name}_decimal"] = str(from_units(inst, price=value))
        elif name in _QTYS:
            out[f"{name}_decimal"] = str(from_units(inst, qty=value))
    return out


def _struct_doc(obj: msgspec.Struct, type_name: str, inst: InstrumentInfo | None) -> dict[str, object]:
    doc: dict[str, object] = {"type": type_name}
    for name in obj.__struct_fields__:
        doc.update(_field(name, getattr(obj, name), inst))
    return doc


def record_doc(symbol: str, record: Record, inst: InstrumentInfo | None) -> dict[str, object]:
    """A record as a JSON-ready map (the `export --format jsonl` line, `show --json`)."""
    return {
        "symbol": symbol,
        "seq": record.seq,
        "ts": record.ts,
        "time": utc(record.ts),
        "version": record.version,
        "command": _struct_doc(record.command, _COMMAND_NAMES[type(record.command)], inst),
        "events": [_struct_doc(e, _EVENT_NAMES[type(e)], inst) for e in record.events],
    }


def _field_text(name: str, value: object, u: Units) -> str:
    if isinstance(value, IntEnum):
        return f"{_name(value)} ({int(value)})"
    if isinstance(value, int) and not isinstance(value, bool):
        if name in _PRICES:
            return f"{u.price(value)}  ({value} units)"
        if name in _QTYS:
            return f"{u.qty(value)}  ({value} units)"
    return repr(value) if isinstance(value, str) else str(value)


def record_text(symbol: str, record: Record, u: Units) -> str:
    command = record.command
    lines = [
        f"{symbol} seq {record.seq}  {utc(record.ts)}  (ts {record.ts}, record version {record.version})",
        f"command: {_COMMAND_NAMES[type(command)]}  ({command_summary(command, u)})",
    ]
    lines += [
        f"  {name:<22} {_field_text(name, getattr(command, name), u)}" for name in command.__struct_fields__
    ]
    lines.append(f"events: {len(record.events)}")
    for i, event in enumerate(record.events, 1):
        lines.append(f"  [{i}] {output.event_line(event, u)}")
        lines += [
            f"      {name:<20} {_field_text(name, getattr(event, name), u)}"
            for name in event.__struct_fields__
        ]
    return "\n".join(lines)


# --- the group --------------------------------------------------------------------------


@click.group("journal")
def journal_group() -> None:
    """Read the journals (read-only; safe on a live daemon's data or on a copy), and archive
    what checkpoints cover.

    Journals are DATA_DIR/journal/SYMBOL.lmdb, archived records DATA_DIR/journal/SYMBOL.archive/;
    DATA_DIR comes from --config or --data-dir. Every command reads archived records as if
    they were still in LMDB. Without SYMBOL, `stat`, `tail`, `verify` and `archive` take
    every journal in that directory.
    """


@journal_group.command()
@click.argument("symbol", required=False)
@journal_options
def stat(source: Source, symbol: str | None) -> None:
    """First/last sequence, records, size on disk and map size of each journal (LMDB), and
    its archived segments."""
    docs = []
    for sym in source.symbols(symbol):
        with source.open(sym) as journal:
            info = journal.stat()
        docs.append({"symbol": sym, **info, **_archive_doc(source.path(sym))})
    if source.as_json:
        click.echo(output.dumps(docs))
        return
    head = ("symbol", "first", "last", "records", "on disk", "used", "map size", "archived")
    rows = [
        (
            str(d["symbol"]),
            str(d["first_seq"]),
            str(d["last_seq"]),
            str(d["records"]),
            _size(d["file_bytes"]),
            _size(d["used_bytes"]),
            _size(d["map_size"]),
            _archived_cell(d),
        )
        for d in docs
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for d in docs:
        click.echo(f"{d['symbol']}: {d['path']}")
        segments = d["archived_segments"]
        assert isinstance(segments, list)
        if segments:
            click.echo(f"  archive {d['archive_dir']}")
        for seg in segments:
            state = "" if seg["ok"] else f"  DAMAGED: {seg['problem']}"
            click.echo(
                f"    {seg['file']}  seq {seg['first_seq']}..{seg['last_seq']}"
                f"  {seg['records']} records  {_size(seg['bytes'])}{state}"
            )


def _archive_doc(journal_file: Path) -> dict[str, object]:
    """What `stat` shows of a journal's archive: every segment (its header checked, not
    its body: `verify` does that) and the totals."""
    directory = archive_dir_for(journal_file)
    found = list_segments(directory)
    sizes = [seg.size() for seg in found]
    segments: list[dict[str, object]] = []
    for seg, size in zip(found, sizes, strict=True):
        problem = None
        try:
            read_header(seg.path)
        except CorruptSegment as exc:
            problem = exc.detail
        except OSError as exc:
            problem = str(exc)
        segments.append(
            {
                "file": seg.path.name,
                "first_seq": seg.first_seq,
                "last_seq": seg.last_seq,
                "records": seg.records,
                "bytes": size,
                "ok": problem is None,
                "problem": problem,
            }
        )
    return {
        "archive_dir": str(directory),
        "archived_segments": segments,
        "archived_first_seq": found[0].first_seq if found else 0,
        "archived_last_seq": found[-1].last_seq if found else 0,
        "archived_records": sum(seg.records for seg in found),
        "archived_bytes": sum(sizes),
    }


def _archived_cell(d: dict[str, object]) -> str:
    segments = d["archived_segments"]
    assert isinstance(segments, list)
    if not segments:
        return "none"
    damaged = sum(1 for seg in segments if not seg["ok"])
    text = (
        f"{len(segments)} segment{'s' if len(segments) != 1 else ''}, seq {d['archived_first_seq']}"
        f"..{d['archived_last_seq']}, {_size(d['archived_bytes'])}"
    )
    return text + (f" ({damaged} DAMAGED)" if damaged else "")


def _size(n: object) -> str:
    assert isinstance(n, int)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _Printer:
    """Prints records of one or several journals as lines (or JSON lines)."""

    def __init__(self, source: Source, symbols: list[str]) -> None:
        self.source = source
        self.units = {s: Units(source.info(s)) for s in symbols}
        self.multi = len(symbols) > 1

    def __call__(self, symbol: str, seq: int, item: Record | CorruptRecord) -> None:
        label = symbol if self.multi else None
        if isinstance(item, CorruptRecord):
            if self.source.as_json:
                click.echo(output.dumps({"symbol": symbol, "seq": seq, "corrupt": item.reason}))
            else:
                click.echo(corrupt_line(seq, item, label))
        elif self.source.as_json:
            click.echo(output.dumps(record_doc(symbol, item, self.units[symbol].inst)))
        else:
            click.echo(record_line(item, self.units[symbol], label))


def _sort_key(entry: tuple[str, int, Record | CorruptRecord]) -> tuple[int, str, int]:
    symbol, seq, item = entry
    return (item.ts if isinstance(item, Record) else 0, symbol, seq)


@journal_group.command()
@click.argument("symbol", required=False)
@click.option("-n", "lines", type=click.IntRange(min=0), default=10, show_default=True, help="records.")
@click.option("-f", "--follow", is_flag=True, help="keep printing new records until Ctrl-C.")
@journal_options
def tail(source: Source, symbol: str | None, lines: int, follow: bool) -> None:
    """The last N records, newest last (several journals: merged by time)."""
    symbols = source.symbols(symbol)
    show = _Printer(source, symbols)
    with contextlib.ExitStack() as stack:
        journals = {s: stack.enter_context(source.open(s)) for s in symbols}
        shown = {}
        recent: list[tuple[str, int, Record | CorruptRecord]] = []
        for sym, journal in journals.items():
            last = journal.last_seq()
            shown[sym] = last
            if lines:
                recent += [(sym, seq, item) for seq, item in records(journal, max(1, last - lines + 1), last)]
        recent.sort(key=_sort_key)
        for sym, seq, item in recent[max(0, len(recent) - lines) :] if lines else []:
            show(sym, seq, item)
        if not follow:
            return
        try:
            while True:
                time.sleep(FOLLOW_POLL_S)
                for sym, journal in journals.items():
                    last = journal.last_seq()
                    if last > shown[sym]:
                        for seq, item in records(journal, shown[sym] + 1, last):
                            show(sym, seq, item)
                        shown[sym] = last
        except KeyboardInterrupt:
            return


@journal_group.command()
@click.argument("symbol")
@click.argument("seq", type=click.IntRange(min=1))
@journal_options
def show(source: Source, symbol: str, seq: int) -> None:
    """One record in full: the command's fields and every event's, in decimals."""
    with source.open(symbol) as journal:
        found = list(records(journal, seq, seq))
    if not found or found[0][0] != seq:
        raise click.ClickException(f"{symbol} has no record with seq {seq}")
    item = found[0][1]
    if isinstance(item, CorruptRecord):
        raise click.ClickException(f"{symbol} seq {seq} is corrupt: {item.reason}")
    inst = source.info(symbol)
    click.echo(
        output.dumps(record_doc(symbol, item, inst))
        if source.as_json
        else record_text(symbol, item, Units(inst))
    )


def _matches(record: Record, account: str | None, order_id: int | None, event: str | None) -> bool:
    parts: list[msgspec.Struct] = [record.command, *record.events]
    if account is not None and not any(
        getattr(p, f, None) == account for p in parts for f in _ACCOUNT_FIELDS
    ):
        return False
    if order_id is not None and not any(
        getattr(p, f, None) == order_id for p in parts for f in _ORDER_ID_FIELDS
    ):
        return False
    return event is None or any(_EVENT_NAMES[type(e)] == event for e in record.events)


@journal_group.command("range")
@click.argument("symbol")
@click.argument("from_seq", metavar="FROM", type=click.IntRange(min=1))
@click.argument("to_seq", metavar="TO", type=click.IntRange(min=1))
@click.option("--account", help="records whose command or any event names this account.")
@click.option("--order-id", type=int, help="records whose command or any event names this order id.")
@click.option("--event", type=click.Choice(sorted(_EVENT_NAMES.values())), help="records with such an event.")
@journal_options
def range_(
    source: Source,
    symbol: str,
    from_seq: int,
    to_seq: int,
    account: str | None,
    order_id: int | None,
    event: str | None,
) -> None:
    """Records FROM..TO (inclusive), filtered; one line each (corrupt ones always shown)."""
    show_ = _Printer(source, [symbol])
    with source.open(symbol) as journal:
        for seq, item in records(journal, from_seq, to_seq):
            if isinstance(item, CorruptRecord) or _matches(item, account, order_id, event):
                show_(symbol, seq, item)


# --- verify -----------------------------------------------------------------------------


@dataclass
class Verdict:
    symbol: str
    first_seq: int = 0
    last_seq: int = 0
    records_checked: int = 0
    replayed: int = 0
    state_hash: str | None = None
    problems: int = 0
    first_problem: tuple[int, str] | None = None

    def problem(self, seq: int, reason: str) -> None:
        self.problems += 1
        if self.first_problem is None:
            self.first_problem = (seq, reason)


def _difference(journaled: list[Event], replayed: list[Event], u: Units) -> str:
    for i in range(max(len(journaled), len(replayed))):
        a = journaled[i] if i < len(journaled) else None
        b = replayed[i] if i < len(replayed) else None
        if a != b:
            have = output.event_line(a, u) if a is not None else "(none)"
            gave = output.event_line(b, u) if b is not None else "(none)"
            return f"event {i + 1}: journal has [{have}], re-execution gives [{gave}]"
    return "events differ"  # pragma: no cover - only reached if != disagrees with itself


def verify_journal(
    journal: ArchivedJournal,
    symbol: str,
    spec: Instrument | None,
    step: Callable[[int], None] = lambda _n: None,
) -> Verdict:
    """Checksums, contiguous sequences, and re-execution in a fresh Engine against the events.

    Archived segments are checked too (header and body checksums, every record's own
    checksum, contiguity across the segment/LMDB boundary, and records held in both places
    after an interrupted `archive` must be identical). Reads up to the last seq committed
    when it starts (a live journal keeps growing).
    Re-execution stops at the first record it cannot apply (corrupt, missing); a determinism
    mismatch does not stop it (the engine's own events are what later records build on).
    """
    verdict = Verdict(symbol, journal.first_seq(), journal.last_seq())
    engine = Engine(spec) if spec is not None else None
    if engine is None:
        verdict.problem(0, f"{symbol} is not in the config: re-execution needs its instrument spec")
    if verdict.first_seq > 1:
        verdict.problem(
            verdict.first_seq,
            f"journal starts at seq {verdict.first_seq}: no archived segments hold the rest",
        )
        engine = None
    for seq, reason in overlap_problems(journal):
        verdict.problem(seq, f"archive and journal disagree: {reason}")
    expected = verdict.first_seq
    u = Units(None if spec is None else instrument_info(spec))
    for seq, item in records(journal, 1, verdict.last_seq):
        step(1)
        verdict.records_checked += 1
        if seq != expected:
            verdict.problem(seq, f"sequence gap: expected seq {expected}, found {seq}")
            engine = None
        expected = seq + 1
        if isinstance(item, CorruptRecord):
            verdict.problem(seq, f"checksum failure: {item.reason}")
            engine = None
            if isinstance(item, CorruptSegment):
                expected = item.resume_seq  # the whole segment is unreadable: one problem
            continue
        if engine is not None:
            events = engine.process(item.command)
            verdict.replayed += 1
            if events != item.events:
                verdict.problem(seq, f"determinism mismatch: {_difference(item.events, events, u)}")
    if engine is not None:
        verdict.state_hash = engine.state_hash()
    return verdict


@journal_group.command()
@click.argument("symbol", required=False)
@journal_options
def verify(source: Source, symbol: str | None) -> None:
    """Check every record (checksum, contiguous seqs) and re-execute it (determinism audit).

    Archived segments are checked too: their checksums, seqs contiguous across the archive
    and LMDB, and any record held in both places identical in both.

    A fresh engine processes every journaled command; its events must equal the journaled
    ones. Prints a summary per journal; exits 1 on any problem.
    """
    verdicts = []
    for sym in source.symbols(symbol):
        with source.open_archived(sym) as journal:
            first, last = journal.first_seq(), journal.last_seq()
            total = last - first + 1 if last else 0
            if total >= PROGRESS_MIN:
                err = sys.stderr
                with click.progressbar(length=total, label=f"verifying {sym}", file=err) as bar:
                    verdict = verify_journal(journal, sym, source.spec(sym), bar.update)
            else:
                verdict = verify_journal(journal, sym, source.spec(sym))
        verdicts.append(verdict)
        if not source.as_json:
            click.echo(_verdict_text(verdict))
    if source.as_json:
        docs = [_verdict_doc(v) for v in verdicts]
        click.echo(output.dumps(docs))
    if any(v.problems for v in verdicts):
        raise click.exceptions.Exit(EXIT_PROBLEM)


def _verdict_doc(v: Verdict) -> dict[str, object]:
    doc: dict[str, object] = dataclasses.asdict(v)
    doc["ok"] = v.problems == 0
    doc["first_problem"] = (
        None if v.first_problem is None else dict(zip(("seq", "reason"), v.first_problem, strict=True))
    )
    return doc


def _verdict_text(v: Verdict) -> str:
    span = f"seq {v.first_seq}..{v.last_seq}" if v.last_seq else "empty"
    head = f"{v.symbol}: {v.records_checked} records checked ({span}), {v.replayed} re-executed"
    state = f"state hash {v.state_hash}" if v.state_hash else "state hash: n/a (re-execution incomplete)"
    if v.first_problem is None:
        return f"{head}; OK: checksums, contiguous sequences, re-execution matches\n  {state}"
    seq, reason = v.first_problem
    return f"{head}; FAILED: {v.problems} problem(s); first at seq {seq}: {reason}\n  {state}"


# --- archive ----------------------------------------------------------------------------


def usable_checkpoint_seqs(
    store: CheckpointStore, spec: Instrument, at_most_seq: int, wanted: int
) -> list[int]:
    """Seqs of the newest `wanted` checkpoints of the instrument at or below `at_most_seq`
    that recovery could start from (intact, restorable, state hash matching), newest first."""
    found: list[int] = []
    bound = at_most_seq
    while len(found) < wanted and bound >= 0:
        snap = store.newest(spec.symbol, bound)
        if snap is None:
            break
        engine = Engine(spec)
        try:
            engine.restore(snap.state)
            usable = engine.state_hash_matches(snap.state_hash)
        except (ValueError, TypeError, AttributeError, KeyError):
            usable = False
        if usable:
            found.append(snap.seq)
        bound = snap.seq - 1
    return found


@journal_group.command("archive")
@click.argument("symbol", required=False)
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="newest records to leave in LMDB in any case (the newest one always stays).",
)
@click.option(
    "--checkpoints",
    "wanted",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="archive only what the N newest usable checkpoints all cover (with 2, recovery still"
    " has a starting point if the newest one is later found damaged).",
)
@click.option(
    "--segment-records",
    type=click.IntRange(min=1),
    default=SEGMENT_RECORDS,
    show_default=True,
    help="records per segment file at most.",
)
@click.option("--dry-run", is_flag=True, help="say what would be archived; change nothing.")
@journal_options
def archive_(
    source: Source, symbol: str | None, keep: int, wanted: int, segment_records: int, dry_run: bool
) -> None:
    """Move records that checkpoints cover from LMDB to compressed segment files.

    Only records at or below the seq of the Nth newest usable checkpoint (--checkpoints)
    move, so a matcher always recovers from a checkpoint and the journal's LMDB alone.
    Segments go to DATA_DIR/journal/SYMBOL.archive/ (written, fsynced, renamed) before the
    records leave LMDB; every `clob journal` command and `clob replay` read them as before.
    Safe while the daemon runs; an interrupted run is finished by the next one. The
    order-history index is caught up first. LMDB's file does not shrink: its freed pages
    are reused, so it stops growing. Exits 1 if an instrument could not be archived.
    """
    docs = []
    for sym in source.symbols(symbol):
        try:
            doc = _archive_one(source, sym, keep, wanted, segment_records, dry_run)
        except (ArchiveError, JournalError, HistoryError, OSError, lmdb.Error) as exc:
            doc = {"symbol": sym, "error": str(exc)}
        docs.append(doc)
        if not source.as_json:
            click.echo(_archive_text(doc))
    if source.as_json:
        click.echo(output.dumps(docs))
    if any("error" in d for d in docs):
        raise click.exceptions.Exit(EXIT_PROBLEM)


def _archive_one(
    source: Source, symbol: str, keep: int, wanted: int, segment_records: int, dry_run: bool
) -> dict[str, object]:
    spec = source.spec(symbol)
    if spec is None:
        raise ArchiveError(f"{symbol} is not in the config: its checkpoints cannot be checked")
    data_dir = source.journal_dir.parent
    with source.open_archived(symbol) as journal:
        last, live_first = journal.last_seq(), journal.live_first_seq()
        segments = journal.segments()
        archived_last = segments[-1].last_seq if segments else 0
        if not dry_run:
            # The index must hold what leaves LMDB: the snapshotter catches it up from LMDB.
            with HistoryIndex.in_data_dir(data_dir) as index:
                catch_up(index, journal, symbol)
    seqs: list[int] = []
    store_file = checkpoints_path(data_dir)
    if store_file.exists():
        try:
            with CheckpointStore(store_file, readonly=True) as store:
                seqs = usable_checkpoint_seqs(store, spec, last, wanted)
            if seqs and not dry_run:
                flush_store(store_file)  # what they cover may leave LMDB: they must not be undone
        except FileNotFoundError:  # the file holds no checkpoints yet
            seqs = []
    covered = seqs[wanted - 1] if len(seqs) >= wanted else 0
    through = max(0, min(covered, last - max(keep, 1)))
    doc: dict[str, object] = {
        "symbol": symbol,
        "checkpoint_seqs": seqs,
        "covered_seq": covered,
        "through_seq": through,
        "dry_run": dry_run,
    }
    start = max(archived_last + 1, live_first)
    if not covered:
        doc["note"] = f"fewer than {wanted} usable checkpoint(s) (found {len(seqs)}): nothing to archive"
    if dry_run:
        doc["would_archive"] = max(0, through - start + 1)
        doc["would_finish"] = max(0, min(archived_last, last - 1) - live_first + 1) if live_first else 0
        return doc
    if not covered:
        return doc
    result = archive_records(source.path(symbol), symbol, through, keep=keep, segment_records=segment_records)
    with source.open_archived(symbol) as journal:
        doc["lmdb_first_seq"], doc["lmdb_last_seq"] = journal.live_first_seq(), journal.last_seq()
    doc.update(
        archived=result.archived,
        discarded=result.discarded,
        segments=[seg.path.name for seg in result.segments],
        segment_bytes=sum(seg.size() for seg in result.segments),
    )
    if result.note:
        doc["note"] = result.note
    return doc


@journal_group.command("unarchive")
@click.argument("symbol")
@journal_options
def unarchive_(source: Source, symbol: str) -> None:
    """Put SYMBOL's archived records back into its LMDB journal (segments are kept).

    For when recovery must replay from before the journal's first record: every checkpoint
    at or above the archived range is lost or damaged, so the matcher refuses to start
    ("recovery needs a checkpoint at seq >= N"). Afterwards it replays the whole journal.
    Best with the daemon stopped. The next `archive` moves the records out again.
    """
    try:
        restored = unarchive_records(source.path(symbol))
    except (ArchiveError, JournalError, OSError, lmdb.Error) as exc:
        raise click.ClickException(f"{symbol}: NOT unarchived: {exc}") from exc
    with source.open_archived(symbol) as journal:
        first, last = journal.live_first_seq(), journal.last_seq()
    doc = {"symbol": symbol, "restored": restored, "lmdb_first_seq": first, "lmdb_last_seq": last}
    text = f"{symbol}: put {restored} archived record(s) back into LMDB, which now holds seq {first}..{last}"
    click.echo(output.dumps(doc) if source.as_json else text)


def _archive_text(doc: dict[str, object]) -> str:
    sym = doc["symbol"]
    if "error" in doc:
        return f"{sym}: NOT archived: {doc['error']}"
    if doc["dry_run"]:
        text = f"{sym}: would archive {doc['would_archive']} record(s), through seq {doc['through_seq']}"
        if doc["would_finish"]:
            text += f", and drop {doc['would_finish']} already archived from LMDB"
        return text + (f" ({doc['note']})" if "note" in doc else "")
    if "archived" not in doc or doc["archived"] == doc["discarded"] == 0:
        return f"{sym}: {doc.get('note', 'nothing to archive')}"
    segments = doc["segments"]
    assert isinstance(segments, list)
    parts = [f"{sym}: archived {doc['archived']} record(s) into {len(segments)} segment(s)"]
    if segments:
        parts.append(f" ({_size(doc['segment_bytes'])}), through seq {doc['through_seq']}")
    parts.append(f"; removed {doc['discarded']} from LMDB, which now holds seq")
    parts.append(f" {doc['lmdb_first_seq']}..{doc['lmdb_last_seq']}")
    if "note" in doc:
        parts.append(f" ({doc['note']})")
    return "".join(parts)


# --- export -----------------------------------------------------------------------------

_CSV_COLUMNS = (
    "symbol",
    "seq",
    "ts",
    "time",
    "command",
    "command_account",
    "event_no",
    "event",
    "order_id",
    "account",
    "client_order_id",
    "side",
    "price",
    "qty",
    "remaining",
    "order_type",
    "tif",
    "trade_id",
    "aggressor",
    "maker_order_id",
    "maker_account",
    "maker_remaining",
    "taker_order_id",
    "taker_account",
    "taker_remaining",
    "reason",
    "text",
    "priority_kept",
)


def _csv_rows(symbol: str, record: Record, u: Units) -> Iterator[list[object]]:
    head = [
        symbol,
        record.seq,
        record.ts,
        utc(record.ts),
        _COMMAND_NAMES[type(record.command)],
        record.command.account,
    ]
    if not record.events:  # keep the command in the file even if it changed nothing
        yield head + [0] + [""] * (len(_CSV_COLUMNS) - len(head) - 1)
    for i, event in enumerate(record.events, 1):
        cells: dict[str, object] = {"event_no": i, "event": _EVENT_NAMES[type(event)]}
        for name in event.__struct_fields__:
            value = getattr(event, name)
            if isinstance(value, IntEnum):
                cells[name] = _name(value)
            elif name in _PRICES:
                cells[name] = u.price(value)
            elif name in _QTYS:
                cells[name] = u.qty(value)
            else:
                cells[name] = value
        yield head + [cells.get(c, "") for c in _CSV_COLUMNS[len(head) :]]


@journal_group.command()
@click.argument("symbol")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), required=True)
@click.option(
    "--from", "from_seq", type=click.IntRange(min=1), default=1, help="first seq [default: the first]."
)
@click.option(
    "--to", "to_seq", type=click.IntRange(min=1), help="last seq [default: the last now committed]."
)
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    help="file [stdout].",
)
@journal_options
def export(source: Source, symbol: str, fmt: str, from_seq: int, to_seq: int | None, out: str) -> None:
    """Records for audit: jsonl (one record per line) or csv (one row per event).

    jsonl keeps integer units and adds `<field>_decimal` strings for prices and quantities;
    csv has decimals only. A corrupt record stops the export with exit 1.
    """
    inst = source.info(symbol)
    u = Units(inst)
    with source.open(symbol) as journal, click.open_file(out, "w", encoding="utf-8") as f:
        stream: IO[str] = f
        last = journal.last_seq() if to_seq is None else to_seq
        writer = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow(_CSV_COLUMNS)
        count = 0
        for seq, item in records(journal, from_seq, last):
            if isinstance(item, CorruptRecord):
                raise click.ClickException(
                    f"{symbol} seq {seq} is corrupt: {item.reason} (after {count} records)"
                )
            if writer is None:
                stream.write(output.dumps(record_doc(symbol, item, inst)) + "\n")
            else:
                writer.writerows(_csv_rows(symbol, item, u))
            count += 1
    if out != "-":
        click.echo(f"{count} records of {symbol} written to {os.fspath(out)}", err=True)
