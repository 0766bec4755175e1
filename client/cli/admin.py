"""``rtgrid admin ...``: operators' commands over the admin API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import typer

from .connect import client as _client
from .output import Format, as_dict, emit, rpc_errors

admin_app = typer.Typer(help="Operate the grid: agents, jobs, shards, priorities, drain, status.", no_args_is_help=True)

TargetOption = typer.Option(None, "--target", envvar="RTGRID_TARGET", help="Master HOST:PORT.")
FormatOption = typer.Option(Format.text, "--format", help="text or json (one object per line).")

if TYPE_CHECKING:  # the protos load when a command runs, not for --help
    from rtgrid.protos.v1 import common_pb2


def _name(enum: str, value: int) -> str:
    """The short name of a value of the protos' enum ``enum`` (e.g. ``AgentState``)."""
    from rtgrid.protos.v1 import common_pb2

    from ..enums import enum_name

    return enum_name(getattr(common_pb2, enum), value)


def _agent_state(value: int) -> str:
    return _name("AgentState", value)


def _job_line(job: "common_pb2.Job") -> str:
    return f"{job.job_id}  {job.kind:<8} {_name('JobState', job.state):<10} prio={job.priority:<4} " \
           f"{job.stage}:{job.shards_done}/{job.shards_total}  {job.error}"


def _wrap(func):
    return rpc_errors(func)


