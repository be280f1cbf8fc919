"""Structured logs to stderr (journald picks them up): one line per significant event.

`log(logger, "event_name", key=value, ...)` writes `event=event_name key=value ...` (or one
JSON object per line with log_format = "json"). Never one line per order: the order path
logs only failures and summaries.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FORMAT = {"value": "kv"}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "proc": record.name.removeprefix("clobd."),
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        if _FORMAT["value"] == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_kv(v)}" for k, v in fields.items())


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def setup(level: str = "info", fmt: str = "kv") -> None:
    """Configure the root `clobd` logger for this process (idempotent)."""
    _FORMAT["value"] = fmt
    root = logging.getLogger("clobd")
    root.setLevel(level.upper())
    root.propagate = False
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        root.addHandler(handler)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"clobd.{name}")


def log(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
