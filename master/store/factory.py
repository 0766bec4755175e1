"""Open the job store a deployment names: a SQLite file (the embedded default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from .base import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def check_store_location(location: str) -> None:
    """Raise ``ValueError`` unless ``location`` is a file path or a PostgreSQL URL.

    The message names the scheme only: a URL may carry a password.
    """
    if "://" in location and not location.startswith(POSTGRES_SCHEMES):
        scheme = location.split("://", 1)[0]
        raise ValueError(f"store {scheme}://...: give a SQLite file path or a postgresql://USER@HOST:PORT/DB URL")


def open_store(location: str | Path) -> Store:
    """The store at ``location``.

    Parameters
    ----------
    location : str | Path
        ``postgresql://USER[:PASSWORD]@HOST:PORT/DB`` for PostgreSQL; anything else is the path of
        a SQLite file (created with its folder when missing).

    Raises
    ------
    ValueError
        A URL of another database.
    psycopg.OperationalError
        PostgreSQL cannot be reached or refuses the login.
    """
    text = str(location)
    check_store_location(text)
    if text.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresStore  # psycopg is needed only here

        return PostgresStore(text)
    from .sqlite import SqliteStore

    return SqliteStore(Path(text))
