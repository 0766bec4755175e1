"""``rtgrid agent``: run an agent daemon on this box."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import typer

from rtgrid.engines.parallel import ENGINE_THREADS_ENV
from rtgrid.engines.logsetup import configure_logging

from .daemon import DEFAULT_OBJECT_STORE_MB, Agent, AgentOptions
from .models import DEFAULT_CACHE


def agent_command(
    master: str = typer.Option(None, "--master", envvar="RTGRID_TARGET", help="Master HOST:PORT."),
    name: str = typer.Option(None, help="Name shown to operators (default: host name)."),
    cpus: int = typer.Option(os.cpu_count() or 1, help="CPUs this agent offers."),
    slots: int = typer.Option(0, help="Shards at once (default: its CPUs)."),
    node_ip: str = typer.Option("127.0.0.1", help="Address of this box that the Ray cluster reaches."),
    object_store_mb: int = typer.Option(DEFAULT_OBJECT_STORE_MB, help="Ray object store size of this node (MiB)."),
    model_cache: str = typer.Option(str(DEFAULT_CACHE), envvar="RTGRID_MODEL_CACHE",
                                    help="Folder of segmentation model packages fetched from the master (by hash)."),
    ca: Path = typer.Option(None, envvar="RTGRID_CA", help="CA certificate of the grid (PEM)."),
    cert: Path = typer.Option(None, envvar="RTGRID_CERT", help="This agent's client certificate (PEM)."),
    key: Path = typer.Option(None, envvar="RTGRID_KEY", help="This agent's private key (PEM)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext, to a master started with --insecure."),
    metrics_port: int = typer.Option(None, help="Serve Prometheus /metrics on this port (0 picks a free one)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address of the /metrics endpoint."),
    log_format: str = typer.Option("text", help="Log lines on stderr: text or json (with the agent id)."),
) -> None:
    """Register with the master's internal port (mutual TLS), join its Ray cluster and run shards
    until drained (SIGTERM drains)."""
    if not master:
        raise typer.BadParameter("give --master HOST:PORT or set RTGRID_TARGET", param_hint="--master")
    if insecure == (cert is not None):
        raise typer.BadParameter("give --cert and --key (with --ca) for mutual TLS, or --insecure", param_hint="--cert")
    if cert is not None and key is None:
        raise typer.BadParameter("--cert needs --key", param_hint="--key")
    try:
        configure_logging("agent", log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    options = AgentOptions(master=master, cpus=cpus, slots=slots, node_ip=node_ip, object_store_mb=object_store_mb,
                           model_cache=model_cache, metrics_host=metrics_host, metrics_port=metrics_port,
                           ca=ca, cert=cert, key=key, **({"name": name} if name else {}))
    # The dose engine's hot loops use the CPUs this agent offers: its shards (Ray workers started
    # by this process) inherit the variable; an operator's own setting wins.
    os.environ.setdefault(ENGINE_THREADS_ENV, str(max(1, cpus)))
    agent = Agent(options)
    signal.signal(signal.SIGTERM, agent.request_drain)
    signal.signal(signal.SIGINT, agent.request_drain)
    raise typer.Exit(agent.run())
