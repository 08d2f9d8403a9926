"""Persistence for minitalk-trio: an engine interface and its implementations.

The rest of the server talks to a :class:`~storage.engine.StorageEngine`; it never touches SQL.

Exception tree::

    StorageError                 anything the storage layer raises on purpose
    ├── StorageClosedError       the engine is not running (not started yet, or shut down): our fault
    ├── StorageUnavailableError  the database refused for now (locked, disk full, I/O error): retry later
    ├── SchemaTooNewError        the database was written by a newer server: upgrade the server
    ├── DatabaseInUseError       another process serves this SQLite file: SQLite serves one process
    └── UnsupportedDatabaseError the DATABASE_URL names an engine this build cannot open: config fault
"""

from storage.engine import StorageEngine
from storage.errors import StorageClosedError, StorageError, StorageUnavailableError, UnsupportedDatabaseError
from storage.open import open_storage

__all__ = [
    "StorageClosedError",
    "StorageEngine",
    "StorageError",
    "StorageUnavailableError",
    "UnsupportedDatabaseError",
    "open_storage",
]
