from rtgrid.protos.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("name", "hostname", "cpus", "ram_bytes", "gpus", "engine_versions", "slots", "agent_id")
    class EngineVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    hostname: str
    cpus: int
    ram_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuInfo]
    engine_versions: _containers.ScalarMap[str, str]
    slots: int
    agent_id: str
    def __init__(self, name: _Optional[str] = ..., hostname: _Optional[str] = ..., cpus: _Optional[int] = ..., ram_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.GpuInfo, _Mapping]]] = ..., engine_versions: _Optional[_Mapping[str, str]] = ..., slots: _Optional[int] = ..., agent_id: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("agent_id", "ray_address", "ray_resource", "heartbeat_interval_s", "heartbeat_patience")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RAY_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    ray_address: str
    ray_resource: str
    heartbeat_interval_s: float
    heartbeat_patience: int
    def __init__(self, agent_id: _Optional[str] = ..., ray_address: _Optional[str] = ..., ray_resource: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_patience: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("drain", "running_shards", "known")
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    drain: bool
    running_shards: int
    known: bool
    def __init__(self, drain: _Optional[bool] = ..., running_shards: _Optional[int] = ..., known: _Optional[bool] = ...) -> None: ...

class AgentDrainRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class FetchModelRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...
