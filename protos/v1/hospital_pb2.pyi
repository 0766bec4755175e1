from rtgrid.protos.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateCaseRequest(_message.Message):
    __slots__ = ("label",)
    LABEL_FIELD_NUMBER: _ClassVar[int]
    label: str
    def __init__(self, label: _Optional[str] = ...) -> None: ...

class StartUploadRequest(_message.Message):
    __slots__ = ("case_id", "file_name", "size_bytes", "sha256")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    file_name: str
    size_bytes: int
    sha256: str
    def __init__(self, case_id: _Optional[str] = ..., file_name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("upload_id", "committed_bytes", "size_bytes", "max_chunk_bytes")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    committed_bytes: int
    size_bytes: int
    max_chunk_bytes: int
    def __init__(self, upload_id: _Optional[str] = ..., committed_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("upload_id", "offset", "data", "crc32")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    offset: int
    data: bytes
    crc32: int
    def __init__(self, upload_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ...) -> None: ...

class UploadFilesRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: StartUploadRequest
    chunk: UploadChunk
    def __init__(self, start: _Optional[_Union[StartUploadRequest, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ...) -> None: ...

class FinishUploadRequest(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...

class UploadedFile(_message.Message):
    __slots__ = ("file_id", "case_id", "file_name", "modality", "sop_instance_uid", "size_bytes", "sha256", "notes")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    case_id: str
    file_name: str
    modality: str
    sop_instance_uid: str
    size_bytes: int
    sha256: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, file_id: _Optional[str] = ..., case_id: _Optional[str] = ..., file_name: _Optional[str] = ..., modality: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class CommitCaseRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class DeleteCaseRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class ListCasesRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCasesResponse(_message.Message):
    __slots__ = ("cases", "next_page_token")
    CASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[_common_pb2.Case]
    next_page_token: str
    def __init__(self, cases: _Optional[_Iterable[_Union[_common_pb2.Case, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("case_id", "kind", "params", "priority", "idempotency_key")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    kind: str
    params: _containers.ScalarMap[str, str]
    priority: int
    idempotency_key: str
    def __init__(self, case_id: _Optional[str] = ..., kind: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("job_id", "limit", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    limit: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_page_token")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Artifact]
    next_page_token: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[_common_pb2.Artifact, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "offset")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    offset: int
    def __init__(self, artifact_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class Review(_message.Message):
    __slots__ = ("time_ms", "principal", "reviewer_name", "from_status", "to_status", "comment")
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    time_ms: int
    principal: str
    reviewer_name: str
    from_status: str
    to_status: str
    comment: str
    def __init__(self, time_ms: _Optional[int] = ..., principal: _Optional[str] = ..., reviewer_name: _Optional[str] = ..., from_status: _Optional[str] = ..., to_status: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("version_id", "job_id", "lineage", "version", "artifact_id", "artifact_name", "kind", "status", "author", "created_ms", "reviewer_name", "reviewed_by", "reviewed_ms", "comment", "history")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_NAME_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_BY_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_MS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    job_id: str
    lineage: str
    version: int
    artifact_id: str
    artifact_name: str
    kind: str
    status: str
    author: str
    created_ms: int
    reviewer_name: str
    reviewed_by: str
    reviewed_ms: int
    comment: str
    history: _containers.RepeatedCompositeFieldContainer[Review]
    def __init__(self, version_id: _Optional[str] = ..., job_id: _Optional[str] = ..., lineage: _Optional[str] = ..., version: _Optional[int] = ..., artifact_id: _Optional[str] = ..., artifact_name: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., author: _Optional[str] = ..., created_ms: _Optional[int] = ..., reviewer_name: _Optional[str] = ..., reviewed_by: _Optional[str] = ..., reviewed_ms: _Optional[int] = ..., comment: _Optional[str] = ..., history: _Optional[_Iterable[_Union[Review, _Mapping]]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ...) -> None: ...

class ReviewVersionRequest(_message.Message):
    __slots__ = ("job_id", "artifact_name", "action", "reviewer_name", "comment")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_NAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    artifact_name: str
    action: str
    reviewer_name: str
    comment: str
    def __init__(self, job_id: _Optional[str] = ..., artifact_name: _Optional[str] = ..., action: _Optional[str] = ..., reviewer_name: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class VersionChunk(_message.Message):
    __slots__ = ("job_id", "lineage", "size_bytes", "sha256", "offset", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lineage: str
    size_bytes: int
    sha256: str
    offset: int
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., lineage: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("case_id", "hospital", "grant", "shared_by", "created_ms", "until_ms")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    SHARED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    hospital: str
    grant: str
    shared_by: str
    created_ms: int
    until_ms: int
    def __init__(self, case_id: _Optional[str] = ..., hospital: _Optional[str] = ..., grant: _Optional[str] = ..., shared_by: _Optional[str] = ..., created_ms: _Optional[int] = ..., until_ms: _Optional[int] = ...) -> None: ...

class ShareCaseRequest(_message.Message):
    __slots__ = ("case_id", "hospital", "grant", "until_ms")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    hospital: str
    grant: str
    until_ms: int
    def __init__(self, case_id: _Optional[str] = ..., hospital: _Optional[str] = ..., grant: _Optional[str] = ..., until_ms: _Optional[int] = ...) -> None: ...

class UnshareCaseRequest(_message.Message):
    __slots__ = ("case_id", "hospital")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    hospital: str
    def __init__(self, case_id: _Optional[str] = ..., hospital: _Optional[str] = ...) -> None: ...

class ListSharesRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class ListSharesResponse(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[Share]
    def __init__(self, shares: _Optional[_Iterable[_Union[Share, _Mapping]]] = ...) -> None: ...
