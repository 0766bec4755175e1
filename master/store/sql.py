"""The store in SQL, written once for SQLite (``sqlite.py``) and PostgreSQL (``postgres.py``).

Each record dataclass maps to one table whose columns are its fields; list and dict fields are
stored as JSON text. Statements use ``?`` placeholders and SQL that both databases read the same
way; a backend supplies the connection, how a transaction begins, column types and the schema
bookkeeping. One connection guarded by a re-entrant lock: the master is one process, and a
transaction holds the database's write lock from its first statement, so transactions run one
after the other (the scheduler's read-check-write steps rely on that).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from .base import Store
from .records import (
    QUEUED,
    RUNNING,
    TERMINAL_JOB_STATES,
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
    ReviewRecord,
    SeriesRecord,
    ShardRecord,
    ShareRecord,
    UploadRecord,
    VersionRecord,
)

SCHEMA_VERSION = 5
# Version 3 added case owners, agent identities, hospitals and the audit log; version 4 the time of
# an upload's last chunk; version 5 versions and reviews of structure sets and plans, and shared
# cases (new tables, created when missing); series gained role, suv_factor and echo_number (MR and
# PET beside the planning CT) and files gained pending (an add to a committed case) within version
# 5: added columns whose defaults describe the series and files stored before. An older store is migrated in place: a column a record has gained is added with
# the field's default (see ``_add_missing_columns``).
OLDEST_SCHEMA_VERSION = 2
# Text the master itself writes (job and shard errors, event messages, audit details) is cut to
# this many characters: an engine's error may echo a whole input.
MAX_STORED_TEXT_CHARS = 4000
_CLIPPED = {"JobRecord": ("error",), "ShardRecord": ("error",), "EventRecord": ("message",),
            "AuditRecord": ("detail",), "VersionRecord": ("comment",), "ReviewRecord": ("comment",)}
R = TypeVar("R")

TABLES: dict[type, tuple[str, str]] = {
    CaseRecord: ("cases", "case_id"),
    UploadRecord: ("uploads", "upload_id"),
    FileRecord: ("files", "file_id"),
    SeriesRecord: ("series", "series_id"),
    JobRecord: ("jobs", "job_id"),
    ShardRecord: ("shards", "shard_id"),
    EventRecord: ("events", "job_id, seq"),
    ArtifactRecord: ("artifacts", "artifact_id"),
    AgentRecord: ("agents", "agent_id"),
    DeviceRecord: ("devices", "device_id"),
    ModelRecord: ("models", "sha256"),
    HospitalRecord: ("hospitals", "name"),
    AuditRecord: ("audit", "audit_id"),
    VersionRecord: ("versions", "version_id"),
    ReviewRecord: ("reviews", "review_id"),
    ShareRecord: ("shares", "case_id, hospital"),
}

INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(idempotency_key) WHERE idempotency_key != ''",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
    "CREATE INDEX IF NOT EXISTS shards_job ON shards(job_id, stage)",
    "CREATE INDEX IF NOT EXISTS shards_state ON shards(state)",
    "CREATE INDEX IF NOT EXISTS files_case ON files(case_id)",
    "CREATE INDEX IF NOT EXISTS uploads_case ON uploads(case_id, file_name, sha256)",
    "CREATE INDEX IF NOT EXISTS series_case ON series(case_id)",
    "CREATE INDEX IF NOT EXISTS artifacts_job ON artifacts(job_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS models_name ON models(name, version)",
    "CREATE INDEX IF NOT EXISTS cases_hospital ON cases(hospital)",
    "CREATE UNIQUE INDEX IF NOT EXISTS hospitals_token ON hospitals(token_sha256)",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit(time_ms)",
    "CREATE UNIQUE INDEX IF NOT EXISTS versions_number ON versions(job_id, lineage, version)",
    "CREATE INDEX IF NOT EXISTS reviews_version ON reviews(version_id)",
    "CREATE INDEX IF NOT EXISTS shares_hospital ON shares(hospital)",
)


def is_json(field: dataclasses.Field) -> bool:
    return str(field.type).startswith(("list", "dict"))


def _columns(record: type) -> str:
    return ", ".join('"' + f.name + '"' for f in dataclasses.fields(record))


def _limit(limit: int) -> str:
    """``limit`` < 0 is no limit (PostgreSQL refuses a negative LIMIT)."""
    return f"LIMIT {int(limit)}" if limit >= 0 else ""


def _clip_text(text: str) -> str:
    """Cut to MAX_STORED_TEXT_CHARS; a NUL character (PostgreSQL text cannot hold one) is spelled out."""
    text = text.replace("\x00", "\\x00")
    if len(text) <= MAX_STORED_TEXT_CHARS:
        return text
    return f"{text[:MAX_STORED_TEXT_CHARS]}...({len(text)} characters)"


class SqlStore(Store):
    """The store's SQL over one DB-API connection in autocommit mode (a backend's ``__init__``
    connects, then calls ``_create_schema``).

    ``integrity_error``: the driver's exception for a violated key or unique index.
    """

    integrity_error: type[Exception] = Exception

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self._depth = 0

    # what a backend supplies
    @abstractmethod
    def _begin(self) -> None:
        """Start a transaction that holds the database's write lock until it ends."""

    @abstractmethod
    def _column_ddl(self, field: dataclasses.Field) -> str:
        """The column definition of a record field (quoted name, type, if the backend has types)."""

    @abstractmethod
    def _schema_version(self) -> int:
        """The stored schema version (0: a new store)."""

    @abstractmethod
    def _set_schema_version(self, version: int) -> None: ...

    @abstractmethod
    def _existing_columns(self, table: str) -> set[str]: ...

    def _create_table(self, record: type) -> str:
        table, key = TABLES[record]
        cols = ", ".join(self._column_ddl(f) for f in dataclasses.fields(record))
        return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({key}))"

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, tuple(args))

    def _to_db(self, field: dataclasses.Field, value: Any) -> Any:
        return json.dumps(value) if is_json(field) else value

    # schema
    def _create_schema(self, where: str) -> None:
        """Create the tables, or migrate an older store; ``where`` names the store in errors."""
        with self.transaction():
            version = self._schema_version()
            if version and not OLDEST_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
                raise RuntimeError(f"{where}: store schema {version}, this master knows {SCHEMA_VERSION}")
            for record in TABLES:
                self._execute(self._create_table(record))
                self._add_missing_columns(record)
            for ddl in INDEXES:
                self._execute(ddl)
            self._set_schema_version(SCHEMA_VERSION)

    def _add_missing_columns(self, record: type) -> None:
        """Migration: a field the record gained since the store was made becomes a column holding
        the field's default."""
        table, _ = TABLES[record]
        have = self._existing_columns(table)
        for f in dataclasses.fields(record):
            if f.name in have:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            value = json.dumps(default) if is_json(f) else default
            if isinstance(value, bool):
                literal = "TRUE" if value else "FALSE"
            else:
                literal = f"'{value}'" if isinstance(value, str) else repr(value)
            self._execute(f"ALTER TABLE {table} ADD COLUMN {self._column_ddl(f)} DEFAULT {literal}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._begin()
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # generic row mapping
    def _insert(self, record: Any, replace: bool = False) -> None:
        """Insert a row; ``replace``: or update the row with the record's key."""
        table, key = TABLES[type(record)]
        fields = dataclasses.fields(record)
        clipped = _CLIPPED.get(type(record).__name__, ())
        values = [self._to_db(f, _clip_text(getattr(record, f.name)) if f.name in clipped else getattr(record, f.name))
                  for f in fields]
        sql = f"INSERT INTO {table} ({_columns(type(record))}) VALUES ({', '.join('?' * len(fields))})"
        if replace:
            sets = ", ".join(f'"{f.name}" = excluded."{f.name}"' for f in fields)
            sql += f" ON CONFLICT ({key}) DO UPDATE SET {sets}"
        with self.transaction():
            self._execute(sql, values)

    def _select(self, record: type[R], where: str = "TRUE", args: Sequence[Any] = (), tail: str = "") -> list[R]:
        table, _ = TABLES[record]
        fields = dataclasses.fields(record)
        sql = f"SELECT {_columns(record)} FROM {table} WHERE {where} {tail}"
        with self._lock:
            rows = self._execute(sql, args).fetchall()
        return [
            record(**{f.name: json.loads(v) if is_json(f) else v for f, v in zip(fields, row)})  # type: ignore[call-arg]
            for row in rows
        ]

    def _one(self, record: type[R], where: str, args: Sequence[Any]) -> R | None:
        rows = self._select(record, where, args)
        return rows[0] if rows else None

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self.transaction():
            return self._execute(sql, args).rowcount

    def _scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._execute(sql, args).fetchone()[0]

    # cases and uploads
    def add_case(self, case: CaseRecord) -> None:
        self._insert(case)

    def get_case(self, case_id: str) -> CaseRecord | None:
        return self._one(CaseRecord, "case_id = ?", (case_id,))

    def list_cases(self, hospital: str | None = None, limit: int = -1, after_case_id: str = "") -> list[CaseRecord]:
        where, args = ["TRUE" if hospital is None else "hospital = ?"], [] if hospital is None else [hospital]
        if after_case_id:
            after = self.get_case(after_case_id)
            if after is None:
                raise KeyError(after_case_id)
            where.append("(created_ms > ? OR (created_ms = ? AND case_id > ?))")
            args += [after.created_ms, after.created_ms, after.case_id]
        return self._select(CaseRecord, " AND ".join(where), args, f"ORDER BY created_ms, case_id {_limit(limit)}")

    def list_visible_cases(self, hospital: str, now_ms: int, limit: int = -1,
                           after_case_id: str = "") -> list[CaseRecord]:
        where = ["(hospital = ? OR case_id IN (SELECT case_id FROM shares WHERE hospital = ? "
                 "AND (until_ms = 0 OR until_ms > ?)))"]
        args: list[Any] = [hospital, hospital, now_ms]
        if after_case_id:
            after = self.get_case(after_case_id)
            if after is None:
                raise KeyError(after_case_id)
            where.append("(created_ms > ? OR (created_ms = ? AND case_id > ?))")
            args += [after.created_ms, after.created_ms, after.case_id]
        return self._select(CaseRecord, " AND ".join(where), args, f"ORDER BY created_ms, case_id {_limit(limit)}")

    def set_case_committed(self, case_id: str) -> None:
        self._exec("UPDATE cases SET committed = TRUE WHERE case_id = ?", (case_id,))

    def delete_case(self, case_id: str) -> None:
        with self.transaction():
            for table in ("uploads", "files", "series", "shares", "cases"):
                self._execute(f"DELETE FROM {table} WHERE case_id = ?", (case_id,))

    def add_upload(self, upload: UploadRecord) -> None:
        self._insert(upload)

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        return self._one(UploadRecord, "upload_id = ?", (upload_id,))

    def find_upload(self, case_id: str, file_name: str, sha256: str) -> UploadRecord | None:
        return self._one(UploadRecord, "case_id = ? AND file_name = ? AND sha256 = ?", (case_id, file_name, sha256))

    def set_upload_committed(self, upload_id: str, committed_bytes: int, updated_ms: int = 0) -> None:
        self._exec("UPDATE uploads SET committed_bytes = ?, updated_ms = ? WHERE upload_id = ?",
                   (committed_bytes, updated_ms, upload_id))

    def delete_upload(self, upload_id: str) -> None:
        self._exec("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))

    def list_uploads(self, case_id: str) -> list[UploadRecord]:
        return self._select(UploadRecord, "case_id = ?", (case_id,))

    def stale_uploads(self, before_ms: int, limit: int = 1000) -> list[UploadRecord]:
        return self._select(UploadRecord, "created_ms < ? AND updated_ms < ?", (before_ms, before_ms),
                            f"ORDER BY created_ms {_limit(limit)}")

    def count_open_cases(self, hospital: str | None = None) -> int:
        where, args = ("committed = FALSE", ()) if hospital is None else ("committed = FALSE AND hospital = ?", (hospital,))
        return self._scalar(f"SELECT COUNT(*) FROM cases WHERE {where}", args)

    def count_open_uploads(self, hospital: str | None = None) -> int:
        if hospital is None:
            return self._scalar("SELECT COUNT(*) FROM uploads")
        return self._scalar(
            "SELECT COUNT(*) FROM uploads WHERE case_id IN (SELECT case_id FROM cases WHERE hospital = ?)", (hospital,)
        )

    def case_usage(self, case_id: str) -> tuple[int, int]:
        with self._lock:
            row = self._execute(
                "SELECT (SELECT COUNT(*) FROM files WHERE case_id = ?) + (SELECT COUNT(*) FROM uploads WHERE case_id = ?), "
                "(SELECT COALESCE(SUM(size_bytes), 0) FROM files WHERE case_id = ?) "
                "+ (SELECT COALESCE(SUM(size_bytes), 0) FROM uploads WHERE case_id = ?)",
                (case_id,) * 4).fetchone()
        return int(row[0]), int(row[1])

    def add_file(self, file: FileRecord) -> None:
        self._insert(file)

    def list_files(self, case_id: str) -> list[FileRecord]:
        return self._select(FileRecord, "case_id = ? AND pending = FALSE", (case_id,), "ORDER BY file_name")

    def list_pending_files(self, case_id: str) -> list[FileRecord]:
        return self._select(FileRecord, "case_id = ? AND pending = TRUE", (case_id,), "ORDER BY file_name")

    def set_files_added(self, file_ids: list[str]) -> None:
        with self.transaction():
            for file_id in file_ids:
                self._execute("UPDATE files SET pending = FALSE WHERE file_id = ?", (file_id,))

    def delete_pending_files(self, case_id: str) -> None:
        self._exec("DELETE FROM files WHERE case_id = ? AND pending = TRUE", (case_id,))

    def find_file(self, case_id: str, file_name: str, sha256: str) -> FileRecord | None:
        return self._one(FileRecord, "case_id = ? AND file_name = ? AND sha256 = ?", (case_id, file_name, sha256))

    def add_series(self, series: SeriesRecord) -> None:
        self._insert(series)

    def list_series(self, case_id: str) -> list[SeriesRecord]:
        # The planning CT first (callers take series[0] as the image to plan on), then by modality.
        return self._select(SeriesRecord, "case_id = ?", (case_id,),
                            "ORDER BY CASE WHEN role = 'planning' THEN 0 ELSE 1 END, "
                            "modality, series_instance_uid, echo_number, series_id")

    def blob_in_use(self, sha256: str) -> bool:
        queries = (
            "SELECT 1 FROM files WHERE sha256 = ?",
            "SELECT 1 FROM series WHERE volume_sha256 = ? OR meta_sha256 = ?",
            "SELECT 1 FROM shards WHERE result_sha256 = ?",
            "SELECT 1 FROM artifacts WHERE sha256 = ?",
            "SELECT 1 FROM models WHERE weights_sha256 = ?",
        )
        with self._lock:
            return any(self._execute(q + " LIMIT 1", (sha256,) * q.count("?")).fetchone() for q in queries)

    # jobs and shards
    def add_job(self, job: JobRecord) -> None:
        self._insert(job)

    def get_job(self, job_id: str) -> JobRecord | None:
        return self._one(JobRecord, "job_id = ?", (job_id,))

    def find_job_by_key(self, idempotency_key: str) -> JobRecord | None:
        return self._one(JobRecord, "idempotency_key = ?", (idempotency_key,))

    def list_jobs(self, states: Sequence[str] = (), limit: int = 100, after_job_id: str = "") -> list[JobRecord]:
        where, args = [f"state IN ({', '.join('?' * len(states))})" if states else "TRUE"], list(states)
        if after_job_id:
            after = self.get_job(after_job_id)
            if after is None:
                raise KeyError(after_job_id)
            where.append("(created_ms < ? OR (created_ms = ? AND job_id < ?))")
            args += [after.created_ms, after.created_ms, after.job_id]
        return self._select(JobRecord, " AND ".join(where), args,
                            f"ORDER BY created_ms DESC, job_id DESC {_limit(limit)}")

    def update_job(self, job: JobRecord) -> None:
        self._insert(job, replace=True)

    def count_active_jobs(self, hospital: str) -> int:
        return self._scalar(
            "SELECT COUNT(*) FROM jobs WHERE state IN (?, ?) "
            "AND case_id IN (SELECT case_id FROM cases WHERE hospital = ?)", (QUEUED, RUNNING, hospital),
        )

    def add_shards(self, shards: Sequence[ShardRecord]) -> None:
        with self.transaction():
            for shard in shards:
                self._insert(shard)

    def get_shard(self, shard_id: str) -> ShardRecord | None:
        return self._one(ShardRecord, "shard_id = ?", (shard_id,))

    def list_shards(self, job_id: str, stage: str | None = None) -> list[ShardRecord]:
        if stage is None:
            return self._select(ShardRecord, "job_id = ?", (job_id,), "ORDER BY rowid")
        return self._select(ShardRecord, "job_id = ? AND stage = ?", (job_id, stage), 'ORDER BY "index"')

    def update_shard(self, shard: ShardRecord) -> None:
        self._insert(shard, replace=True)

    def ready_shards(self, limit: int = 1000) -> list[ShardRecord]:
        terminal = tuple(sorted(TERMINAL_JOB_STATES))
        return self._select(
            ShardRecord,
            f"state = ? AND job_id IN (SELECT job_id FROM jobs WHERE state NOT IN ({', '.join('?' * len(terminal))}))",
            (QUEUED, *terminal),
            "ORDER BY (SELECT priority FROM jobs j WHERE j.job_id = shards.job_id) DESC, "
            "(SELECT created_ms FROM jobs j WHERE j.job_id = shards.job_id), job_id, \"index\" "
            f"{_limit(limit)}",
        )

    def count_shards(self, state: str) -> int:
        return self._scalar("SELECT COUNT(*) FROM shards WHERE state = ?", (state,))

    def requeue_running_shards(self) -> int:
        return self._exec("UPDATE shards SET state = ?, agent_id = '' WHERE state = ?", (QUEUED, RUNNING))

    # events and artifacts
    def append_event(self, event: EventRecord) -> EventRecord:
        with self.transaction():
            last = self._execute("SELECT MAX(seq) FROM events WHERE job_id = ?", (event.job_id,)).fetchone()[0]
            stored = dataclasses.replace(event, seq=(last or 0) + 1)
            self._insert(stored)
        return stored

    def events_after(self, job_id: str, after_seq: int, limit: int = 1000) -> list[EventRecord]:
        return self._select(EventRecord, "job_id = ? AND seq > ?", (job_id, after_seq), f"ORDER BY seq {_limit(limit)}")

    def add_artifact(self, artifact: ArtifactRecord) -> None:
        self._insert(artifact)

    def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        return self._one(ArtifactRecord, "artifact_id = ?", (artifact_id,))

    def list_artifacts(self, job_id: str) -> list[ArtifactRecord]:
        return self._select(ArtifactRecord, "job_id = ?", (job_id,), "ORDER BY name")

    def update_artifact(self, artifact: ArtifactRecord) -> None:
        self._insert(artifact, replace=True)

    # versions, reviews and shares
    def add_version(self, version: VersionRecord) -> None:
        self._insert(version)

    def update_version(self, version: VersionRecord) -> None:
        self._insert(version, replace=True)

    def list_versions(self, job_id: str) -> list[VersionRecord]:
        return self._select(VersionRecord, "job_id = ?", (job_id,), "ORDER BY lineage, version")

    def add_review(self, review: ReviewRecord) -> None:
        self._insert(review)

    def list_reviews(self, version_id: str) -> list[ReviewRecord]:
        return self._select(ReviewRecord, "version_id = ?", (version_id,), "ORDER BY time_ms, rowid")

    def put_share(self, share: ShareRecord) -> None:
        self._insert(share, replace=True)

    def get_share(self, case_id: str, hospital: str) -> ShareRecord | None:
        return self._one(ShareRecord, "case_id = ? AND hospital = ?", (case_id, hospital))

    def delete_share(self, case_id: str, hospital: str) -> bool:
        return self._exec("DELETE FROM shares WHERE case_id = ? AND hospital = ?", (case_id, hospital)) > 0

    def list_shares(self, case_id: str) -> list[ShareRecord]:
        return self._select(ShareRecord, "case_id = ?", (case_id,), "ORDER BY hospital")

    # agents
    def upsert_agent(self, agent: AgentRecord) -> None:
        self._insert(agent, replace=True)

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        return self._one(AgentRecord, "agent_id = ?", (agent_id,))

    def list_agents(self) -> list[AgentRecord]:
        return self._select(AgentRecord, tail="ORDER BY name")

    # devices
    def upsert_device(self, device: DeviceRecord) -> None:
        self._insert(device, replace=True)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        return self._one(DeviceRecord, "device_id = ?", (device_id,))

    def list_devices(self) -> list[DeviceRecord]:
        return self._select(DeviceRecord, tail="ORDER BY hospital, device_id")

    # segmentation models
    def add_model(self, model: ModelRecord) -> None:
        # A savepoint: in a caller's transaction the refused insert is undone alone, and the
        # transaction goes on (PostgreSQL would otherwise refuse every later statement in it).
        with self.transaction():
            self._execute("SAVEPOINT add_model")
            try:
                self._insert(model)
            except self.integrity_error:
                self._execute("ROLLBACK TO SAVEPOINT add_model")
                self._execute("RELEASE SAVEPOINT add_model")
                raise KeyError(f"model {model.name} {model.version} ({model.sha256}) is already registered") from None
            self._execute("RELEASE SAVEPOINT add_model")

    def get_model(self, sha256: str) -> ModelRecord | None:
        return self._one(ModelRecord, "sha256 = ?", (sha256,))

    def find_models(self, name: str, version: str = "") -> list[ModelRecord]:
        where, args = ("name = ? AND version = ?", (name, version)) if version else ("name = ?", (name,))
        return self._select(ModelRecord, where, args, "ORDER BY registered_ms DESC, rowid DESC")

    def list_models(self) -> list[ModelRecord]:
        return self._select(ModelRecord, tail="ORDER BY name, registered_ms")

    # hospitals and the audit log
    def add_hospital(self, hospital: HospitalRecord) -> None:
        self._insert(hospital)

    def get_hospital(self, name: str) -> HospitalRecord | None:
        return self._one(HospitalRecord, "name = ?", (name,))

    def find_hospital_by_token(self, token_sha256: str) -> HospitalRecord | None:
        return self._one(HospitalRecord, "token_sha256 = ? AND revoked_ms = 0", (token_sha256,))

    def list_hospitals(self) -> list[HospitalRecord]:
        return self._select(HospitalRecord, tail="ORDER BY name")

    def update_hospital(self, hospital: HospitalRecord) -> None:
        self._insert(hospital, replace=True)

    def add_audit(self, entry: AuditRecord) -> None:
        self._insert(entry)

    def update_audit_detail(self, audit_id: str, detail: str) -> None:
        self._exec("UPDATE audit SET detail = ? WHERE audit_id = ?", (_clip_text(detail), audit_id))

    def list_audit(self, principal: str = "", action: str = "", since_ms: int = 0, limit: int = 1000,
                   after_audit_id: str = "") -> list[AuditRecord]:
        where, args = ["time_ms >= ?"], [since_ms]
        if after_audit_id:
            with self._lock:
                row = self._execute("SELECT time_ms, rowid FROM audit WHERE audit_id = ?", (after_audit_id,)).fetchone()
            if row is None:
                raise KeyError(after_audit_id)
            where.append("(time_ms > ? OR (time_ms = ? AND rowid > ?))")
            args += [row[0], row[0], row[1]]
        if principal:
            where.append("principal = ?")
            args.append(principal)
        if action:
            where.append("action = ?")
            args.append(action)
        return self._select(AuditRecord, " AND ".join(where), args, f"ORDER BY time_ms, rowid {_limit(limit)}")
