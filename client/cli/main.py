"""The ``rtgrid`` command line.

Exit codes: 0 success; 1 the job failed or was cancelled; 2 bad usage; 3 the master refused the
request (its gRPC status and message are printed); 4 the master could not be reached (said within
5 s; once connected, transient drops are retried); 5 a local file problem (a missing or empty
folder, two files with one name, an unreadable or non-DICOM file). Errors are one line on stderr.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from . import plugins
from .admin import admin_app
from .connect import client as _client
from .connect import connection_options
from .demo import demo_command
from .follow import follow
from .gateway import gateway_command
from .output import EXIT_JOB_FAILED, Format, as_dict, emit, fail, rpc_errors
from .review import COMMANDS as REVIEW_COMMANDS

if TYPE_CHECKING:  # grpc and the protos load when a command runs, not for --help
    from ..sdk import Client


app = typer.Typer(help="rtgrid: cloud radiotherapy planning grid.", no_args_is_help=True, add_completion=False,
                  callback=connection_options)
app.add_typer(admin_app, name="admin")
app.command("demo")(demo_command)
app.command("gateway")(gateway_command)
for _name, _command in REVIEW_COMMANDS.items():
    app.command(_name)(_command)

TargetOption = typer.Option(None, "--target", envvar="RTGRID_TARGET", help="Master HOST:PORT.")
MappingOption = typer.Option(Path("rtgrid-pseudonyms.json"), "--pseudonym-map", envvar="RTGRID_PSEUDONYM_MAP",
                             help="The hospital's pseudonym mapping (kept here, never uploaded).")


def _pseudonymizer(path: Path, shift_dates: bool = False):
    from ..pseudonym import Pseudonymizer  # pydicom loads only when asked for

    return Pseudonymizer(path, shift_dates=shift_dates)

FormatOption = typer.Option(Format.text, "--format", help="text or json (one object per line).")


@app.command()
@rpc_errors
def upload(
    paths: list[Path] = typer.Argument(..., help="Folders or files: one CT series, optionally MR and PET series of "
                                                 "the same patient and RTSTRUCTs drawn on any of them."),
    label: str = typer.Option("", help="A label for the case (no patient identifiers needed)."),
    add_to: str = typer.Option("", "--add-to", metavar="CASE",
                               help="Add MR/PET series (and RTSTRUCTs drawn on them) to this committed case "
                                    "instead of making a new one; all or nothing."),
    pseudonymize: bool = typer.Option(False, "--pseudonymize", help="De-identify first (DICOM PS3.15 Basic "
                                                                    "Profile: identifiers, UIDs, dates)."),
    shift_dates: bool = typer.Option(False, "--shift-dates", help="With --pseudonymize: move dates by a per-patient "
                                                                  "number of days instead of removing them."),
    pseudonym_map: Path = MappingOption,
    target: str = TargetOption,
    fmt: Format = FormatOption,
) -> None:
    """Upload a CT series (with MR/PET series of the same patient and RTSTRUCTs, if any) as a new
    case, or add MR/PET series to a committed case with --add-to; prints the case id.

    With --pseudonymize the grid gets pseudonymized copies; the mapping stays in --pseudonym-map.
    A progress bar by bytes goes to stderr (not with --format json).
    """
    from ..sdk import files_to_send

    files_to_send(paths)  # local problems are told before the master is asked anything
    pseudonymizer = _pseudonymizer(pseudonym_map, shift_dates) if pseudonymize else None
    with _client(target) as client:
        try:
            if fmt == Format.json:
                result = client.upload_folder(*paths, label=label, pseudonymizer=pseudonymizer, add_to=add_to)
            else:
                result = _upload_with_progress(client, paths, label, pseudonymizer, add_to)
        except ValueError as exc:  # --add-to names an open case
            raise typer.BadParameter(str(exc), param_hint="--add-to") from None
    case = result.case
    series = case.series[0] if case.series else None
    emit(fmt, {"case_id": case.case_id, "files": len(result.files), "series": as_dict(series) if series else None},
         case.case_id)


def _upload_with_progress(client: "Client", paths: list[Path], label: str, pseudonymizer, add_to: str = "") -> object:
    """``upload_folder`` with a rich progress bar by bytes on stderr."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    held: dict[Path, int] = {}
    with Progress(TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("upload", total=None)

        def progress(path: Path, nbytes: int) -> None:
            if path not in held:
                held[path] = 0
                bar.update(task, total=(bar.tasks[0].total or 0) + path.stat().st_size)
            held[path] = nbytes
            bar.update(task, completed=sum(held.values()))

        return client.upload_folder(*paths, label=label, pseudonymizer=pseudonymizer, progress=progress,
                                    add_to=add_to)


def _params(values: list[str]) -> dict[str, str]:
    params = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        params[key] = value
    return params


@app.command()
@rpc_errors
def submit(
    case_id: str = typer.Argument(..., help="Case id from `rtgrid upload`."),
    kind: str = typer.Option("contour", help="Job kind: contour, plan (needs contours), full (contour + plan), "
                                             "predict (a dose prediction), register (the case's MR/PET series to its CT; "
                                             "--param moving=SERIES, --param deformable=true)."),
    priority: int = typer.Option(0, help="Higher runs first."),
    order: Path = typer.Option(None, exists=True, dir_okay=False, help="Medical order (YAML or JSON) for plan/full."),
    beams: int = typer.Option(None, help="Number of equispaced coplanar beams (default 9)."),
    gantry_angles: str = typer.Option(None, help="Gantry angles in degrees, e.g. 0,40,80 (instead of --beams)."),
    bixel_mm: float = typer.Option(None, help="Bixel size at the isocenter in mm (default 5)."),
    dose_grid_mm: float = typer.Option(None, help="Dose grid spacing in mm (default 3)."),
    machine: str = typer.Option(None, help="Machine model id (default the standard 6 MV machine)."),
    contours_job: str = typer.Option(None, help="A finished contour job whose contours a plan uses, or a register "
                                                 "job whose MR/PET contours mapped onto the CT it uses."),
    contours_version: int = typer.Option(None, help="Which version of those contours (default: the latest "
                                                    "approved, else the latest; see `rtgrid versions`)."),
    plan_job: str = typer.Option(None, help="Convert this finished plan job's (approved) plan for --devices."),
    devices: str = typer.Option(None, help="Device plans too: ID,ID,... or auto / auto:N (chosen by congestion)."),
    device_rule: str = typer.Option(None, help="How auto chooses: congestion, shortest_queue or prefer:ID,ID."),
    models: str = typer.Option(None, help="Deep segmentation models for contour jobs: NAME or NAME@VERSION, comma-separated "
                                          "(see `rtgrid admin models`)."),
    assist: Path = typer.Option(None, exists=True, dir_okay=False,
                                help="Contour jobs: complete a structure from an RTSTRUCT drawn on a few slices, or from "
                                     "a JSON seed/box ({\"name\", \"seed_mm\" or \"box_mm\", \"hu_range\", ...})."),
    param: list[str] = typer.Option([], "--param", help="Other parameter KEY=VALUE (repeatable)."),
    idempotency_key: str = typer.Option("", help="Submitting twice with one key makes one job."),
    target: str = TargetOption,
    fmt: Format = FormatOption,
) -> None:
    """Submit a job on a case; prints the job id."""
    params = _params(param)
    named = {"beams": beams, "gantry_angles": gantry_angles, "bixel_mm": bixel_mm, "dose_grid_mm": dose_grid_mm,
             "machine": machine, "contours_job": contours_job,
             "contours_version": contours_version, "plan_job": plan_job, "devices": devices,
             "device_rule": device_rule, "models": models}
    params.update({k: str(v) for k, v in named.items() if v is not None})
    if order is not None:
        params["order"] = order.read_text()
    if assist is not None:
        params["assist"] = assist_param(assist)
    from ..sdk import state_name

    with _client(target) as client:
        job = client.submit(case_id, kind, params, priority, idempotency_key)
    emit(fmt, {"job_id": job.job_id, "case_id": job.case_id, "kind": job.kind, "state": state_name(job.state)},
         job.job_id)


def assist_param(path: Path) -> str:
    """The ``assist`` job parameter from a file: a DICOM RTSTRUCT travels base64-encoded in JSON,
    a JSON seed or box as it is (the master checks either)."""
    data = path.read_bytes()
    if data[128:132] == b"DICM":
        return json.dumps({"rtstruct_base64": base64.b64encode(data).decode("ascii")})
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{path} is neither a DICOM RTSTRUCT nor JSON text", param_hint="--assist") from None


@app.command()
@rpc_errors
def watch(job_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Follow a job live (stage, shards done/total, ETA); exit 0 on success, 1 on failure."""
    with _client(target) as client:
        code = follow(client, job_id, fmt)
    raise typer.Exit(code)


@app.command()
@rpc_errors
def fetch(
    job_id: str,
    out: Path = typer.Option(..., "--out", help="Folder to write the job's artifacts into."),
    reidentify: bool = typer.Option(False, "--reidentify", help="Give DICOM results of a pseudonymized patient "
                                                                 "the patient's identity and original UIDs back."),
    pseudonym_map: Path = MappingOption,
    target: str = TargetOption,
    fmt: Format = FormatOption,
) -> None:
    """Download every artifact of a job; lists the files written with their DICOM modality."""
    if reidentify and not pseudonym_map.exists():
        fail(f"--reidentify needs the pseudonym mapping, and {pseudonym_map} does not exist", 2)
    pseudonymizer = _pseudonymizer(pseudonym_map) if reidentify else None
    with _client(target) as client:
        artifacts = client.artifacts(job_id)
        if not artifacts:
            fail(f"job {job_id} has no artifacts (yet)", EXIT_JOB_FAILED)
        for artifact in artifacts:
            path = client.download(artifact, out, reidentify=pseudonymizer)
            emit(fmt, {"path": str(path), "kind": artifact.kind, "modality": artifact.modality,
                       "size_bytes": artifact.size_bytes, "sha256": artifact.sha256},
                 f"{path}  {artifact.modality or artifact.kind}")


@app.command()
@rpc_errors
def cases(target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List the hospital's cases."""
    with _client(target) as client:
        for case in client.cases():
            series = case.series[0] if case.series else None
            text = (f"{case.case_id}  {'committed' if case.committed else 'open':<9} files={case.n_files:<4} "
                    f"{(series.modality if series else ''):<4} {case.label}")
            emit(fmt, as_dict(case), text)


@app.command()
@rpc_errors
def job(job_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Show a job: kind, state, stage, shards done/total, error."""
    from ..sdk import state_name

    with _client(target) as client:
        found = client.job(job_id)
    record = as_dict(found)
    record["params"] = sorted(record.get("params", {}))  # names only: an order or a drawing can be long
    emit(fmt, record, f"{found.job_id}  case={found.case_id} {found.kind:<8} {state_name(found.state):<10} "
                      f"{found.stage}:{found.shards_done}/{found.shards_total}  {found.error}".rstrip())


@app.command()
@rpc_errors
def cancel(job_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Cancel one of the hospital's jobs (queued or running); prints its state."""
    from ..sdk import state_name

    with _client(target) as client:
        cancelled = client.cancel(job_id)
    emit(fmt, {"job_id": cancelled.job_id, "state": state_name(cancelled.state)},
         f"{cancelled.job_id}  {state_name(cancelled.state)}")


# Options of the main callback that take a value (to find the command's name in argv).
_GLOBAL_VALUE_OPTIONS = ("--ca", "--token", "--cert", "--key", "--admin-target")


def _command_name(argv: list[str]) -> str | None:
    """The command named on the command line (None: none, e.g. ``--help``)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    name = _command_name(sys.argv[1:])
    if name is None and "--version" not in sys.argv[1:]:
        plugins.list_for_help(app)  # help lists every command, loading none
    elif name in plugins.server_commands():
        plugins.register(app, name)
    app()
