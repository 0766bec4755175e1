"""A throwaway PostgreSQL server for tests: Debian's server binaries (``make tools`` installs the
``postgresql`` package) on a temporary data folder, listening on 127.0.0.1 on a free port with its
unix socket in that folder; stopped and removed at the end.

initdb refuses to run as root, so as root the server runs as ``nobody``, owning the folder.
A machine without PostgreSQL skips the tests that need it, except in CI (``CI`` set), where that
is a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

UNPRIVILEGED_USER = "nobody"
SUPERUSER = "rtgrid"
START_TIMEOUT_S = 60


def _bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
             if Path(p).with_name("pg_ctl").exists()]
    return max(found, key=lambda p: int(p.parent.name), default=None) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A running server; :meth:`new_database` gives each test its own database."""

    def __init__(self, bin_dir: Path, folder: Path, port: int, as_user: list[str]) -> None:
        self.bin_dir, self.folder, self.port, self._as_user = bin_dir, folder, port, as_user
        self.data_dir = folder / "data"
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server (``start``, ``stop``, ``restart``) and wait for it."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        subprocess.run([*self._as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l",
                        str(self.folder / "server.log"), "-w", "-t", str(START_TIMEOUT_S), "-o", options,
                        "-m", "fast", *args], check=True, stdout=subprocess.DEVNULL, timeout=START_TIMEOUT_S + 30)

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server for the tests, skip (fail in CI) when PostgreSQL is not installed."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        message = ("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) are missing: "
                   "`make tools` installs Debian's postgresql package")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="rtgrid-pg-"))  # not under pytest's 0700 root-only folder
    if os.geteuid() == 0:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", UNPRIVILEGED_USER, "--"]
    server = PostgresServer(bin_dir, folder, _free_port(), as_user)
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER,
                        "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, timeout=120)
        server.pg_ctl("start")
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            server.pg_ctl("stop")
        shutil.rmtree(folder, ignore_errors=True)
