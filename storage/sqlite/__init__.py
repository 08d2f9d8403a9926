"""The embedded SQLite engine: zero set-up, one process (a writer thread and a reader thread on one file)."""
