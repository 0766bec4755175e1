"""Rows of the job store as plain dataclasses (the store's vocabulary, no protobuf here)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Job and shard states, spelled as in the store; protos map them in master/convert.py.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
PENDING = "pending"  # shards of a later stage
TERMINAL_JOB_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

ALIVE, DRAINING, DRAINED, LOST = "alive", "draining", "drained", "lost"


@dataclass
class CaseRecord:
    case_id: str
    label: str
    committed: bool
    created_ms: int
    hospital: str = ""  # the owner: only this hospital sees the case, its jobs and artifacts


@dataclass
class UploadRecord:
    upload_id: str
    case_id: str
    file_name: str
    size_bytes: int
    sha256: str
    committed_bytes: int
    created_ms: int
    updated_ms: int = 0  # when the last chunk arrived (0: none yet); abandoned uploads expire from here


@dataclass
class FileRecord:
    file_id: str
    case_id: str
    file_name: str
    sha256: str
    size_bytes: int
    modality: str
    sop_instance_uid: str
    notes: list[str] = field(default_factory=list)
    # Received into a committed case by an add (``rtgrid upload --add-to``) not committed yet:
    # invisible to jobs and listings until the add commits, removed if it is refused.
    pending: bool = False


PLANNING_SERIES = "planning"
SECONDARY_SERIES = "secondary"


@dataclass
class SeriesRecord:
    series_id: str
    case_id: str
    modality: str
    series_instance_uid: str
    frame_of_reference_uid: str
    n_slices: int
    rows: int
    columns: int
    spacing_mm: list[float]
    volume_sha256: str  # npz blob: voxels + geometry
    meta_sha256: str  # JSON blob: the ImageSeries identity (UIDs per slice, patient, notes)
    notes: list[str] = field(default_factory=list)
    # The case's planning CT is PLANNING_SERIES; MR and PET series beside it are SECONDARY_SERIES
    # (registered to the CT, never planned on). Series stored before MR/PET intake are all the CT.
    role: str = "planning"
    suv_factor: float = 0.0  # PET: SUVbw per Bq/mL (0 for other modalities)
    echo_number: int = 0  # MR: the echo of a split multi-echo series (0: none given)


@dataclass
class JobRecord:
    job_id: str
    case_id: str
    kind: str
    state: str
    priority: int
    params: dict[str, str]
    stage: str
    created_ms: int
    started_ms: int = 0
    finished_ms: int = 0
    error: str = ""
    idempotency_key: str = ""


@dataclass
class ShardRecord:
    shard_id: str
    job_id: str
    stage: str
    index: int
    state: str
    agent_id: str = ""
    attempts: int = 0
    error: str = ""
    result_sha256: str = ""
    started_ms: int = 0
    finished_ms: int = 0
    target: str = ""  # what the shard works on when its stage says so (e.g. a device id)


@dataclass
class EventRecord:
    job_id: str
    seq: int
    time_ms: int
    type: str  # state | progress | log | artifact
    state: str
    stage: str = ""
    shards_done: int = 0
    shards_total: int = 0
    message: str = ""
    eta_s: float = -1.0


@dataclass
class ArtifactRecord:
    artifact_id: str
    job_id: str
    name: str
    kind: str
    modality: str
    sha256: str
    size_bytes: int


@dataclass
class AgentRecord:
    agent_id: str
    name: str
    hostname: str
    cpus: int
    ram_bytes: int
    gpus: list[dict]
    engine_versions: dict[str, str]
    slots: int
    state: str
    last_heartbeat_ms: int
    ray_resource: str
    identity: str = ""  # the CN of the certificate it registered with: only that certificate may act for it


AVAILABLE, BUSY, DOWN = "available", "busy", "down"


@dataclass
class DeviceRecord:
    device_id: str
    hospital: str
    model_id: str
    status: str
    queue_length: int
    updated_ms: int


@dataclass
class ModelRecord:
    """A registered segmentation model package: ``card_json`` is card.json byte for byte (as
    text), the weights are the blob ``weights_sha256``; ``sha256`` is the package content hash."""

    sha256: str
    name: str
    version: str
    architecture: str
    card_json: str
    weights_sha256: str
    weights_bytes: int
    registered_ms: int


@dataclass
class HospitalRecord:
    """A tenant. Only the sha256 of its API token is kept; the token itself is shown once."""

    name: str
    token_sha256: str
    created_ms: int
    revoked_ms: int = 0


@dataclass
class AuditRecord:
    """Who did what to which objects, when, and how it ended (a gRPC status name)."""

    audit_id: str
    time_ms: int
    principal: str
    role: str
    action: str  # upload | view | download | submit | cancel | admin | agent | review | share (and, written by
    # the approval and sharing modules: approve | reject | comment | version | unshare | consult)
    method: str
    objects: dict[str, str]
    outcome: str
    detail: str = ""  # the refusal's message, if any
    peer: str = ""  # the caller's address as gRPC saw it


# Review status of a structure set's or plan's version (the RT Approval module's vocabulary, lower case).
DRAFT, REVIEWED, APPROVED, REJECTED = "draft", "reviewed", "approved", "rejected"


@dataclass
class VersionRecord:
    """One version of a job's structure set or plan (or dose) and its review status.

    Versions of one ``lineage`` (the name of the job's original artifact, e.g. ``RS.contours.dcm``)
    are numbered 1, 2, ...; each is an artifact of the job. The last transition's who, when and
    comment are kept here; every transition is also a :class:`ReviewRecord` and an audit entry.
    """

    version_id: str
    job_id: str
    lineage: str
    version: int
    artifact_id: str
    kind: str  # rtstruct | rtplan | rtdose
    status: str
    author: str  # the hospital that uploaded it, or "grid" for what a job made
    created_ms: int
    reviewer_name: str = ""  # the person named by --as
    reviewed_by: str = ""  # the principal (hospital) that made the last transition
    reviewed_ms: int = 0
    comment: str = ""


@dataclass
class ReviewRecord:
    """One transition (or comment: ``from_status == to_status``) of a version."""

    review_id: str
    version_id: str
    time_ms: int
    principal: str
    reviewer_name: str
    from_status: str
    to_status: str
    comment: str = ""


VIEW, COMMENT, REVIEW, APPROVE = "view", "comment", "review", "approve"
GRANTS = (VIEW, COMMENT, REVIEW, APPROVE)  # each grant includes those before it


@dataclass
class ShareRecord:
    """A case shared by its owner with a consultant hospital, until ``until_ms`` (0: no end)."""

    case_id: str
    hospital: str  # the consultant
    grant: str  # one of GRANTS
    shared_by: str
    created_ms: int
    until_ms: int = 0
