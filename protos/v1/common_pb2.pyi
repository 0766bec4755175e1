from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class ShardState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARD_STATE_UNSPECIFIED: _ClassVar[ShardState]
    SHARD_STATE_PENDING: _ClassVar[ShardState]
    SHARD_STATE_QUEUED: _ClassVar[ShardState]
    SHARD_STATE_RUNNING: _ClassVar[ShardState]
    SHARD_STATE_SUCCEEDED: _ClassVar[ShardState]
    SHARD_STATE_FAILED: _ClassVar[ShardState]
    SHARD_STATE_CANCELLED: _ClassVar[ShardState]

class AgentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STATE_UNSPECIFIED: _ClassVar[AgentState]
    AGENT_STATE_ALIVE: _ClassVar[AgentState]
    AGENT_STATE_DRAINING: _ClassVar[AgentState]
    AGENT_STATE_DRAINED: _ClassVar[AgentState]
    AGENT_STATE_LOST: _ClassVar[AgentState]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_STATE: _ClassVar[EventType]
    EVENT_TYPE_PROGRESS: _ClassVar[EventType]
    EVENT_TYPE_LOG: _ClassVar[EventType]
    EVENT_TYPE_ARTIFACT: _ClassVar[EventType]

class DeviceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_STATUS_UNSPECIFIED: _ClassVar[DeviceStatus]
    DEVICE_STATUS_AVAILABLE: _ClassVar[DeviceStatus]
    DEVICE_STATUS_BUSY: _ClassVar[DeviceStatus]
    DEVICE_STATUS_DOWN: _ClassVar[DeviceStatus]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
SHARD_STATE_UNSPECIFIED: ShardState
SHARD_STATE_PENDING: ShardState
SHARD_STATE_QUEUED: ShardState
SHARD_STATE_RUNNING: ShardState
SHARD_STATE_SUCCEEDED: ShardState
SHARD_STATE_FAILED: ShardState
SHARD_STATE_CANCELLED: ShardState
AGENT_STATE_UNSPECIFIED: AgentState
AGENT_STATE_ALIVE: AgentState
AGENT_STATE_DRAINING: AgentState
AGENT_STATE_DRAINED: AgentState
AGENT_STATE_LOST: AgentState
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_STATE: EventType
EVENT_TYPE_PROGRESS: EventType
EVENT_TYPE_LOG: EventType
EVENT_TYPE_ARTIFACT: EventType
DEVICE_STATUS_UNSPECIFIED: DeviceStatus
DEVICE_STATUS_AVAILABLE: DeviceStatus
DEVICE_STATUS_BUSY: DeviceStatus
DEVICE_STATUS_DOWN: DeviceStatus

