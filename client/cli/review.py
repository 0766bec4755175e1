"""``rtgrid versions | review | approve | reject | comment | revise``: review and approval of a job's
structure sets and plans; ``rtgrid share | unshare | shares``: consultation with another hospital."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from .connect import client as _client
from .output import Format, as_dict, emit, rpc_errors

TargetOption = typer.Option(None, "--target", envvar="RTGRID_TARGET", help="Master HOST:PORT.")
FormatOption = typer.Option(Format.text, "--format", help="text or json (one object per line).")
ArtifactOption = typer.Option("", "--artifact", help="An artifact (or lineage) name, e.g. RP.standard.dcm; "
                                                     "default: the latest version of each of the job's results.")
AsOption = typer.Option(..., "--as", help="The reviewer's name, written into the DICOM objects (ReviewerName).")


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if ms else "-"


def _emit_versions(fmt: Format, versions) -> None:
    for v in versions:
        text = (f"{v.artifact_name:<24} v{v.version:<3} {v.kind:<8} {v.status:<9} {v.author:<12} "
                f"{v.reviewer_name or '-':<16} {_when(v.reviewed_ms)}  {v.comment}").rstrip()
        emit(fmt, as_dict(v), text)


@rpc_errors
def versions_command(job_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List every version of a job's structure sets, plans and doses with its review status."""
    with _client(target) as client:
        _emit_versions(fmt, client.versions(job_id))


def _step(action: str, job_id: str, artifact: str, reviewer: str, comment: str, target: str, fmt: Format) -> None:
    with _client(target) as client:
        changed = client.review(job_id, action, reviewer, comment, artifact)
    _emit_versions(fmt, changed)


@rpc_errors
def approve_command(job_id: str, artifact: str = ArtifactOption, reviewer: str = AsOption,
                    comment: str = typer.Option("", "--comment"), target: str = TargetOption,
                    fmt: Format = FormatOption) -> None:
    """Approve a draft or reviewed version (a plan takes its dose along)."""
    _step("approve", job_id, artifact, reviewer, comment, target, fmt)


@rpc_errors
def reject_command(job_id: str, artifact: str = ArtifactOption, reviewer: str = AsOption,
                   comment: str = typer.Option(..., "--comment", help="Why (required)."), target: str = TargetOption,
                   fmt: Format = FormatOption) -> None:
    """Reject a draft or reviewed version, saying why."""
    _step("reject", job_id, artifact, reviewer, comment, target, fmt)


@rpc_errors
def review_command(job_id: str, artifact: str = ArtifactOption, reviewer: str = AsOption,
                   comment: str = typer.Option("", "--comment"), target: str = TargetOption,
                   fmt: Format = FormatOption) -> None:
    """Mark a draft version reviewed (approval comes next)."""
    _step("review", job_id, artifact, reviewer, comment, target, fmt)


@rpc_errors
def comment_command(job_id: str, comment: str = typer.Option(..., "--comment"), artifact: str = ArtifactOption,
                    reviewer: str = typer.Option("", "--as"), target: str = TargetOption,
                    fmt: Format = FormatOption) -> None:
    """Comment on a version without changing its status."""
    _step("comment", job_id, artifact, reviewer, comment, target, fmt)


@rpc_errors
def revise_command(job_id: str, rtstruct: Path = typer.Argument(..., exists=True, dir_okay=False,
                                                                help="The corrected RTSTRUCT."),
                   lineage: str = typer.Option("", "--artifact", help="Which structure set (if the job has several)."),
                   target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Upload the physician's corrected RTSTRUCT as the next version of a job's contours."""
    with _client(target) as client:
        version = client.add_version(job_id, rtstruct, lineage)
    emit(fmt, as_dict(version), f"{version.artifact_name}  v{version.version}  {version.status}")


def _until_ms(text: str | None) -> int:
    if not text:
        return 0
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)",
                                 param_hint="--until") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _share_text(s) -> str:
    until = _when(s.until_ms) if s.until_ms else "until unshared"
    return f"{s.case_id}  {s.hospital:<20} {s.grant:<8} {until}"


@rpc_errors
def share_command(case_id: str, hospital: str = typer.Option(..., "--with", help="The consultant hospital's name."),
                  grant: str = typer.Option("view", "--grant", help="view, comment, review or approve."),
                  until: str = typer.Option(None, "--until", help="End of the share (date, UTC unless given)."),
                  target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Share a case with another hospital for consultation."""
    with _client(target) as client:
        share = client.share(case_id, hospital, grant, _until_ms(until))
    emit(fmt, as_dict(share), _share_text(share))


@rpc_errors
def unshare_command(case_id: str, hospital: str = typer.Option(..., "--with", help="The consultant hospital's name."),
                    target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """End a share now: the consultant's next call is refused."""
    with _client(target) as client:
        share = client.unshare(case_id, hospital)
    emit(fmt, as_dict(share), f"{share.case_id}  no longer shared with {share.hospital}")


@rpc_errors
def shares_command(case_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List who a case is shared with."""
    with _client(target) as client:
        for share in client.shares(case_id):
            emit(fmt, as_dict(share), _share_text(share))


COMMANDS = {"versions": versions_command, "review": review_command, "approve": approve_command,
            "reject": reject_command, "comment": comment_command, "revise": revise_command,
            "share": share_command, "unshare": unshare_command, "shares": shares_command}
