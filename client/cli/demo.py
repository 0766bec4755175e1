"""``rtgrid demo``: the whole path on a generated phantom patient, on the embedded grid.

Runs ``rtgrid phantom``, ``rtgrid certs`` and ``rtgrid up`` (TLS, the agent on mutual TLS) as
child processes (the client never imports the master); the operator issues a hospital token,
then the demo plays the hospital through the SDK: upload the CT with the drawn targets, run a
``full`` job (auto-contouring, the standard plan against the phantom's medical order, then plans
for the three least congested linacs, each checked by QA before release), watch it, fetch the
results and print the order's goals and each device plan's QA verdict.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .follow import follow
from .output import Format, emit
from .plugins import require_server

if TYPE_CHECKING:
    from ..sdk import Client

GRID_START_TIMEOUT_S = 180.0
# The three least congested linacs of the registry (the embedded grid seeds one per catalog model).
DEMO_DEVICES = "auto:3"


def _rtgrid(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", *args]


def _start_grid(work: Path) -> tuple[subprocess.Popen, dict[str, str], dict[str, str]]:
    """The secure deployment on this machine: a private CA, TLS, an agent with its certificate."""
    made = subprocess.run(_rtgrid("certs", "--out", str(work / "pki")), check=True, stdout=subprocess.PIPE, text=True)
    pki = json.loads(made.stdout.strip().splitlines()[-1])
    proc = subprocess.Popen(
        _rtgrid("up", "--port", "0", "--internal-port", "0", "--data", str(work / "grid"),
                "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-ca", pki["ca"],
                "--agent-cert", pki["agent:agent:cert"], "--agent-key", pki["agent:agent:key"]),
        stdout=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + GRID_START_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            return proc, json.loads(line), pki
    proc.kill()
    raise RuntimeError("the embedded grid did not start (see its log above)")


def _wait_for_agent(client: "Client", timeout_s: float = GRID_START_TIMEOUT_S) -> None:
    from rtgrid.protos.v1 import common_pb2

    deadline = time.monotonic() + timeout_s
    while not any(a.state == common_pb2.AGENT_STATE_ALIVE for a in client.agents()):
        if time.monotonic() > deadline:
            raise RuntimeError("no agent joined the embedded grid")
        time.sleep(0.5)


def demo_command(
    out: Path = typer.Option(Path("demo-output"), help="Where the results go."),
    slices: int = typer.Option(64, help="Phantom slices."),
    size: int = typer.Option(256, help="Phantom rows and columns."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json."),
) -> None:
    """Generate a phantom patient, start the embedded grid, upload, contour and plan, watch, fetch."""
    require_server("demo")  # it starts the grid here: one line, not a traceback, on a thin install
    from ..sdk import Client

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rtgrid-demo-"))
    phantom_dir = out / "phantom"
    if phantom_dir.exists():
        shutil.rmtree(phantom_dir)
    made = subprocess.run(_rtgrid("phantom", "--out", str(phantom_dir), "--slices", str(slices), "--size", str(size)),
                          check=True, stdout=subprocess.PIPE, text=True)
    phantom = json.loads(made.stdout.strip().splitlines()[-1])
    grid, ready, pki = _start_grid(work)
    try:
        operator = dict(ca=pki["ca"], cert=pki["operator:operator:cert"], key=pki["operator:operator:key"])
        with Client(ready["internal_target"], **operator) as admin:
            token = admin.add_hospital("demo-hospital").token  # the operator makes the hospital's token
        emit(fmt, {"target": ready["target"]}, f"grid up with TLS at {ready['target']}; hospital token issued")
        with Client(ready["target"], token=token, admin_target=ready["internal_target"], **operator) as client:
            _wait_for_agent(client)
            # The hospital sends the CT with the targets and organs at risk its physician drew.
            case = client.upload_folder(phantom["ct_dir"], phantom["rtstruct"], label="demo phantom").case
            emit(fmt, {"case_id": case.case_id}, f"uploaded case {case.case_id} ({case.series[0].n_slices} slices)")
            order = Path(phantom["order"]).read_text()
            job = client.submit(case.case_id, "full", params={"order": order, "devices": DEMO_DEVICES})
            emit(fmt, {"job_id": job.job_id},
                 f"full job {job.job_id}: auto-contour, standard plan, device plans with QA ({DEMO_DEVICES})")
            code = follow(client, job.job_id, fmt)
            results = out / "results"
            for artifact in client.artifacts(job.job_id):
                path = client.download(artifact, results)
                emit(fmt, {"path": str(path), "modality": artifact.modality, "kind": artifact.kind}, f"wrote {path}")
            report = results / "plan-report.json"
            if report.exists():
                emit(fmt, {}, "standard plan goals:")
                for goal in json.loads(report.read_text())["goals"]:
                    verdict = "met" if goal["met"] else "MISSED"
                    emit(fmt, {"goal": goal["goal"], "achieved_gy": goal["achieved_gy"], "met": goal["met"]},
                         f"  {verdict:<6} {goal['goal']:<28} achieved {goal['achieved_gy']:.2f} Gy")
            for qa_file in sorted(results.glob("qa.*.json")):
                qa = json.loads(qa_file.read_text())
                emit(fmt, {"device": qa["device"], "released": qa["released"], "gamma_pass_rate_pct": qa["gamma_pass_rate_pct"],
                           "segments": qa["segments"], "total_mu": qa["total_mu"]},
                     f"device {qa['device']:<14} {'released' if qa['released'] else 'NOT released'}: gamma "
                     f"{qa['gamma_pass_rate_pct']:.1f}%, {qa['segments']} segments, {qa['total_mu']:.0f} MU/fraction"
                     + ("" if qa["released"] else f" — {'; '.join(qa['reasons'])}"))
    finally:
        grid.send_signal(signal.SIGTERM)
        try:
            grid.wait(timeout=90)
        except subprocess.TimeoutExpired:
            grid.kill()
        shutil.rmtree(work, ignore_errors=True)
    emit(fmt, {"output": str(out), "exit_code": code}, f"demo output in {out}")
    raise typer.Exit(code)

