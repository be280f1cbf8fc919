"""The per-instrument append-only journal: the audit trail and the source of truth."""

from journal.archive import ArchivedJournal, CorruptSegment, archive_dir_for
from journal.errors import CorruptRecord, JournalError, JournalFull, JournalWriteError, SequenceGap
from journal.record import Record, decode, encode, key, seq_of
from journal.store import Journal, journal_path

__all__ = [
    "ArchivedJournal",
    "CorruptRecord",
    "CorruptSegment",
    "Journal",
    "JournalError",
    "JournalFull",
    "JournalWriteError",
    "Record",
    "SequenceGap",
    "archive_dir_for",
    "decode",
    "encode",
    "journal_path",
    "key",
    "seq_of",
]
