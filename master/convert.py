"""Store records ↔ protobuf messages, in symmetric pairs; protos never travel deeper than this."""

from __future__ import annotations

import json

from rtgrid.protos.v1 import admin_pb2
from rtgrid.protos.v1 import common_pb2 as pb

from .intake import IMAGE_MODALITIES, SECONDARY_MODALITIES
from .store.records import (
    AgentRecord,
    ArtifactRecord,
    AuditRecord,
    CaseRecord,
    DeviceRecord,
    EventRecord,
    FileRecord,
    HospitalRecord,
    JobRecord,
    ModelRecord,
    SeriesRecord,
    ShardRecord,
)

# Image files are listed as their series (with modality), never one attachment per slice.
_IMAGE_MODALITIES = IMAGE_MODALITIES + SECONDARY_MODALITIES
_JOB_STATES = {"queued": pb.JOB_STATE_QUEUED, "running": pb.JOB_STATE_RUNNING, "succeeded": pb.JOB_STATE_SUCCEEDED,
               "failed": pb.JOB_STATE_FAILED, "cancelled": pb.JOB_STATE_CANCELLED}
_SHARD_STATES = {"pending": pb.SHARD_STATE_PENDING, "queued": pb.SHARD_STATE_QUEUED, "running": pb.SHARD_STATE_RUNNING,
                 "succeeded": pb.SHARD_STATE_SUCCEEDED, "failed": pb.SHARD_STATE_FAILED,
                 "cancelled": pb.SHARD_STATE_CANCELLED}
_AGENT_STATES = {"alive": pb.AGENT_STATE_ALIVE, "draining": pb.AGENT_STATE_DRAINING,
                 "drained": pb.AGENT_STATE_DRAINED, "lost": pb.AGENT_STATE_LOST}
_DEVICE_STATUSES = {"available": pb.DEVICE_STATUS_AVAILABLE, "busy": pb.DEVICE_STATUS_BUSY,
                    "down": pb.DEVICE_STATUS_DOWN}
_EVENT_TYPES = {"state": pb.EVENT_TYPE_STATE, "progress": pb.EVENT_TYPE_PROGRESS, "log": pb.EVENT_TYPE_LOG,
                "artifact": pb.EVENT_TYPE_ARTIFACT}


def job_state_to_proto(state: str) -> int:
    return _JOB_STATES[state]


def job_state_from_proto(value: int) -> str:
    for name, number in _JOB_STATES.items():
        if number == value:
            return name
    raise ValueError(f"unknown job state {value}")


def agent_state_to_proto(state: str) -> int:
    return _AGENT_STATES[state]


def series_to_proto(s: SeriesRecord) -> pb.SeriesSummary:
    return pb.SeriesSummary(
        series_id=s.series_id, modality=s.modality, series_instance_uid=s.series_instance_uid,
        frame_of_reference_uid=s.frame_of_reference_uid, n_slices=s.n_slices, rows=s.rows, columns=s.columns,
        spacing_mm=s.spacing_mm, notes=s.notes,
    )


def case_to_proto(case: CaseRecord, series: list[SeriesRecord], files: list[FileRecord]) -> pb.Case:
    return pb.Case(
        case_id=case.case_id, label=case.label, committed=bool(case.committed), created_ms=case.created_ms,
        series=[series_to_proto(s) for s in series], n_files=len(files),
        attachments=[f"{f.modality}:{f.file_name}" for f in files if f.modality not in _IMAGE_MODALITIES],
    )


def job_to_proto(job: JobRecord, shards_done: int = 0, shards_total: int = 0) -> pb.Job:
    return pb.Job(
        job_id=job.job_id, case_id=job.case_id, kind=job.kind, state=_JOB_STATES[job.state], priority=job.priority,
        params=job.params, stage=job.stage, shards_done=shards_done, shards_total=shards_total, error=job.error,
        created_ms=job.created_ms, started_ms=job.started_ms, finished_ms=job.finished_ms,
        idempotency_key=job.idempotency_key,
    )


