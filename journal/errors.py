"""Every error the journal raises, defined once. All derive from ``JournalError``.

A matcher treats any ``JournalError`` from ``append`` as "not durable": it must not ack the
batch (reject with ``STORAGE_FAILURE`` or stop), because nothing of that batch was written.
"""

from __future__ import annotations


class JournalError(Exception):
    """Base of every journal error."""


class CorruptRecord(JournalError):
    """A stored record failed its checksum, is truncated, or does not decode."""

    def __init__(self, seq_hint: int | None, reason: str) -> None:
        super().__init__(f"journal record {seq_hint if seq_hint is not None else '?'}: {reason}")
        self.seq_hint = seq_hint
        self.reason = reason


class SequenceGap(JournalError):
    """A batch does not continue the journal exactly (gap, duplicate or disorder)."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"journal sequence: expected {expected}, got {got}")
        self.expected = expected
        self.got = got


class JournalFull(JournalError):
    """The map cannot grow any further (``max_map_size`` reached); nothing was written."""

    def __init__(self, map_size: int, max_map_size: int) -> None:
        super().__init__(f"journal full: map size {map_size} is at its maximum {max_map_size}")
        self.map_size = map_size
        self.max_map_size = max_map_size


class JournalWriteError(JournalError):
    """The write transaction failed (disk full, I/O error, read-only journal ...).

    The transaction was aborted, so nothing of the batch was written; the ``Journal`` stays
    usable and the same sequence may be appended again once the cause is gone.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"journal write failed: {reason}")
        self.reason = reason
