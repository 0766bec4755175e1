"""The one interface to the master's state. SQLite is the embedded default (``sqlite.py``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager

from .records import (
    AgentRecord,
    ArtifactRecord,
    AuditRecord,
    DeviceRecord,
    CaseRecord,
    EventRecord,
    FileRecord,
    HospitalRecord,
    JobRecord,
    ModelRecord,
    ReviewRecord,
    SeriesRecord,
    ShardRecord,
    ShareRecord,
    UploadRecord,
    VersionRecord,
)


class Store(ABC):
    """Cases, uploads, files, series, jobs, shards, events, artifacts and agents.

    Every method is atomic on its own; ``transaction()`` groups several into one atomic unit
    (nested calls join the outer transaction).
    """

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def close(self) -> None: ...

    # cases and uploads
    @abstractmethod
    def add_case(self, case: CaseRecord) -> None: ...
    @abstractmethod
    def get_case(self, case_id: str) -> CaseRecord | None: ...
    @abstractmethod
    def list_cases(self, hospital: str | None = None, limit: int = -1, after_case_id: str = "") -> list[CaseRecord]:
        """All cases, or those ``hospital`` owns, oldest first: at most ``limit`` (-1: all),
        after the case ``after_case_id`` (the next page).

        Raises ``KeyError`` when ``after_case_id`` names no case."""
    @abstractmethod
    def list_visible_cases(self, hospital: str, now_ms: int, limit: int = -1,
                           after_case_id: str = "") -> list[CaseRecord]:
        """The cases ``hospital`` owns or has been shared (a share that has not ended by
        ``now_ms``), oldest first, paged as :meth:`list_cases`."""

    @abstractmethod
    def set_case_committed(self, case_id: str) -> None: ...
    @abstractmethod
    def delete_case(self, case_id: str) -> None:
        """Remove a case with its uploads, files and series (not its blobs)."""

    @abstractmethod
    def add_upload(self, upload: UploadRecord) -> None: ...
    @abstractmethod
    def get_upload(self, upload_id: str) -> UploadRecord | None: ...
    @abstractmethod
    def find_upload(self, case_id: str, file_name: str, sha256: str) -> UploadRecord | None: ...
    @abstractmethod
    def set_upload_committed(self, upload_id: str, committed_bytes: int, updated_ms: int = 0) -> None: ...
    @abstractmethod
    def delete_upload(self, upload_id: str) -> None: ...
    @abstractmethod
    def list_uploads(self, case_id: str) -> list[UploadRecord]: ...
    @abstractmethod
    def stale_uploads(self, before_ms: int, limit: int = 1000) -> list[UploadRecord]:
        """Uploads with no start or chunk since ``before_ms`` (ms since the epoch), oldest first."""

    @abstractmethod
    def count_open_cases(self, hospital: str | None = None) -> int:
        """Uncommitted cases, of ``hospital`` or of all hospitals."""

    @abstractmethod
    def count_open_uploads(self, hospital: str | None = None) -> int:
        """Started, unfinished uploads into the cases of ``hospital``, or of all hospitals."""

    def case_usage(self, case_id: str) -> tuple[int, int]:
        """Files and bytes a case holds or is receiving: its files (pending ones too) and its open
        uploads, counted without listing them (checked before every file an upload starts)."""
        held = self.list_files(case_id) + self.list_pending_files(case_id) + self.list_uploads(case_id)
        return len(held), sum(f.size_bytes for f in held)

    def add_files(self, files: list[FileRecord]) -> None:
        """Keep several files in one transaction (an upload stream's batch)."""
        with self.transaction():
            for file in files:
                self.add_file(file)

    @abstractmethod
    def add_file(self, file: FileRecord) -> None: ...
    @abstractmethod
    def list_files(self, case_id: str) -> list[FileRecord]:
        """The case's files, without those of an add not committed yet (``FileRecord.pending``)."""
    @abstractmethod
    def list_pending_files(self, case_id: str) -> list[FileRecord]:
        """The files of an add to the committed case that is not committed yet."""
    @abstractmethod
    def set_files_added(self, file_ids: list[str]) -> None:
        """Commit an add: these pending files (those its commit checked) become their case's files."""
    @abstractmethod
    def delete_pending_files(self, case_id: str) -> None:
        """Forget a refused add's files (not their blobs)."""
    @abstractmethod
    def find_file(self, case_id: str, file_name: str, sha256: str) -> FileRecord | None: ...
    @abstractmethod
    def add_series(self, series: SeriesRecord) -> None: ...
    @abstractmethod
    def list_series(self, case_id: str) -> list[SeriesRecord]: ...
    @abstractmethod
    def blob_in_use(self, sha256: str) -> bool:
        """True when any file, series, shard result or artifact still refers to the blob."""

    # jobs and shards
    @abstractmethod
    def add_job(self, job: JobRecord) -> None: ...
    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...
    @abstractmethod
    def find_job_by_key(self, idempotency_key: str) -> JobRecord | None: ...
    @abstractmethod
    def list_jobs(self, states: Sequence[str] = (), limit: int = 100, after_job_id: str = "") -> list[JobRecord]:
        """Jobs newest first; ``after_job_id``: those listed after that job (the next page).

        Raises ``KeyError`` when ``after_job_id`` names no job."""
    @abstractmethod
    def update_job(self, job: JobRecord) -> None: ...
    @abstractmethod
    def count_active_jobs(self, hospital: str) -> int:
        """Queued or running jobs on the cases ``hospital`` owns."""

    @abstractmethod
    def add_shards(self, shards: Sequence[ShardRecord]) -> None: ...
    @abstractmethod
    def get_shard(self, shard_id: str) -> ShardRecord | None: ...
    @abstractmethod
    def list_shards(self, job_id: str, stage: str | None = None) -> list[ShardRecord]: ...
    @abstractmethod
    def update_shard(self, shard: ShardRecord) -> None: ...
    @abstractmethod
    def ready_shards(self, limit: int = 1000) -> list[ShardRecord]:
        """Queued shards of live jobs: highest job priority first, then oldest job, then index."""

    @abstractmethod
    def count_shards(self, state: str) -> int: ...
    @abstractmethod
    def requeue_running_shards(self) -> int:
        """After a master restart: shards that were running have lost their Ray call; queue them."""

    # events and artifacts
    @abstractmethod
    def append_event(self, event: EventRecord) -> EventRecord:
        """Store the event with the next sequence number of its job (1, 2, ...); returns it."""

    @abstractmethod
    def events_after(self, job_id: str, after_seq: int, limit: int = 1000) -> list[EventRecord]: ...
    @abstractmethod
    def add_artifact(self, artifact: ArtifactRecord) -> None: ...
    @abstractmethod
    def get_artifact(self, artifact_id: str) -> ArtifactRecord | None: ...
    @abstractmethod
    def list_artifacts(self, job_id: str) -> list[ArtifactRecord]: ...
    @abstractmethod
    def update_artifact(self, artifact: ArtifactRecord) -> None:
        """Point an artifact at new content (a version whose approval tags were rewritten)."""

    # versions and reviews of structure sets and plans; shared cases
    @abstractmethod
    def add_version(self, version: VersionRecord) -> None:
        """Raises the driver's integrity error when the job's lineage already has that number."""

    @abstractmethod
    def update_version(self, version: VersionRecord) -> None: ...
    @abstractmethod
    def list_versions(self, job_id: str) -> list[VersionRecord]:
        """A job's versions by lineage, then number."""

    @abstractmethod
    def add_review(self, review: ReviewRecord) -> None: ...
    @abstractmethod
    def list_reviews(self, version_id: str) -> list[ReviewRecord]:
        """A version's transitions and comments, oldest first."""

    @abstractmethod
    def put_share(self, share: ShareRecord) -> None:
        """Share a case with a hospital, or replace that share's grant and end."""

    @abstractmethod
    def get_share(self, case_id: str, hospital: str) -> ShareRecord | None: ...
    @abstractmethod
    def delete_share(self, case_id: str, hospital: str) -> bool:
        """End a share at once; False when there was none."""

    @abstractmethod
    def list_shares(self, case_id: str) -> list[ShareRecord]: ...

    # agents
    @abstractmethod
    def upsert_agent(self, agent: AgentRecord) -> None: ...
    @abstractmethod
    def get_agent(self, agent_id: str) -> AgentRecord | None: ...
    @abstractmethod
    def list_agents(self) -> list[AgentRecord]: ...

    # devices
    @abstractmethod
    def upsert_device(self, device: DeviceRecord) -> None: ...
    @abstractmethod
    def get_device(self, device_id: str) -> DeviceRecord | None: ...
    @abstractmethod
    def list_devices(self) -> list[DeviceRecord]: ...

    # segmentation models
    @abstractmethod
    def add_model(self, model: ModelRecord) -> None:
        """Raises ``KeyError`` when the hash, or the name and version, is already registered."""

    @abstractmethod
    def get_model(self, sha256: str) -> ModelRecord | None: ...
    @abstractmethod
    def find_models(self, name: str, version: str = "") -> list[ModelRecord]:
        """Models of that name (and version, when given), newest registration first."""

    @abstractmethod
    def list_models(self) -> list[ModelRecord]: ...
    # hospitals and the audit log
    @abstractmethod
    def add_hospital(self, hospital: HospitalRecord) -> None: ...
    @abstractmethod
    def get_hospital(self, name: str) -> HospitalRecord | None: ...
    @abstractmethod
    def find_hospital_by_token(self, token_sha256: str) -> HospitalRecord | None:
        """The hospital whose token has this digest, unless revoked."""

    @abstractmethod
    def list_hospitals(self) -> list[HospitalRecord]: ...
    @abstractmethod
    def update_hospital(self, hospital: HospitalRecord) -> None: ...
    @abstractmethod
    def add_audit(self, entry: AuditRecord) -> None: ...
    @abstractmethod
    def update_audit_detail(self, audit_id: str, detail: str) -> None:
        """Rewrite one entry's detail (a rate-limit summary that keeps counting)."""

    @abstractmethod
    def list_audit(self, principal: str = "", action: str = "", since_ms: int = 0, limit: int = 1000,
                   after_audit_id: str = "") -> list[AuditRecord]:
        """Audit entries oldest first, filtered by who, what and since when (all optional);
        ``after_audit_id``: those listed after that entry (the next page).

        Raises ``KeyError`` when ``after_audit_id`` names no entry."""
