"""Logging set-up: text or JSON lines, and repeated warnings rate-limited.

Why JSON: an operator's log pipeline (the original's runs on Kubernetes) searches by level and by field; a
JSON line per record carries the timestamp, level, logger and message, and the session, user, room, address
and the like wherever the code knows them (passed as ``extra={...}``). Text stays the default for a person
at a terminal.

Why rate-limited: a fault that repeats (a database down, a flood of bad packets) must not write a line per
occurrence. Records at WARNING and above with the same logger and message template are let through
``burst`` times per ``window`` seconds; the first one after a quiet window says how many were suppressed.
INFO lines (one per connection, one per REST request) are not limited: they are the record of traffic.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Literal

import msgspec

LogFormat = Literal["text", "json"]

# Attributes a record may carry (``extra=``) that JSON lines include, in this order.
CONTEXT_FIELDS = (
    "session",
    "user",
    "room",
    "address",
    "transport",
    "reason",
    "duration_s",
    "method",
    "path",
    "status",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``,
    the known context fields that are set, and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


class RepeatFilter(logging.Filter):
    """Let a repeating warning through ``burst`` times per ``window`` seconds (see the module docstring)."""

    def __init__(self, *, burst: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._burst = burst
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}  # key → (window start, let, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        start, let, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self._window:
            start, let = now, 0
            if dropped:
                record.msg = f"{record.msg} ({dropped} similar suppressed in the last {self._window:g} s)"
                dropped = 0
        if let >= self._burst:
            self._seen[key] = (start, let, dropped + 1)
            return False
        if len(self._seen) > 10_000:  # many distinct templates: start afresh rather than grow
            self._seen.clear()
        self._seen[key] = (start, let + 1, dropped)
        return True


def configure(level: str, fmt: LogFormat) -> None:
    """The root logger: one stderr handler in the chosen format, repeated warnings rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
