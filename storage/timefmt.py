"""Timestamps in the original server's format: ISO-8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_last_second = -1
_last_prefix = ""


def iso_utc(seconds: float) -> str:
    """``1750748534.663`` → ``2025-06-24T07:02:14.663Z`` (JavaScript's ``Date.toISOString``).

    Called for every message: the formatted second is cached, so most calls only format milliseconds.
    """
    global _last_second, _last_prefix  # noqa: PLW0603 -- a one-entry cache
    ms = int(seconds * 1000)
    whole, frac = divmod(ms, 1000)
    if whole != _last_second:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _last_second = whole
    return f"{_last_prefix}.{frac:03d}Z"


def parse_date_ms(text: str) -> int | None:
    """Milliseconds since the epoch for an ISO-8601 date or date-time; None when it cannot be parsed.

    A date-time without an offset is read as UTC (JavaScript would use the server's local zone; our
    server runs in UTC). Unparseable input gives None, and the caller treats it as JavaScript's
    ``Invalid Date``: every comparison with it is false.
    """
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)