@admin_app.command()
def agents(target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List agents with their state and load."""
    with _client(target) as client:
        for a in _wrap(client.agents)():
            emit(fmt, as_dict(a), f"{a.agent_id}  {a.name:<12} {_agent_state(a.state):<9} "
                                  f"running={a.running_shards}/{a.slots} cpus={a.cpus} gpus={len(a.gpus)}")


@admin_app.command()
def jobs(limit: int = typer.Option(100, help="At most this many, newest first (0: all, fetched page by page)."),
         target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List jobs, newest first."""
    with _client(target) as client:
        for job in _wrap(client.jobs)(limit):
            emit(fmt, {**as_dict(job), "state": _name("JobState", job.state)}, _job_line(job))


@admin_app.command()
def shards(job_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List the shards of a job (stage, agent, attempts)."""
    with _client(target) as client:
        for s in _wrap(client.shards)(job_id):
            state = _name("ShardState", s.state)
            emit(fmt, {**as_dict(s), "state": state},
                 f"{s.shard_id}  {s.stage}#{s.index:<3} {state:<10} agent={s.agent_id or '-'} attempts={s.attempts} {s.error}")


@admin_app.command()
def cancel(job_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Cancel a job."""
    with _client(target) as client:
        job = _wrap(client.cancel_any_job)(job_id)
    emit(fmt, {"job_id": job.job_id, "state": _name("JobState", job.state)}, _job_line(job))


@admin_app.command()
def priority(job_id: str, value: int, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Change a job's priority (higher runs first)."""
    with _client(target) as client:
        job = _wrap(client.set_priority)(job_id, value)
    emit(fmt, {"job_id": job.job_id, "priority": job.priority}, _job_line(job))


@admin_app.command()
def drain(agent_id: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Drain an agent: it finishes running shards, takes no new ones, then leaves."""
    with _client(target) as client:
        agent = _wrap(client.drain_agent)(agent_id)
    emit(fmt, {"agent_id": agent.agent_id, "state": _agent_state(agent.state)}, f"{agent.agent_id} {_agent_state(agent.state)}")


@admin_app.command()
def status(target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Cluster status: queue depth, jobs by state, running shards per agent."""
    with _client(target) as client:
        st = _wrap(client.cluster_status)()
    lines = [f"ray {st.ray_address}  queue depth {st.queue_depth}",
             "jobs " + ", ".join(f"{k}={v}" for k, v in sorted(st.jobs_by_state.items())),
             f"open cases {st.open_cases}  open uploads {st.open_uploads}  expired uploads {st.expired_uploads}"]
    lines += [f"  {a.agent_id} {_agent_state(a.state)} {a.running_shards}/{a.slots}" for a in st.agents]
    emit(fmt, as_dict(st), "\n".join(lines))


devices_app = typer.Typer(help="The device catalog and the registry of treatment machines.", invoke_without_command=True)
admin_app.add_typer(devices_app, name="devices")



def _device_status(value: int) -> str:
    return _name("DeviceStatus", value)


@devices_app.callback()
def devices_list(ctx: typer.Context, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List the catalog (models) and the registered devices with status and queue."""
    if ctx.invoked_subcommand is not None:
        return
    with _client(target) as client:
        catalog, registered = _wrap(client.devices)()
    for m in catalog:
        emit(fmt, {"record": "model", **as_dict(m)},
             f"model  {m.model_id:<34} {m.manufacturer} {m.model}, {m.mlc}: {m.leaf_pairs} pairs, "
             f"{m.min_leaf_width_mm:g} mm leaves, interdigitation {'yes' if m.interdigitation else 'no'}")
    for d in registered:
        emit(fmt, {"record": "device", **as_dict(d), "status": _device_status(d.status)},
             f"device {d.device_id:<34} {d.hospital:<12} {_device_status(d.status):<9} queue={d.queue_length} model={d.model_id}")


@devices_app.command("set")
def devices_set(
    device_id: str,
    status: str = typer.Option(None, help="available, busy or down."),
    queue: int = typer.Option(-1, help="Treatments waiting on the device."),
    hospital: str = typer.Option("", help="Hospital (when adding a device)."),
    model: str = typer.Option("", help="Catalog model id (when adding a device)."),
    target: str = TargetOption,
    fmt: Format = FormatOption,
) -> None:
    """Add a device, or set its status and queue length."""
    from rtgrid.protos.v1 import common_pb2

    from ..enums import enum_value

    if status is not None:
        try:  # told before the master is asked anything
            enum_value(common_pb2.DeviceStatus, status)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--status") from None
    with _client(target) as client:
        d = _wrap(client.set_device)(device_id, status, queue, hospital, model)
    emit(fmt, {**as_dict(d), "status": _device_status(d.status)},
         f"{d.device_id} {_device_status(d.status)} queue={d.queue_length}")


models_app = typer.Typer(help="The registry of segmentation models.", invoke_without_command=True)
admin_app.add_typer(models_app, name="models")


def _model_record(m: "common_pb2.ModelInfo") -> dict:
    import json

    return {"name": m.name, "version": m.version, "sha256": m.sha256, "architecture": m.architecture,
            "labels": list(m.labels), "metrics": json.loads(m.metrics_json or "{}"), "weights_bytes": m.weights_bytes,
            "registered_ms": m.registered_ms}


def _model_line(m: "common_pb2.ModelInfo") -> str:
    import json

    metrics = json.loads(m.metrics_json or "{}")
    score = f"mean_dsc={metrics['mean_dsc']:.3f}" if isinstance(metrics.get("mean_dsc"), (int, float)) else ""
    return f"{m.name}@{m.version:<8} {m.sha256[:12]}  {m.architecture:<26} {','.join(m.labels)}  {score}"


@models_app.callback()
def models_list(ctx: typer.Context, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List registered models: name, version, hash, architecture, labels, validation metrics."""
    if ctx.invoked_subcommand is not None:
        return
    with _client(target) as client:
        for m in _wrap(client.models)():
            emit(fmt, _model_record(m), _model_line(m))


@models_app.command("add")
def models_add(
    package: str = typer.Argument(..., help="A model package folder (weights.pt, card.json, sha256), e.g. from `rtgrid train-seg`."),
    target: str = TargetOption,
    fmt: Format = FormatOption,
) -> None:
    """Register a model package; the master verifies hash, card, architecture and weights first."""
    from .output import EXIT_REFUSED, fail

    with _client(target) as client:
        try:
            m = _wrap(client.register_model)(package)
        except FileNotFoundError as exc:
            fail(str(exc), EXIT_REFUSED)
    emit(fmt, _model_record(m), _model_line(m))


hospitals_app = typer.Typer(help="Hospitals (tenants) and their API tokens.", no_args_is_help=True)
admin_app.add_typer(hospitals_app, name="hospitals")


def _hospital_line(h) -> str:
    return f"{h.name:<24} created {_when(h.created_ms)}" + (f"  REVOKED {_when(h.revoked_ms)}" if h.revoked_ms else "")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


@hospitals_app.command("add")
def hospitals_add(name: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Create a hospital and print its API token (shown only this once; the master keeps a digest)."""
    with _client(target) as client:
        reply = _wrap(client.add_hospital)(name)
    emit(fmt, {"name": reply.hospital.name, "token": reply.token}, reply.token)


@hospitals_app.command("list")
def hospitals_list(target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """List hospitals and whether their token is live."""
    with _client(target) as client:
        for h in _wrap(client.hospitals)():
            emit(fmt, as_dict(h), _hospital_line(h))


@hospitals_app.command("revoke")
def hospitals_revoke(name: str, target: str = TargetOption, fmt: Format = FormatOption) -> None:
    """Revoke a hospital's token at once (its cases stay; `add` issues a new token)."""
    with _client(target) as client:
        h = _wrap(client.revoke_hospital)(name)
    emit(fmt, as_dict(h), _hospital_line(h))


def _since_ms(value: str | None) -> int:
    """ISO 8601 time (UTC unless it says otherwise) or a duration back from now: 30m, 12h, 7d."""
    if not value:
        return 0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].isdigit():
        return int((datetime.now(timezone.utc).timestamp() - int(value[:-1]) * units[value[-1]]) * 1000)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: an ISO time (2026-11-21T10:00) or a duration (30m, 12h, 7d)",
                                 param_hint="--since") from None
    return int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp() * 1000)


@admin_app.command()
def audit(
    hospital: str = typer.Option("", help="Only what this hospital (or agent / operator CN) did."),
    action: str = typer.Option("", help="upload, view, download, submit, cancel, admin, agent, auth (refusals), "
                                        "review, approve, reject, comment, version, share, unshare or consult."),
    since: str = typer.Option(None, help="From this ISO time, or this far back (30m, 12h, 7d)."),
    limit: int = typer.Option(0, help="At most this many entries (0: all, fetched page by page)."),
    target: str = TargetOption,
    fmt: Format = FormatOption,
) -> None:
    """The audit log, oldest first: who did what to which objects, when, and the outcome."""
    with _client(target) as client:
        entries = _wrap(client.audit)(hospital, action, _since_ms(since), limit)
    for e in entries:
        objects = " ".join(f"{k}={v}" for k, v in sorted(e.objects.items()))
        emit(fmt, as_dict(e), f"{_when(e.time_ms)}  {e.role}:{e.principal or '-':<16} {e.action:<8} {e.method:<34} "
                              f"{e.outcome:<18} {objects}" + (f"  ({e.detail})" if e.detail else ""))
