"""Hospital API servicer: thin — each RPC translates protobuf and calls one plain function."""

from __future__ import annotations

import asyncio

from rtgrid.protos.v1 import common_pb2, hospital_pb2, hospital_pb2_grpc

from .. import intake
from ..config import DOWNLOAD_CHUNK_BYTES
from ..convert import artifact_to_proto, case_to_proto, event_to_proto, job_to_proto
from ..errors import InvalidArgument, NotFound
from ..events import EventBus
from ..scheduler import Scheduler
from ..store.records import TERMINAL_JOB_STATES
from .common import stream, unary

# A watcher re-reads the store at least this often, even without a wake-up.
WATCH_POLL_S = 1.0


class HospitalService(hospital_pb2_grpc.HospitalServiceServicer):
    def __init__(self, intake_state: intake.Intake, scheduler: Scheduler, events: EventBus) -> None:
        self.intake = intake_state
        self.store = intake_state.store
        self.blobs = intake_state.blobs
        self.scheduler = scheduler
        self.events = events

    def _case_proto(self, case_id: str) -> common_pb2.Case:
        case = intake.get_case(self.intake, case_id)
        return case_to_proto(case, self.store.list_series(case_id), self.store.list_files(case_id))

    @unary
    async def CreateCase(self, request, context):
        return self._case_proto(intake.create_case(self.intake, request.label).case_id)

    @unary
    async def StartUpload(self, request, context):
        upload = intake.start_upload(self.intake, request.case_id, request.file_name, request.size_bytes, request.sha256)
        return self._status(upload)

    def _status(self, upload) -> hospital_pb2.UploadStatus:
        return hospital_pb2.UploadStatus(
            upload_id=upload.upload_id, committed_bytes=upload.committed_bytes, size_bytes=upload.size_bytes,
            max_chunk_bytes=self.intake.config.max_chunk_bytes,
        )

    @unary
    async def UploadChunks(self, request_iterator, context):
        upload = None
        async for chunk in request_iterator:
            if upload is None or upload.upload_id != chunk.upload_id:
                upload = intake.get_upload(self.intake, chunk.upload_id)
            upload = await asyncio.to_thread(
                intake.write_chunk, self.intake, upload, chunk.offset, chunk.data, chunk.crc32
            )
            self.scheduler.metrics.bytes_received.labels("upload").inc(len(chunk.data))
        if upload is None:
            raise InvalidArgument("the upload stream carried no chunks")
        return self._status(upload)

    @unary
    async def FinishUpload(self, request, context):
        record = await asyncio.to_thread(intake.finish_upload, self.intake, request.upload_id)
        return hospital_pb2.UploadedFile(
            file_id=record.file_id, case_id=record.case_id, file_name=record.file_name, modality=record.modality,
            sop_instance_uid=record.sop_instance_uid, size_bytes=record.size_bytes, sha256=record.sha256,
            notes=record.notes,
        )

    @unary
    async def CommitCase(self, request, context):
        await asyncio.to_thread(intake.commit_case, self.intake, request.case_id)
        return self._case_proto(request.case_id)

    @unary
    async def DeleteCase(self, request, context):
        proto = self._case_proto(request.case_id)
        await asyncio.to_thread(intake.delete_case, self.intake, request.case_id)
        return proto

    @unary
    async def GetCase(self, request, context):
        return self._case_proto(request.case_id)

    @unary
    async def ListCases(self, request, context):
        return hospital_pb2.ListCasesResponse(cases=[self._case_proto(c.case_id) for c in self.store.list_cases()])

    def _job_proto(self, job) -> common_pb2.Job:
        return job_to_proto(job, *self.scheduler.shard_progress(job.job_id))

    @unary
    async def SubmitJob(self, request, context):
        job = await asyncio.to_thread(
            self.scheduler.submit, request.case_id, request.kind, dict(request.params), request.priority,
            request.idempotency_key,
        )
        return self._job_proto(job)

    def _get_job(self, job_id: str):
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    @unary
    async def GetJob(self, request, context):
        return self._job_proto(self._get_job(request.job_id))

    @stream
    async def WatchJob(self, request, context):
        self._get_job(request.job_id)
        seq = request.after_seq
        while True:
            for event in self.store.events_after(request.job_id, seq):
                seq = event.seq
                yield event_to_proto(event)
            job = self._get_job(request.job_id)
            if job.state in TERMINAL_JOB_STATES and not self.store.events_after(request.job_id, seq, limit=1):
                return
            await self.events.wait(request.job_id, WATCH_POLL_S)

    @unary
    async def CancelJob(self, request, context):
        return self._job_proto(self.scheduler.cancel(request.job_id))

    @unary
    async def ListArtifacts(self, request, context):
        self._get_job(request.job_id)
        return hospital_pb2.ListArtifactsResponse(
            artifacts=[artifact_to_proto(a) for a in self.store.list_artifacts(request.job_id)]
        )

    @stream
    async def DownloadArtifact(self, request, context):
        artifact = self.store.get_artifact(request.artifact_id)
        if artifact is None:
            raise NotFound(f"no artifact {request.artifact_id!r}")
        if not 0 <= request.offset <= artifact.size_bytes:
            raise InvalidArgument(f"offset {request.offset} is outside the artifact's {artifact.size_bytes} bytes")
        for offset, data in self.blobs.iter_chunks(artifact.sha256, request.offset, DOWNLOAD_CHUNK_BYTES):
            yield common_pb2.DataChunk(offset=offset, data=data)
            self.scheduler.metrics.bytes_sent.labels("download").inc(len(data))
