"""Hospital API servicer: thin — each RPC translates protobuf and calls one plain function.

Tenant isolation lives here: every case, upload, job and artifact is reached through the case it
belongs to, and a case owned by another hospital is answered exactly like a missing one
(NOT_FOUND with the same message), so a hospital cannot even learn that it exists. A case its
owner shares with another hospital is readable by that hospital too, and reviewable as granted
(``consult.py``: the review, approval and sharing RPCs).
"""

from __future__ import annotations

import asyncio
import threading

from rtgrid.protos.v1 import common_pb2, hospital_pb2, hospital_pb2_grpc

from .. import intake
from ..config import DOWNLOAD_CHUNK_BYTES
from ..convert import artifact_to_proto, case_to_proto, event_to_proto, job_to_proto
from ..errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted
from ..events import EventBus
from ..scheduler import Scheduler
from ..security.auth import current_principal
from ..store.records import TERMINAL_JOB_STATES, CaseRecord, FileRecord, JobRecord
from ..approval import audit, check_conversion
from ..ids import now_ms
from .common import PAGE_BYTES, job_thread, listed, page_limit, paginate, stream, unary
from .consult import ConsultMixin

# A watcher re-reads the store at least this often, even without a wake-up; one read returns
# at most WATCH_PAGE events.
WATCH_POLL_S = 1.0
WATCH_PAGE = 1000
DEFAULT_CASE_PAGE = 1000
DEFAULT_ARTIFACT_PAGE = 1000


