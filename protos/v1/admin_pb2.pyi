from rtgrid.protos.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListAgentsRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[_common_pb2.Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.JobState]
    limit: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_common_pb2.JobState, str]]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_common_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListShardsRequest(_message.Message):
    __slots__ = ("job_id", "limit", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    limit: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListShardsResponse(_message.Message):
    __slots__ = ("shards", "next_page_token")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[_common_pb2.Shard]
    next_page_token: str
    def __init__(self, shards: _Optional[_Iterable[_Union[_common_pb2.Shard, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AdminCancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SetJobPriorityRequest(_message.Message):
    __slots__ = ("job_id", "priority")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    priority: int
    def __init__(self, job_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class DrainAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentLoad(_message.Message):
    __slots__ = ("agent_id", "state", "running_shards", "slots")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    state: _common_pb2.AgentState
    running_shards: int
    slots: int
    def __init__(self, agent_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.AgentState, str]] = ..., running_shards: _Optional[int] = ..., slots: _Optional[int] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("queue_depth", "jobs_by_state", "agents", "ray_address", "open_cases", "open_uploads", "expired_uploads")
    class JobsByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    JOBS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    RAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OPEN_CASES_FIELD_NUMBER: _ClassVar[int]
    OPEN_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    queue_depth: int
    jobs_by_state: _containers.ScalarMap[str, int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentLoad]
    ray_address: str
    open_cases: int
    open_uploads: int
    expired_uploads: int
    def __init__(self, queue_depth: _Optional[int] = ..., jobs_by_state: _Optional[_Mapping[str, int]] = ..., agents: _Optional[_Iterable[_Union[AgentLoad, _Mapping]]] = ..., ray_address: _Optional[str] = ..., open_cases: _Optional[int] = ..., open_uploads: _Optional[int] = ..., expired_uploads: _Optional[int] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "catalog", "next_page_token")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    catalog: _containers.RepeatedCompositeFieldContainer[_common_pb2.DeviceModelInfo]
    next_page_token: str
    def __init__(self, devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ..., catalog: _Optional[_Iterable[_Union[_common_pb2.DeviceModelInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetDeviceRequest(_message.Message):
    __slots__ = ("device_id", "hospital", "model_id", "status", "queue_length")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hospital: str
    model_id: str
    status: _common_pb2.DeviceStatus
    queue_length: int
    def __init__(self, device_id: _Optional[str] = ..., hospital: _Optional[str] = ..., model_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.DeviceStatus, str]] = ..., queue_length: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelInfo]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Hospital(_message.Message):
    __slots__ = ("name", "created_ms", "revoked_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_ms: int
    revoked_ms: int
    def __init__(self, name: _Optional[str] = ..., created_ms: _Optional[int] = ..., revoked_ms: _Optional[int] = ...) -> None: ...

class AddHospitalRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AddHospitalResponse(_message.Message):
    __slots__ = ("hospital", "token")
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    hospital: Hospital
    token: str
    def __init__(self, hospital: _Optional[_Union[Hospital, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListHospitalsRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHospitalsResponse(_message.Message):
    __slots__ = ("hospitals", "next_page_token")
    HOSPITALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hospitals: _containers.RepeatedCompositeFieldContainer[Hospital]
    next_page_token: str
    def __init__(self, hospitals: _Optional[_Iterable[_Union[Hospital, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeHospitalRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("audit_id", "time_ms", "principal", "role", "action", "method", "objects", "outcome", "detail", "peer")
    class ObjectsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    audit_id: str
    time_ms: int
    principal: str
    role: str
    action: str
    method: str
    objects: _containers.ScalarMap[str, str]
    outcome: str
    detail: str
    peer: str
    def __init__(self, audit_id: _Optional[str] = ..., time_ms: _Optional[int] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., method: _Optional[str] = ..., objects: _Optional[_Mapping[str, str]] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., peer: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("principal", "action", "since_ms", "limit", "page_token")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    principal: str
    action: str
    since_ms: int
    limit: int
    page_token: str
    def __init__(self, principal: _Optional[str] = ..., action: _Optional[str] = ..., since_ms: _Optional[int] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
