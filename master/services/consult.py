"""The hospital API's review, approval and consultation RPCs, and who may read what.

A mixin of :class:`~.hospital.HospitalService`: the owner of a case reaches everything in it; a
hospital the case is shared with reaches it for reading and, as granted, for reviews
(:mod:`rtgrid.master.sharing`); everyone else gets NOT_FOUND, as for a case that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib

from rtgrid.protos.v1 import hospital_pb2

from .. import approval, intake, sharing
from ..convert_review import share_to_proto, version_to_proto
from ..errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from ..security.auth import current_principal
from ..store.records import VIEW, ArtifactRecord, CaseRecord, JobRecord
from .common import unary


class ConsultMixin:
    """Needs ``self.intake``, ``self.store``, ``self.blobs``, ``self._own_case`` and ``self._chunks``."""

    # reading: the owner, or a hospital the case is shared with (audited)
    def _readable_case(self, case_id: str, what: str, objects: dict[str, str] | None = None,
                       need: str = VIEW, audited: bool = True) -> CaseRecord:
        case = intake.get_case(self.intake, case_id)
        me = current_principal().name
        if case.hospital == me:
            return case
        if audited or need != VIEW:
            sharing.consult(self.store, case, me, what, objects or {}, need)
        elif sharing.active_share(self.store, case_id, me) is None:
            raise NotFound(f"no case {case_id!r}")
        return case

    def _readable_job(self, job_id: str, what: str, need: str = VIEW, audited: bool = True,
                      objects: dict[str, str] | None = None) -> JobRecord:
        job = self.store.get_job(job_id)
        try:
            if job is None:
                raise NotFound("")
            self._readable_case(job.case_id, what, {"job_id": job_id, **(objects or {})}, need, audited)
        except NotFound:
            raise NotFound(f"no job {job_id!r}") from None
        return job

    def _readable_artifact(self, artifact_id: str, what: str) -> ArtifactRecord:
        artifact = self.store.get_artifact(artifact_id)
        try:
            if artifact is None:
                raise NotFound("")
            self._readable_job(artifact.job_id, what, objects={"artifact_id": artifact_id, "name": artifact.name})
        except NotFound:
            raise NotFound(f"no artifact {artifact_id!r}") from None
        approval.check_release(self.store, artifact, self.intake.config.require_approval)
        return artifact

    # review and approval
    def _versions(self, job_id: str) -> hospital_pb2.ListVersionsResponse:
        artifacts = {a.artifact_id: a for a in self.store.list_artifacts(job_id)}
        return hospital_pb2.ListVersionsResponse(versions=[
            version_to_proto(v, artifacts.get(v.artifact_id), self.store.list_reviews(v.version_id))
            for v in approval.versions_of(self.store, job_id)])

    @unary
    async def ListVersions(self, request, context):
        def run():
            self._readable_job(request.job_id, "ListVersions")
            return self._versions(request.job_id)
        return await asyncio.to_thread(run)

    @unary
    async def ReviewVersion(self, request, context):
        def run():
            need = sharing.ACTION_GRANTS.get(request.action)
            if need is None:
                raise InvalidArgument(f"unknown review action {request.action!r}; one of "
                                      f"{', '.join(approval.ACTIONS)}")
            job = self._readable_job(request.job_id, f"ReviewVersion {request.action}", need)
            approval.review(self.store, self.blobs, job, request.artifact_name, request.action,
                            current_principal().name, request.reviewer_name, request.comment)
            return self._versions(job.job_id)
        return await asyncio.to_thread(run)

    @unary
    async def AddVersion(self, request_iterator, context):
        first, parts, received = None, [], 0
        limit = self.intake.config.max_chunk_bytes
        async for chunk in self._chunks(request_iterator):  # a silent stream is closed (upload_idle_s)
            if first is None:
                first = chunk
                job = await asyncio.to_thread(self._own_job_for_version, chunk.job_id, chunk.size_bytes)
            if len(chunk.data) > limit:
                raise ResourceExhausted(f"a chunk of {len(chunk.data)} bytes is over max_chunk_bytes {limit}")
            if chunk.offset != received:
                raise InvalidArgument(f"chunk at offset {chunk.offset}, expected {received}")
            received += len(chunk.data)
            if received > first.size_bytes:
                raise InvalidArgument(f"more than the announced {first.size_bytes} bytes")
            parts.append(chunk.data)
        if first is None:
            raise InvalidArgument("the version stream carried no chunks")
        data = b"".join(parts)
        if len(data) != first.size_bytes or hashlib.sha256(data).hexdigest() != first.sha256:
            raise DataLoss(f"the corrected RTSTRUCT arrived as {len(data)} bytes that do not match the announced "
                           f"size {first.size_bytes} and sha256: send it again")

        def keep():
            version = approval.add_contours_version(self.store, self.blobs, job, data, current_principal().name,
                                                    first.lineage)
            return version_to_proto(version, self.store.get_artifact(version.artifact_id), [])
        return await asyncio.to_thread(keep)

    def _own_job_for_version(self, job_id: str, size_bytes: int) -> JobRecord:
        job = self.store.get_job(job_id)
        try:
            if job is None:
                raise NotFound("")
            self._own_case(job.case_id)  # corrections come from the owner
        except NotFound:
            raise NotFound(f"no job {job_id!r}") from None
        if not 0 < size_bytes <= approval.MAX_VERSION_BYTES:
            raise InvalidArgument(f"size_bytes {size_bytes}: a corrected RTSTRUCT has 1 to "
                                  f"{approval.MAX_VERSION_BYTES} bytes")
        return job

    # consultation
    @unary
    async def ShareCase(self, request, context):
        def run():
            case = self._own_case(request.case_id)
            return share_to_proto(sharing.share_case(self.store, case, current_principal().name, request.hospital,
                                                     request.grant, request.until_ms))
        return await asyncio.to_thread(run)

    @unary
    async def UnshareCase(self, request, context):
        def run():
            case = self._own_case(request.case_id)
            return share_to_proto(sharing.unshare_case(self.store, case, current_principal().name, request.hospital))
        return await asyncio.to_thread(run)

    @unary
    async def ListShares(self, request, context):
        def run():
            self._own_case(request.case_id)
            return hospital_pb2.ListSharesResponse(shares=[share_to_proto(s)
                                                           for s in self.store.list_shares(request.case_id)])
        return await asyncio.to_thread(run)