class HospitalService(ConsultMixin, hospital_pb2_grpc.HospitalServiceServicer):
    def __init__(self, intake_state: intake.Intake, scheduler: Scheduler, events: EventBus) -> None:
        self.intake = intake_state
        self.store = intake_state.store
        self.blobs = intake_state.blobs
        self.scheduler = scheduler
        self.events = events
        # Per hospital, the job limit is checked and applied as one step (hospitals do not wait on each other).
        self._submit_locks: dict[str, threading.Lock] = {}
        self.page_bytes = min(PAGE_BYTES, intake_state.config.max_message_bytes // 2)

    # ownership: the caller's own objects, or NOT_FOUND
    def _own_case(self, case_id: str) -> CaseRecord:
        case = intake.get_case(self.intake, case_id)
        if case.hospital != current_principal().name:
            raise NotFound(f"no case {case_id!r}")
        return case

    def _get_job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        case = self.store.get_case(job.case_id) if job is not None else None
        if case is None or case.hospital != current_principal().name:
            raise NotFound(f"no job {job_id!r}")
        return job

    def _own_upload(self, upload_id: str):
        upload = intake.get_upload(self.intake, upload_id)
        try:
            self._own_case(upload.case_id)
        except NotFound:
            raise NotFound(f"no open upload {upload_id!r} (finished, abandoned or never started)") from None
        return upload

    def _case_proto(self, case_id: str) -> common_pb2.Case:
        case = self._own_case(case_id)
        return case_to_proto(case, self.store.list_series(case_id), self.store.list_files(case_id))

    # Store and blob calls run in threads (contextvars, and so the caller's identity, go along):
    # a commit waiting on the disk must not stall every other call on the event loop.
    @unary
    async def CreateCase(self, request, context):
        return await asyncio.to_thread(
            lambda: self._case_proto(intake.create_case(self.intake, request.label, current_principal().name).case_id))

    @unary
    async def StartUpload(self, request, context):
        def start():
            self._own_case(request.case_id)
            return self._status(intake.start_upload(self.intake, request.case_id, request.file_name,
                                                    request.size_bytes, request.sha256))
        return await asyncio.to_thread(start)

    def _status(self, upload) -> hospital_pb2.UploadStatus:
        return hospital_pb2.UploadStatus(
            upload_id=upload.upload_id, committed_bytes=upload.committed_bytes, size_bytes=upload.size_bytes,
            max_chunk_bytes=self.intake.config.max_chunk_bytes,
        )

    async def _chunks(self, request_iterator):
        """The stream's chunks; a stream silent for ``upload_idle_s`` is ended (the client resumes
        from the bytes the master holds), so a stalled sender does not hold a stream open."""
        idle_s = self.intake.config.upload_idle_s
        iterator = aiter(request_iterator)
        while True:
            try:
                yield await asyncio.wait_for(anext(iterator), idle_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(f"no upload chunk for {idle_s:g} s (upload_idle_s): the stream is closed; "
                                       "resume from the bytes the master holds") from None

    @unary
    async def UploadChunks(self, request_iterator, context):
        upload = None

        def write(upload, chunk):  # one hop to a thread per chunk: the owner check rides along
            if upload is None or upload.upload_id != chunk.upload_id:
                upload = self._own_upload(chunk.upload_id)
            return intake.write_chunk(self.intake, upload, chunk.offset, chunk.data, chunk.crc32)

        received = self.scheduler.metrics.bytes_received.labels("upload")
        async for chunk in self._chunks(request_iterator):
            upload = await asyncio.to_thread(write, upload, chunk)
            received.inc(len(chunk.data))
        if upload is None:
            raise InvalidArgument("the upload stream carried no chunks")
        return self._status(upload)

    @unary
    async def FinishUpload(self, request, context):
        def finish():
            return intake.finish_upload(self.intake, request.upload_id, self._own_upload(request.upload_id))
        return _uploaded(await asyncio.to_thread(finish))

    @stream
    async def UploadFiles(self, request_iterator, context):
        """Many files on one stream (see the proto): chunks are taken on the loop (checks and an
        append), each file's start and each batch's keep go to a thread."""
        batch: list[intake.Streamed] = []
        current: intake.Streamed | None = None
        received = self.scheduler.metrics.bytes_received.labels("upload")

        owned: CaseRecord | None = None  # the stream's case, its owner checked at its first file

        def begin(start) -> intake.Streamed:
            nonlocal owned
            if owned is None or owned.case_id != start.case_id:
                owned = self._own_case(start.case_id)
            return intake.begin_streamed(self.intake, owned, start.file_name, start.size_bytes, start.sha256)

        try:
            async for message in self._chunks(request_iterator):
                if message.HasField("start"):
                    if current is not None:
                        raise InvalidArgument(f"{current.file_name}: {message.start.file_name!r} started after "
                                              f"{current.received} of its {current.size_bytes} bytes")
                    if batch and message.start.case_id != batch[0].case_id:
                        raise InvalidArgument("an upload stream carries the files of one case")
                    current = await asyncio.to_thread(begin, message.start)
                elif current is None:
                    raise InvalidArgument("a chunk of no file: a file's first message carries its start")
                chunk = message.chunk
                intake.add_streamed_chunk(self.intake, current, chunk.offset, chunk.data, chunk.crc32)
                received.inc(len(chunk.data))
                if current.complete:
                    batch, current = [*batch, current], None
                    if (len(batch) >= intake.KEEP_BATCH_FILES
                            or sum(f.size_bytes for f in batch) >= intake.KEEP_BATCH_BYTES):
                        kept, batch = batch, []
                        for record in await asyncio.to_thread(intake.keep_streamed, self.intake, kept):
                            yield _uploaded(record)
            if current is not None:
                raise InvalidArgument(f"{current.file_name}: the stream ended after {current.received} of its "
                                      f"{current.size_bytes} bytes")
            kept, batch = batch, []
            for record in await asyncio.to_thread(intake.keep_streamed, self.intake, kept):
                yield _uploaded(record)
        finally:  # files not kept no longer count against the limits
            intake.release_streamed(self.intake, [*batch, *([current] if current is not None else [])])

    @unary
    async def CommitCase(self, request, context):
        await asyncio.to_thread(self._own_case, request.case_id)
        await asyncio.to_thread(intake.commit_case, self.intake, request.case_id)
        return await asyncio.to_thread(self._case_proto, request.case_id)

    @unary
    async def DeleteCase(self, request, context):
        proto = await asyncio.to_thread(self._case_proto, request.case_id)
        await asyncio.to_thread(intake.delete_case, self.intake, request.case_id)
        return proto

    @unary
    async def GetCase(self, request, context):
        def get():
            case = self._readable_case(request.case_id, "GetCase")
            return case_to_proto(case, self.store.list_series(case.case_id), self.store.list_files(case.case_id))
        return await asyncio.to_thread(get)

    @unary
    async def ListCases(self, request, context):
        if request.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {request.limit}")
        hospital = current_principal().name

        def listed_case(c: CaseRecord) -> common_pb2.Case:
            if c.hospital != hospital:  # a shared case: who saw it is audited
                audit(self.store, hospital, "consult", {"case_id": c.case_id, "owner": c.hospital},
                      "ListCases through a share")
            return case_to_proto(c, self.store.list_series(c.case_id), self.store.list_files(c.case_id))

        cases, token = await asyncio.to_thread(
            paginate,
            lambda after, n: self.store.list_visible_cases(hospital, now_ms(), n, after),
            listed_case,
            lambda c: c.case_id, request.page_token, request.limit or DEFAULT_CASE_PAGE, self.page_bytes,
        )
        return hospital_pb2.ListCasesResponse(cases=cases, next_page_token=token)

    def _job_proto(self, job) -> common_pb2.Job:
        proto = job_to_proto(job, *self.scheduler.shard_progress(job.job_id))
        proto.idempotency_key = proto.idempotency_key.removeprefix(current_principal().name + "/")
        return proto

    @unary
    async def SubmitJob(self, request, context):
        hospital = current_principal().name
        # Keys are per hospital: one hospital's key never finds another's job.
        key = f"{hospital}/{request.idempotency_key}" if request.idempotency_key else ""
        return await job_thread(lambda: self._job_proto(self._submit(hospital, request, key)))

    def _submit(self, hospital: str, request, key: str) -> JobRecord:
        self._own_case(request.case_id)
        if request.params.get("contours_job"):
            self._get_job(request.params["contours_job"])  # contours of another hospital's job: not found
        if request.params.get("plan_job"):
            self._get_job(request.params["plan_job"])  # another hospital's plan: not found
        if self.intake.config.require_approval and request.params.get("devices"):
            check_conversion(self.store, request.params.get("plan_job", ""))  # device plans from approved plans only
        with self._submit_locks.setdefault(hospital, threading.Lock()):
            existing = self.store.find_job_by_key(key) if key else None
            if existing is not None:
                return existing
            limit = self.intake.config.max_active_jobs_per_hospital
            active = self.store.count_active_jobs(hospital)
            if active >= limit:
                raise ResourceExhausted(
                    f"hospital {hospital!r} has {active} jobs queued or running; the limit is {limit} concurrent "
                    "jobs per hospital (max_active_jobs_per_hospital): wait for one to finish or cancel one"
                )
            return self.scheduler.submit(request.case_id, request.kind, dict(request.params), request.priority, key)

    @unary
    async def GetJob(self, request, context):
        return await job_thread(lambda: self._job_proto(self._readable_job(request.job_id, "GetJob")))

    @stream
    async def WatchJob(self, request, context):
        # One thread hop per read: the access check (audited on the first read only) and the events.
        # The first read, which a hospital waits on right after its submit, goes with the submits;
        # the reads that follow events have threads of their own.
        reads = 0

        async def read(seq: int):
            nonlocal reads
            reads += 1
            return await job_thread(self._watch_page, request.job_id, seq, reads == 1, watch=reads > 1)

        async for event in self.events.follow(request.job_id, request.after_seq, read, WATCH_POLL_S, WATCH_PAGE):
            yield event_to_proto(event)

    def _watch_page(self, job_id: str, seq: int, audited: bool) -> tuple[list, bool]:
        """The events after ``seq`` (at most a page) and whether the job has ended with none after them."""
        job = self._readable_job(job_id, "WatchJob", audited=audited)  # a share revoked meanwhile ends the watch
        # The job is read first: an ended job's last event was stored with its state, so it is in this read.
        events = self.store.events_after(job_id, seq, limit=WATCH_PAGE)
        return events, job.state in TERMINAL_JOB_STATES and len(events) < WATCH_PAGE

    @unary
    async def CancelJob(self, request, context):
        def cancel():
            self._get_job(request.job_id)
            return self._job_proto(self.scheduler.cancel(request.job_id))  # it stops shard tasks on the loop
        return await job_thread(cancel)

    @unary
    async def ListArtifacts(self, request, context):
        def page():
            self._readable_job(request.job_id, "ListArtifacts")
            key = lambda a: a.artifact_id  # noqa: E731
            return paginate(
                listed(self.store.list_artifacts(request.job_id), key), artifact_to_proto, key, request.page_token,
                page_limit(request.limit, DEFAULT_ARTIFACT_PAGE), self.page_bytes,
            )
        artifacts, token = await asyncio.to_thread(page)
        return hospital_pb2.ListArtifactsResponse(artifacts=artifacts, next_page_token=token)

    @stream
    async def DownloadArtifact(self, request, context):
        artifact = await asyncio.to_thread(self._readable_artifact, request.artifact_id, "DownloadArtifact")
        if not 0 <= request.offset <= artifact.size_bytes:
            raise InvalidArgument(f"offset {request.offset} is outside the artifact's {artifact.size_bytes} bytes")
        chunks = self.blobs.iter_chunks(artifact.sha256, request.offset, DOWNLOAD_CHUNK_BYTES)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            offset, data = chunk
            yield common_pb2.DataChunk(offset=offset, data=data)
            self.scheduler.metrics.bytes_sent.labels("download").inc(len(data))


def _uploaded(record: FileRecord) -> hospital_pb2.UploadedFile:
    return hospital_pb2.UploadedFile(
        file_id=record.file_id, case_id=record.case_id, file_name=record.file_name, modality=record.modality,
        sop_instance_uid=record.sop_instance_uid, size_bytes=record.size_bytes, sha256=record.sha256,
        notes=record.notes,
    )
