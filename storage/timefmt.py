"""Timestamps in the original server's format: ISO-8601 UTC with milliseconds and ``Z``."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)

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
    # Integer timedelta arithmetic rather than ``timestamp() * 1000``: exact to the millisecond at any date
    # (a float is not, far from 1970), floored as JavaScript's Date floors, and it cannot raise. Every
    # result lies within ±2^48 ms, so SQLite binds it as it is.
    offset = parsed.utcoffset() or timedelta(0)
    return (parsed.replace(tzinfo=None) - _EPOCH - offset) // _MS
