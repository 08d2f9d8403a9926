"""The storage layer's exceptions (the tree is drawn in ``storage/__init__.py``)."""


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class StorageClosedError(StorageError):
    """The engine is not running: it was never started, or it has shut down. Start it with ``run``."""


class UnsupportedDatabaseError(StorageError):
    """The database URL names an engine this build cannot open."""


class StorageUnavailableError(StorageError):
    """The database refused a call for now (locked by another writer, disk full, I/O error).

    Nothing was changed; the same call may succeed later, so the server answers 503 with Retry-After
    rather than 500. Engines raise this instead of their driver's errors, so callers never import a driver.
    """


class SchemaTooNewError(StorageError):
    """The database was written by a newer minitalk-trio; it is not touched. Upgrade the server."""


class DatabaseInUseError(StorageError):
    """Another process serves this SQLite database: SQLite serves one process (several need PostgreSQL)."""
