"""Proto <-> store conversion of versions, reviews and shares (beside ``convert.py``)."""

from __future__ import annotations

from rtgrid.protos.v1 import hospital_pb2 as pb

from .store.records import ArtifactRecord, ReviewRecord, ShareRecord, VersionRecord


def review_to_proto(r: ReviewRecord) -> pb.Review:
    return pb.Review(time_ms=r.time_ms, principal=r.principal, reviewer_name=r.reviewer_name,
                     from_status=r.from_status, to_status=r.to_status, comment=r.comment)


def version_to_proto(v: VersionRecord, artifact: ArtifactRecord | None, history: list[ReviewRecord]) -> pb.Version:
    return pb.Version(
        version_id=v.version_id, job_id=v.job_id, lineage=v.lineage, version=v.version, artifact_id=v.artifact_id,
        artifact_name=artifact.name if artifact is not None else "", kind=v.kind, status=v.status, author=v.author,
        created_ms=v.created_ms, reviewer_name=v.reviewer_name, reviewed_by=v.reviewed_by,
        reviewed_ms=v.reviewed_ms, comment=v.comment, history=[review_to_proto(r) for r in history],
    )


def share_to_proto(s: ShareRecord) -> pb.Share:
    return pb.Share(case_id=s.case_id, hospital=s.hospital, grant=s.grant, shared_by=s.shared_by,
                    created_ms=s.created_ms, until_ms=s.until_ms)
