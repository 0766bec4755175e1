"""Server-side commands (``rtgrid up``, ``agent``, ``train-seg`` ...) in the one ``rtgrid`` program.

They come from the ``rtgrid.commands`` entry points, installed with ``rtgrid[server]``. Loading one
imports the master or the agent (Ray, torch: seconds), so a client command loads none, a server
command only its own, and ``--help`` none at all: it lists them with the first paragraph of their
docstring, read from the source without importing it. On a thin install (no ``[server]``) a
server command ends in one line naming what to install, not a traceback.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib.metadata import EntryPoint, entry_points

import typer

from .output import EXIT_USAGE, fail

GROUP = "rtgrid.commands"
SERVER_EXTRA = "pip install 'rtgrid[server]'"
# What a server command cannot run without; any one missing means a thin install.
SERVER_MODULES = ("ray", "torch", "scipy", "SimpleITK")


def server_commands() -> dict[str, EntryPoint]:
    """The installed server commands by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def missing_server_module() -> str | None:
    """The first of ``SERVER_MODULES`` that cannot be imported here (None: all there)."""
    for name in SERVER_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def require_server(command: str) -> None:
    """End ``rtgrid COMMAND`` with one line and exit code 2 when the server side is not installed."""
    missing = missing_server_module()
    if missing is not None:
        fail(f"`rtgrid {command}` runs the grid's server side, which is not installed here (no module "
             f"{missing!r}): {SERVER_EXTRA}", EXIT_USAGE)


def _summary(ep: EntryPoint) -> str:
    """The first paragraph of the command function's docstring, read from its source file (not imported)."""
    fallback = f"Server command (needs {SERVER_EXTRA})."
    try:
        spec = importlib.util.find_spec(ep.module)
        if spec is None or not spec.origin:
            return fallback
        with open(spec.origin, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (ImportError, OSError, SyntaxError, ValueError):
        return fallback
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == ep.attr:
            doc = ast.get_docstring(node)
            return " ".join(doc.split("\n\n")[0].split()) if doc else fallback  # the first paragraph
    return fallback


def list_for_help(app: typer.Typer) -> None:
    """Add every server command to ``app`` by name and summary only, for ``--help`` to list."""
    for name, ep in server_commands().items():
        app.command(name, help=_summary(ep), add_help_option=False)(lambda: None)


def register(app: typer.Typer, name: str) -> None:
    """Load the server command ``name`` into ``app``; on a thin install end with one line."""
    ep = server_commands()[name]
    try:
        command = ep.load()
    except ImportError as exc:  # a thin SDK install has no server parts
        missing = exc.name if isinstance(exc, ModuleNotFoundError) and exc.name else missing_server_module()
        if missing is None:  # everything is installed: a real error, shown as one
            raise
        fail(f"`rtgrid {name}` runs the grid's server side, which is not installed here (no module {missing!r}): "
             f"{SERVER_EXTRA}", EXIT_USAGE)
    app.command(name)(command)
