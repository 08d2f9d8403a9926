"""Choose a storage engine from a database URL; the engine's options travel in the URL's query.

- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite://:memory:``, or a bare path:
  the embedded engine. Options: ``synchronous`` (``FULL`` default, ``NORMAL``, ``OFF``, ``EXTRA``),
  ``busy_timeout`` (seconds a write waits for another process's lock; default 5).
- ``postgresql://user:password@host:port/db`` (or ``postgres://``): the production engine. Options:
  ``pool_size`` (read connections beside the writer; default 4), ``connect_timeout`` (seconds; default 5),
  ``command_timeout`` (seconds a statement may take before the call fails as unavailable; default 30); any
  other option (``sslmode``, ``application_name``, ...) goes to the driver as libpq would read it.

Why in the URL: one setting (``DATABASE_URL``) says everything about where and how data is stored, and the
server's config never learns an engine's private knobs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast, get_args
from urllib.parse import parse_qsl, urlencode

from storage.engine import StorageEngine
from storage.errors import UnsupportedDatabaseError
from storage.postgres.engine import PostgresEngine
from storage.sqlite.engine import SqliteEngine
from storage.sqlite.store import Synchronous
from storage.urls import redact

__all__ = ["DEFAULT_DATABASE", "is_postgres_url", "open_storage", "redact", "sqlite_path"]

DEFAULT_DATABASE = "sqlite:///data/minitalk.db"

T = TypeVar("T")


def _split_query(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its query, and the query's options (a repeated option is an error)."""
    base, _, query = url.partition("?")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in options:
            raise UnsupportedDatabaseError(f"database option {key!r} is given twice")
        options[key] = value
    return base, options


def _option(options: dict[str, str], key: str, parse: Callable[[str], T], default: T, what: str) -> T:
    raw = options.pop(key, None)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise UnsupportedDatabaseError(f"database option {key}={raw!r}: expected {what}") from None


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < 86_400:
        raise ValueError(raw)
    return value


def _synchronous(raw: str) -> Synchronous:
    value = raw.upper()
    if value not in get_args(Synchronous):
        raise ValueError(raw)
    return cast(Synchronous, value)


def _pool_size(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 100:
        raise ValueError(raw)
    return value


def _refuse_unknown(options: dict[str, str], scheme: str) -> None:
    if options:
        raise UnsupportedDatabaseError(
            f"unknown {scheme} database option(s): {', '.join(sorted(options))} (see storage/open.py)"
        )


def sqlite_path(url: str) -> str | None:
    """The file path of an SQLite URL (``sqlite:///rel/path``, ``sqlite:////abs/path``, ``sqlite://:memory:``),
    or of a bare path; None for any other scheme. The query, if any, is not part of the path."""
    base = url.partition("?")[0]
    if base.startswith("sqlite://"):
        rest = base.removeprefix("sqlite://")
        # Three slashes start a relative path, four an absolute one (the SQLAlchemy convention).
        return rest[1:] if rest.startswith("/") else rest
    if "://" in base:
        return None
    return base


def is_postgres_url(url: str) -> bool:
    """Whether the URL names PostgreSQL (``postgresql://`` or ``postgres://``): a database several processes share."""
    return url.split("://", 1)[0].lower() in ("postgresql", "postgres") and "://" in url


def open_storage(url: str) -> StorageEngine:
    """The engine the URL names, configured by its query options. Raises UnsupportedDatabaseError for an
    unknown scheme or option, before anything is opened."""
    base, options = _split_query(url)
    path = sqlite_path(base)
    if path is not None:
        synchronous = _synchronous_option(options)
        busy_timeout = _option(options, "busy_timeout", _seconds, 5.0, "seconds")
        _refuse_unknown(options, "sqlite")
        return SqliteEngine(path, synchronous=synchronous, busy_timeout=busy_timeout)
    if is_postgres_url(base):
        pool_size = _option(options, "pool_size", _pool_size, 4, "an integer from 1 to 100")
        connect_timeout = _option(options, "connect_timeout", _seconds, 5.0, "seconds")
        command_timeout = _option(options, "command_timeout", _seconds, 30.0, "seconds")
        # Anything else (sslmode, application_name, ...) is libpq's: the driver reads it from the DSN.
        dsn = base + ("?" + urlencode(options) if options else "")
        return PostgresEngine(
            dsn, pool_size=pool_size, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
    scheme = base.split("://", 1)[0].lower()
    raise UnsupportedDatabaseError(
        f"database scheme {scheme!r} is not supported; use sqlite:///path/to/file.db or"
        " postgresql://user:password@host:port/database"
    )


def _synchronous_option(options: dict[str, str]) -> Synchronous:
    default: Synchronous = "FULL"
    return _option(options, "synchronous", _synchronous, default, "FULL, NORMAL, OFF or EXTRA")
