"""SQLite (WAL) implementation of the store: the embedded default.

The SQL itself is shared with PostgreSQL (``sql.py``); this module opens the file, keeps it
private, and does SQLite's schema bookkeeping (``PRAGMA user_version``). Columns are untyped, as
in every store made so far.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

from .records import PENDING
from .sql import MAX_STORED_TEXT_CHARS, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION, SqlStore


def _private(path: Path) -> None:
    """The store holds the audit, orders, case labels and token digests: only the master's user
    may read it. The folder is made 0700, the database (and SQLite's WAL and shm files, which
    take the database's mode) 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if f.exists():
            os.chmod(f, 0o600)


class SqliteStore(SqlStore):
    """The job store in one SQLite file.

    Parameters
    ----------
    path : Path
        The database file; created with its folder when missing.
    """

    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        _private(path)
        super().__init__(sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30))
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._create_schema(str(path))

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write

    def _column_ddl(self, field: dataclasses.Field) -> str:
        return f'"{field.name}"'

    def _schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def _set_schema_version(self, version: int) -> None:
        self._conn.execute(f"PRAGMA user_version={int(version)}")

    def _existing_columns(self, table: str) -> set[str]:
        return {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}


__all__ = ["SqliteStore", "PENDING", "MAX_STORED_TEXT_CHARS", "SCHEMA_VERSION", "OLDEST_SCHEMA_VERSION"]
