"""How the CLI reaches the master: ``rtgrid --ca ... --token ... COMMAND`` or the environment.

Hospitals give the CA that signed the master's certificate and their API token; operators give a
client certificate and key and the master's internal port (``--admin-target``). Every value falls
back to its environment variable (``RTGRID_CA``, ``RTGRID_TOKEN``, ``RTGRID_CERT``,
``RTGRID_KEY``, ``RTGRID_ADMIN_TARGET``), read by the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer

from .output import EXIT_UNREACHABLE, fail

if TYPE_CHECKING:
    from ..sdk import Client

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass
class Connection:
    ca: Path | None = None
    token: str | None = None
    cert: Path | None = None
    key: Path | None = None
    admin_target: str | None = None


_given = Connection()


def rtgrid_version() -> str:
    """The installed rtgrid's version."""
    try:
        return version("rtgrid")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"rtgrid {rtgrid_version()}")
        raise typer.Exit(0)


def connection_options(
    ca: Path = typer.Option(None, "--ca", envvar="RTGRID_CA", help="CA certificate of the master (PEM): TLS."),
    token: str = typer.Option(None, "--token", envvar="RTGRID_TOKEN", help="The hospital's API token."),
    cert: Path = typer.Option(None, "--cert", envvar="RTGRID_CERT", help="Operator client certificate (PEM)."),
    key: Path = typer.Option(None, "--key", envvar="RTGRID_KEY", help="Operator private key (PEM)."),
    admin_target: str = typer.Option(None, "--admin-target", envvar="RTGRID_ADMIN_TARGET",
                                     help="The master's internal HOST:PORT, for `rtgrid admin`."),
    _version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                  help="Print rtgrid's version and exit."),
) -> None:
    """Connection options shared by every command (put them before the command)."""
    for f in fields(Connection):
        setattr(_given, f.name, locals()[f.name])


def client(target: str | None) -> "Client":
    """A client for ``target`` with the connection options given on the command line, connected.

    An unreachable master ends the command within ``CONNECT_TIMEOUT_S`` with one line and exit
    code 4; once connected, transient drops (a master restarting mid-job) are retried by the SDK.
    """
    from ..sdk import CONNECT_TIMEOUT_S, Client, MasterUnreachable  # grpc loads only when a command runs

    made = Client(target or DEFAULT_TARGET, ca=_given.ca, token=_given.token, cert=_given.cert, key=_given.key,
                  admin_target=_given.admin_target)
    # `rtgrid admin ...` talks on the admin channel (the master's internal port).
    context = click.get_current_context(silent=True)
    admin = context is not None and "admin" in context.command_path.split()[1:2]
    try:
        made.wait_ready(CONNECT_TIMEOUT_S, admin=admin)
    except MasterUnreachable as exc:
        made.close()
        fail(str(exc), EXIT_UNREACHABLE)
    return made
