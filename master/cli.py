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

from .config import MasterConfig
from .server import Master


async def _run_embedded(config: MasterConfig, agents: int, agent_cpus: int, log_format: str) -> None:
    master = Master(config)
    await master.start()
    ready = {"event": "ready", "target": master.address, "data_dir": str(config.data_dir)}
    if config.metrics_port is not None:
        ready["metrics"] = f"{config.metrics_host}:{master.metrics_port}"
    print(json.dumps(ready), flush=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rtgrid.agent", "--master", master.address, "--name", f"local-{i + 1}",
             "--cpus", str(agent_cpus), "--log-format", log_format],
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
    port: int = typer.Option(50051, help="gRPC port on 127.0.0.1 (0 picks a free one)."),
    data: Path = typer.Option(Path("rtgrid-data"), help="Folder for the SQLite store and blobs."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    ray_address: str = typer.Option(None, help="Join this Ray cluster instead of starting a local head."),
    agents: int = typer.Option(1, help="Local agents to start (0: none)."),
    agent_cpus: int = typer.Option(os.cpu_count() or 1, help="CPUs each local agent offers."),
    metrics_port: int = typer.Option(None, help="Serve Prometheus /metrics on this port (0 picks a free one)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address of the /metrics endpoint."),
    log_format: str = typer.Option("text", help="Log lines on stderr: text or json (with job and shard ids)."),
) -> None:
    """Start the embedded grid: master + local Ray head + SQLite + blob folder + local agent(s).

    Prints one JSON line with the target once ready; runs until Ctrl-C or SIGTERM.
    """
    try:
        configure_logging("master", log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    config = MasterConfig(data_dir=data.resolve(), host=host, port=port, ray_address=ray_address,
                          metrics_host=metrics_host, metrics_port=metrics_port)
    asyncio.run(_run_embedded(config, agents, agent_cpus, log_format))


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
