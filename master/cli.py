"""Server-side commands of the ``rtgrid`` program: ``rtgrid up`` and ``rtgrid phantom``.

They plug into the client's CLI through the ``rtgrid.commands`` entry points, so the client never
imports the master.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import typer

from rtgrid.engines.logsetup import configure_logging

from .config import (
    IDLE_TIMEOUT_S,
    KEEPALIVE_S,
    MAX_ACTIVE_JOBS_PER_HOSPITAL,
    MAX_AUTH_FAILURES_PER_MINUTE,
    MAX_CASE_BYTES,
    MAX_CHUNK_BYTES,
    MAX_FILE_BYTES,
    MAX_OPEN_CASES_PER_HOSPITAL,
    MAX_OPEN_UPLOADS_PER_HOSPITAL,
    UPLOAD_EXPIRY_S,
    UPLOAD_IDLE_S,
    MasterConfig,
)
from .security.tls import TlsFiles, check_insecure_host
from .store.factory import POSTGRES_SCHEMES, check_store_location
from .server import Master


async def _run_embedded(config: MasterConfig, agents: int, agent_cpus: int, agent_tls: list[str],
                        log_format: str) -> None:
    master = Master(config)
    await master.start()
    ready = {"event": "ready", "target": master.address, "internal_target": master.internal_address,
             "tls": config.tls is not None, "data_dir": str(config.data_dir)}
    if config.metrics_port is not None:
        ready["metrics"] = f"{config.metrics_host}:{master.metrics_port}"
    print(json.dumps(ready), flush=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rtgrid.agent", "--master", master.internal_address, "--name", f"local-{i + 1}",
             "--cpus", str(agent_cpus), "--log-format", log_format, *agent_tls],
        )
        for i in range(agents)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)  # drain: finish running shards, then leave
    for proc in procs:
        await asyncio.to_thread(proc.wait, 60)
    await master.stop()


def up_command(
    port: int = typer.Option(50051, help="Public gRPC port, for hospitals (0 picks a free one)."),
    internal_port: int = typer.Option(50052, help="Mutual-TLS port for agents and operators (0 picks a free one)."),
    data: Path = typer.Option(Path("rtgrid-data"), help="Folder for the SQLite store and blobs."),
    store: str = typer.Option("", envvar="RTGRID_STORE",
                              help="The job store: a SQLite file, or postgresql://USER@HOST:PORT/DB "
                                   "(default: rtgrid.sqlite in --data)."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    ray_address: str = typer.Option(None, help="Join this Ray cluster instead of starting a local head."),
    agents: int = typer.Option(1, help="Local agents to start (0: none)."),
    agent_cpus: int = typer.Option(os.cpu_count() or 1, help="CPUs each local agent offers."),
    tls_cert: Path = typer.Option(None, envvar="RTGRID_TLS_CERT", help="The master's certificate (PEM)."),
    tls_key: Path = typer.Option(None, envvar="RTGRID_TLS_KEY", help="The master's private key (PEM)."),
    tls_ca: Path = typer.Option(None, envvar="RTGRID_TLS_CA", help="The CA that signs agent and operator certificates."),
    agent_cert: Path = typer.Option(None, help="Client certificate of the local agents (with TLS)."),
    agent_key: Path = typer.Option(None, help="Private key of the local agents (with TLS)."),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext without authentication; loopback only."),
    max_file_bytes: int = typer.Option(MAX_FILE_BYTES, help="Largest file one upload may carry."),
    max_case_bytes: int = typer.Option(MAX_CASE_BYTES, help="Most bytes one case may hold."),
    max_chunk_bytes: int = typer.Option(MAX_CHUNK_BYTES, help="Largest upload chunk (sets the gRPC message limit)."),
    max_active_jobs: int = typer.Option(MAX_ACTIVE_JOBS_PER_HOSPITAL, help="Queued plus running jobs per hospital."),
    max_open_cases: int = typer.Option(MAX_OPEN_CASES_PER_HOSPITAL, min=1, help="Uncommitted cases per hospital."),
    max_open_uploads: int = typer.Option(MAX_OPEN_UPLOADS_PER_HOSPITAL, min=1,
                                         help="Started, unfinished uploads per hospital."),
    upload_idle_s: float = typer.Option(UPLOAD_IDLE_S, min=0.1, help="Close an upload stream silent this long (s)."),
    upload_expiry_s: float = typer.Option(UPLOAD_EXPIRY_S, min=0.1,
                                          help="Remove an upload with no chunk for this long (s), with its partial file."),
    idle_timeout_s: float = typer.Option(IDLE_TIMEOUT_S, min=0.1, help="Close connections with no call this long (s)."),
    keepalive_s: float = typer.Option(KEEPALIVE_S, min=1.0, help="Ping connections this often (s); drop the dead."),
    max_auth_failures: int = typer.Option(MAX_AUTH_FAILURES_PER_MINUTE, min=1,
                                          help="Failed authentications per address or token prefix and minute before "
                                               "they are rate-limited."),
    metrics_port: int = typer.Option(None, help="Serve Prometheus /metrics on this port (0 picks a free one)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address of the /metrics endpoint."),
    log_format: str = typer.Option("text", help="Log lines on stderr: text or json (with job and shard ids)."),
    require_approval: bool = typer.Option(False, "--require-approval",
                                          help="Plans leave the grid (download, gateway, devices) only once approved."),
) -> None:
    """Start the embedded grid: master + local Ray head + SQLite + blob folder + local agent(s).

    Serves TLS with --tls-cert/--tls-key/--tls-ca (make them with `rtgrid certs`), or plaintext on
    a loopback address with --insecure. Prints one JSON line with the targets once ready; runs
    until Ctrl-C or SIGTERM.
    """
    try:
        configure_logging("master", log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    try:
        check_store_location(store)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--store") from None
    if store and not store.startswith(POSTGRES_SCHEMES):
        store = str(Path(store).resolve())
    tls_given = [p for p in (tls_cert, tls_key, tls_ca) if p is not None]
    if insecure and tls_given:
        raise typer.BadParameter("give either --insecure or the TLS files, not both", param_hint="--insecure")
    if not insecure and len(tls_given) != 3:
        raise typer.BadParameter("give --tls-cert, --tls-key and --tls-ca (make them with `rtgrid certs`), or "
                                 "--insecure to serve plaintext on a loopback address", param_hint="--tls-cert")
    if insecure:
        try:
            check_insecure_host(host)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--insecure") from None
    agent_tls = ["--insecure"]
    if not insecure:
        if agents and (agent_cert is None or agent_key is None):
            raise typer.BadParameter("local agents need --agent-cert and --agent-key (or --agents 0)",
                                     param_hint="--agent-cert")
        agent_tls = ["--ca", str(tls_ca.resolve()), *(["--cert", str(agent_cert.resolve()), "--key",
                                                     str(agent_key.resolve())] if agents else [])]
    config = MasterConfig(
        data_dir=data.resolve(), host=host, port=port, ray_address=ray_address, internal_port=internal_port,
        tls=None if insecure else TlsFiles(tls_cert.resolve(), tls_key.resolve(), tls_ca.resolve()),
        max_file_bytes=max_file_bytes, max_case_bytes=max_case_bytes, max_chunk_bytes=max_chunk_bytes,
        max_active_jobs_per_hospital=max_active_jobs, metrics_host=metrics_host, metrics_port=metrics_port,
        max_open_cases_per_hospital=max_open_cases, max_open_uploads_per_hospital=max_open_uploads,
        upload_idle_s=upload_idle_s, upload_expiry_s=upload_expiry_s, idle_timeout_s=idle_timeout_s,
        keepalive_s=keepalive_s, max_auth_failures_per_minute=max_auth_failures, store=store,
        require_approval=require_approval,
    )
    asyncio.run(_run_embedded(config, agents, agent_cpus, agent_tls, log_format))


def phantom_command(
    out: Path = typer.Option(Path("phantom-case"), help="Folder to write the CT series and ground truth into."),
    slices: int = typer.Option(64, help="Number of axial slices."),
    size: int = typer.Option(256, help="Rows and columns per slice."),
    seed: int = typer.Option(0, help="Random seed of the CT noise."),
) -> None:
    """Write a digital phantom patient: a DICOM CT series with exact ground-truth labels, the
    targets and organs at risk drawn by hand (``manual/RS.manual.dcm``) and a medical order
    (``manual/order.yaml``)."""
    from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs

    spacing = 500.0 / size  # a 50 cm field of view, like a planning CT
    shape, spacing_mm = (slices, size, size), (spacing, spacing, 3.0)
    case = write_phantom_case(out, shape=shape, spacing_mm=spacing_mm, seed=seed)
    rtstruct, order = write_plan_inputs(case, make_phantom(shape, spacing_mm, seed), out / "manual")
    print(json.dumps({"ct_dir": str(case.ct_dir), "ground_truth": str(case.ground_truth_path),
                      "rtstruct": str(rtstruct), "order": str(order)}))
