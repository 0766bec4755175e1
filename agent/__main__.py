"""``python -m rtgrid.agent``: the agent daemon (what ``rtgrid agent`` runs)."""

import typer

from .cli import agent_command

typer.run(agent_command)
