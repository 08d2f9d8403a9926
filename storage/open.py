"""Choose a storage engine from a database URL."""

from __future__ import annotations

from storage.engine import StorageEngine
from storage.errors import UnsupportedDatabaseError
from storage.sqlite import SqliteEngine
from storage.sqlite_store import Synchronous

DEFAULT_DATABASE = "sqlite:///data/minitalk.db"


def sqlite_path(url: str) -> str | None:
    """The file path of an SQLite URL (``sqlite:///rel/path``, ``sqlite:////abs/path``, ``sqlite://:memory:``),
    or of a bare path; None for any other scheme."""
    if url.startswith("sqlite://"):
        rest = url.removeprefix("sqlite://")
        # Three slashes start a relative path, four an absolute one (the SQLAlchemy convention).
        return rest[1:] if rest.startswith("/") else rest
    if "://" in url:
        return None
    return url


def open_storage(
    url: str, *, sqlite_synchronous: Synchronous = "FULL", sqlite_busy_timeout: float = 5.0
) -> StorageEngine:
    path = sqlite_path(url)
    if path is not None:
        return SqliteEngine(path, synchronous=sqlite_synchronous, busy_timeout=sqlite_busy_timeout)
    scheme = url.split("://", 1)[0]
    raise UnsupportedDatabaseError(
        f"database scheme {scheme!r} is not supported by this build; use sqlite:///path/to/file.db"
        " (PostgreSQL support is planned)"
    )