class Device(_message.Message):
    __slots__ = ("device_id", "hospital", "model_id", "status", "queue_length", "updated_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hospital: str
    model_id: str
    status: DeviceStatus
    queue_length: int
    updated_ms: int
    def __init__(self, device_id: _Optional[str] = ..., hospital: _Optional[str] = ..., model_id: _Optional[str] = ..., status: _Optional[_Union[DeviceStatus, str]] = ..., queue_length: _Optional[int] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class DeviceModelInfo(_message.Message):
    __slots__ = ("model_id", "version", "manufacturer", "model", "mlc", "leaf_pairs", "min_leaf_width_mm", "interdigitation", "max_field_mm", "content_hash")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MLC_FIELD_NUMBER: _ClassVar[int]
    LEAF_PAIRS_FIELD_NUMBER: _ClassVar[int]
    MIN_LEAF_WIDTH_MM_FIELD_NUMBER: _ClassVar[int]
    INTERDIGITATION_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_MM_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    manufacturer: str
    model: str
    mlc: str
    leaf_pairs: int
    min_leaf_width_mm: float
    interdigitation: bool
    max_field_mm: _containers.RepeatedScalarFieldContainer[float]
    content_hash: str
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., manufacturer: _Optional[str] = ..., model: _Optional[str] = ..., mlc: _Optional[str] = ..., leaf_pairs: _Optional[int] = ..., min_leaf_width_mm: _Optional[float] = ..., interdigitation: _Optional[bool] = ..., max_field_mm: _Optional[_Iterable[float]] = ..., content_hash: _Optional[str] = ...) -> None: ...

class SeriesSummary(_message.Message):
    __slots__ = ("series_id", "modality", "series_instance_uid", "frame_of_reference_uid", "n_slices", "rows", "columns", "spacing_mm", "notes")
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    FRAME_OF_REFERENCE_UID_FIELD_NUMBER: _ClassVar[int]
    N_SLICES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    series_id: str
    modality: str
    series_instance_uid: str
    frame_of_reference_uid: str
    n_slices: int
    rows: int
    columns: int
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, series_id: _Optional[str] = ..., modality: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., frame_of_reference_uid: _Optional[str] = ..., n_slices: _Optional[int] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., spacing_mm: _Optional[_Iterable[float]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class Case(_message.Message):
    __slots__ = ("case_id", "label", "committed", "created_ms", "series", "n_files", "attachments")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    N_FILES_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    label: str
    committed: bool
    created_ms: int
    series: _containers.RepeatedCompositeFieldContainer[SeriesSummary]
    n_files: int
    attachments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, case_id: _Optional[str] = ..., label: _Optional[str] = ..., committed: _Optional[bool] = ..., created_ms: _Optional[int] = ..., series: _Optional[_Iterable[_Union[SeriesSummary, _Mapping]]] = ..., n_files: _Optional[int] = ..., attachments: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "case_id", "kind", "state", "priority", "params", "stage", "shards_done", "shards_total", "error", "created_ms", "started_ms", "finished_ms", "idempotency_key")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    case_id: str
    kind: str
    state: JobState
    priority: int
    params: _containers.ScalarMap[str, str]
    stage: str
    shards_done: int
    shards_total: int
    error: str
    created_ms: int
    started_ms: int
    finished_ms: int
    idempotency_key: str
    def __init__(self, job_id: _Optional[str] = ..., case_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., priority: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ..., stage: _Optional[str] = ..., shards_done: _Optional[int] = ..., shards_total: _Optional[int] = ..., error: _Optional[str] = ..., created_ms: _Optional[int] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "time_ms", "type", "state", "stage", "shards_done", "shards_total", "message", "eta_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    time_ms: int
    type: EventType
    state: JobState
    stage: str
    shards_done: int
    shards_total: int
    message: str
    eta_s: float
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., time_ms: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., shards_done: _Optional[int] = ..., shards_total: _Optional[int] = ..., message: _Optional[str] = ..., eta_s: _Optional[float] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("artifact_id", "job_id", "name", "kind", "modality", "size_bytes", "sha256")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    job_id: str
    name: str
    kind: str
    modality: str
    size_bytes: int
    sha256: str
    def __init__(self, artifact_id: _Optional[str] = ..., job_id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., modality: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("shard_id", "job_id", "stage", "index", "state", "agent_id", "attempts", "error", "started_ms", "finished_ms", "target")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    shard_id: str
    job_id: str
    stage: str
    index: int
    state: ShardState
    agent_id: str
    attempts: int
    error: str
    started_ms: int
    finished_ms: int
    target: str
    def __init__(self, shard_id: _Optional[str] = ..., job_id: _Optional[str] = ..., stage: _Optional[str] = ..., index: _Optional[int] = ..., state: _Optional[_Union[ShardState, str]] = ..., agent_id: _Optional[str] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., target: _Optional[str] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("name", "memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("agent_id", "name", "hostname", "cpus", "ram_bytes", "gpus", "engine_versions", "state", "last_heartbeat_ms", "running_shards", "slots", "ray_resource")
    class EngineVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RAY_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    hostname: str
    cpus: int
    ram_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    engine_versions: _containers.ScalarMap[str, str]
    state: AgentState
    last_heartbeat_ms: int
    running_shards: int
    slots: int
    ray_resource: str
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., hostname: _Optional[str] = ..., cpus: _Optional[int] = ..., ram_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., engine_versions: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[AgentState, str]] = ..., last_heartbeat_ms: _Optional[int] = ..., running_shards: _Optional[int] = ..., slots: _Optional[int] = ..., ray_resource: _Optional[str] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelPackageChunk(_message.Message):
    __slots__ = ("sha256", "card_json", "weights_bytes", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    card_json: bytes
    weights_bytes: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., card_json: _Optional[bytes] = ..., weights_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "sha256", "architecture", "labels", "metrics_json", "card_json", "weights_bytes", "registered_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    sha256: str
    architecture: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    metrics_json: str
    card_json: str
    weights_bytes: int
    registered_ms: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., architecture: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., metrics_json: _Optional[str] = ..., card_json: _Optional[str] = ..., weights_bytes: _Optional[int] = ..., registered_ms: _Optional[int] = ...) -> None: ...
