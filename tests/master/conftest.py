"""Fixtures of the master's unit tests: a PostgreSQL server for the store tests."""

from __future__ import annotations

import pytest

from tests.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One throwaway PostgreSQL server for the session (skipped without PostgreSQL, failed in CI)."""
    with running_postgres() as server:
        yield server