def event_to_proto(e: EventRecord) -> pb.JobEvent:
    return pb.JobEvent(
        job_id=e.job_id, seq=e.seq, time_ms=e.time_ms, type=_EVENT_TYPES[e.type], state=_JOB_STATES[e.state],
        stage=e.stage, shards_done=e.shards_done, shards_total=e.shards_total, message=e.message, eta_s=e.eta_s,
    )


def artifact_to_proto(a: ArtifactRecord) -> pb.Artifact:
    return pb.Artifact(
        artifact_id=a.artifact_id, job_id=a.job_id, name=a.name, kind=a.kind, modality=a.modality,
        size_bytes=a.size_bytes, sha256=a.sha256,
    )


def shard_to_proto(s: ShardRecord) -> pb.Shard:
    return pb.Shard(
        shard_id=s.shard_id, job_id=s.job_id, stage=s.stage, index=s.index, state=_SHARD_STATES[s.state],
        agent_id=s.agent_id, attempts=s.attempts, error=s.error, started_ms=s.started_ms, finished_ms=s.finished_ms,
        target=s.target,
    )


def agent_to_proto(a: AgentRecord, running_shards: int) -> pb.Agent:
    return pb.Agent(
        agent_id=a.agent_id, name=a.name, hostname=a.hostname, cpus=a.cpus, ram_bytes=a.ram_bytes,
        gpus=[pb.GpuInfo(name=g["name"], memory_bytes=g["memory_bytes"]) for g in a.gpus],
        engine_versions=a.engine_versions, state=_AGENT_STATES[a.state], last_heartbeat_ms=a.last_heartbeat_ms,
        running_shards=running_shards, slots=a.slots, ray_resource=a.ray_resource,
    )


def gpus_from_proto(gpus) -> list[dict]:
    return [{"name": g.name, "memory_bytes": int(g.memory_bytes)} for g in gpus]


def device_to_proto(d: DeviceRecord) -> pb.Device:
    return pb.Device(device_id=d.device_id, hospital=d.hospital, model_id=d.model_id,
                     status=_DEVICE_STATUSES[d.status], queue_length=d.queue_length, updated_ms=d.updated_ms)


def device_status_from_proto(value: int) -> str:
    """``""`` for unspecified (leave unchanged)."""
    for name, number in _DEVICE_STATUSES.items():
        if number == value:
            return name
    return ""


def catalog_entry_to_proto(e) -> pb.DeviceModelInfo:
    return pb.DeviceModelInfo(
        model_id=e.model_id, version=e.version, manufacturer=e.manufacturer, model=e.model, mlc=e.mlc,
        leaf_pairs=e.leaf_pairs, min_leaf_width_mm=e.min_leaf_width_mm, interdigitation=e.interdigitation,
        max_field_mm=list(e.max_field_mm), content_hash=e.content_hash,
    )


def model_to_proto(m: ModelRecord) -> pb.ModelInfo:
    card = json.loads(m.card_json)
    return pb.ModelInfo(
        name=m.name, version=m.version, sha256=m.sha256, architecture=m.architecture,
        labels=[label["rtstruct_name"] for label in card.get("labels", [])],
        metrics_json=json.dumps(card.get("validation_metrics", {}), sort_keys=True), card_json=m.card_json,
        weights_bytes=m.weights_bytes, registered_ms=m.registered_ms,
    )


def hospital_to_proto(h: HospitalRecord) -> admin_pb2.Hospital:
    return admin_pb2.Hospital(name=h.name, created_ms=h.created_ms, revoked_ms=h.revoked_ms)


def audit_to_proto(e: AuditRecord) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        audit_id=e.audit_id, time_ms=e.time_ms, principal=e.principal, role=e.role, action=e.action, method=e.method,
        objects=e.objects, outcome=e.outcome, detail=e.detail, peer=e.peer,
    )
