"""``rtgrid demo``: the whole path on a generated phantom patient, on the embedded grid.

Runs ``rtgrid phantom``, ``rtgrid certs`` and ``rtgrid up`` (TLS, the agent on mutual TLS) as
child processes (:class:`~rtgrid.client.local_grid.LocalGrid`: the client never imports the
master); the operator issues a hospital token,
then the demo plays the hospital through the SDK: upload the CT with the drawn targets, run a
``full`` job (auto-contouring, the standard plan against the phantom's medical order, then plans
for the three least congested linacs, each checked by QA before release), watch it, fetch the
results and print the order's goals and each device plan's QA verdict.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import typer

from .follow import follow
from .output import Format, emit
from .plugins import require_server

# The three least congested linacs of the registry (the embedded grid seeds one per catalog model).
DEMO_DEVICES = "auto:3"


def demo_command(
    out: Path = typer.Option(Path("demo-output"), help="Where the results go."),
    slices: int = typer.Option(64, help="Phantom slices."),
    size: int = typer.Option(256, help="Phantom rows and columns."),
    fmt: Format = typer.Option(Format.text, "--format", help="text or json."),
) -> None:
    """Generate a phantom patient, start the embedded grid, upload, contour and plan, watch, fetch."""
    require_server("demo")  # it starts the grid here: one line, not a traceback, on a thin install
    from ..local_grid import LocalGrid, make_pki, rtgrid_cmd  # grpc: not for every `rtgrid --help`
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rtgrid-demo-"))
    phantom_dir = out / "phantom"
    if phantom_dir.exists():
        shutil.rmtree(phantom_dir)
    made = subprocess.run(rtgrid_cmd("phantom", "--out", str(phantom_dir), "--slices", str(slices), "--size", str(size)),
                          check=True, stdout=subprocess.PIPE, text=True)
    phantom = json.loads(made.stdout.strip().splitlines()[-1])
    # The secure deployment on this machine: a private CA, TLS, one agent with its certificate.
    grid = LocalGrid(work / "grid", pki=make_pki(work / "pki"))
    try:
        grid.start_master(agents=1)
        grid.add_hospital("demo-hospital")  # the operator makes the hospital's token
        emit(fmt, {"target": grid.target}, f"grid up with TLS at {grid.target}; hospital token issued")
        with grid.client() as client:
            grid.wait_agent()
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
        grid.stop()
        shutil.rmtree(work, ignore_errors=True)
    emit(fmt, {"output": str(out), "exit_code": code}, f"demo output in {out}")
    raise typer.Exit(code)

