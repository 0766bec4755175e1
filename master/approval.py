"""Review and approval of structure sets and plans (the RT Approval module, PS3.3 C.8.8.16).

A job's RTSTRUCT, RTPLAN and RTDOSE artifacts have versions; each version has a status:

    draft --review--> reviewed --approve--> approved
    draft --approve--> approved
    draft | reviewed --reject--> rejected

and a comment may be added in any status. Anything else is refused with FAILED_PRECONDITION
naming the current status. Version 1 of a lineage is the artifact the job made (its version row
is written at its first review); a hospital adds version 2, 3, ... of a structure set by
uploading the physician's corrected RTSTRUCT (:func:`add_contours_version`), checked against the
case as a plan checks its contours. Every transition rewrites the object served for download with
ApprovalStatus, ReviewDate, ReviewTime and ReviewerName (RTSTRUCT and RTPLAN: the RT Dose IOD has
no approval module) and is written to the audit log.

Plain functions over the store and blob store; the hospital servicer only translates protobuf.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from collections.abc import Iterable

import pydicom
from pydicom.uid import generate_uid

from .blobs import BlobStore
from .errors import FailedPrecondition, InvalidArgument, NotFound
from .ids import new_id, now_ms
from .store.base import Store
from .store.records import (
    APPROVED,
    DRAFT,
    REJECTED,
    REVIEWED,
    ArtifactRecord,
    AuditRecord,
    JobRecord,
    ReviewRecord,
    VersionRecord,
)

APPROVABLE_KINDS = frozenset({"rtstruct", "rtplan", "rtdose"})
# Kinds whose IOD has the RT Approval module: their objects carry the status.
STAMPED_KINDS = frozenset({"rtstruct", "rtplan"})
COMMENT, REVIEW, APPROVE, REJECT = "comment", "review", "approve", "reject"
ACTIONS = (COMMENT, REVIEW, APPROVE, REJECT)
_NEXT = {(DRAFT, REVIEW): REVIEWED, (DRAFT, APPROVE): APPROVED, (REVIEWED, APPROVE): APPROVED,
         (DRAFT, REJECT): REJECTED, (REVIEWED, REJECT): REJECTED}
DICOM_STATUS = {DRAFT: "UNAPPROVED", REVIEWED: "UNAPPROVED", APPROVED: "APPROVED", REJECTED: "REJECTED"}
GRID_AUTHOR = "grid"
# Longest corrected RTSTRUCT a hospital may upload, and longest comment kept.
MAX_VERSION_BYTES = 64 << 20
MAX_COMMENT_CHARS = 2000
_REVIEW_TAGS = ("ReviewDate", "ReviewTime", "ReviewerName")


def next_status(current: str, action: str) -> str:
    """The status ``action`` leads to from ``current``.

    Raises
    ------
    InvalidArgument
        An unknown action.
    FailedPrecondition
        A transition the state machine does not have, naming the current status.
    """
    if action not in ACTIONS:
        raise InvalidArgument(f"unknown review action {action!r}; one of {', '.join(ACTIONS)}")
    if action == COMMENT:
        return current
    try:
        return _NEXT[(current, action)]
    except KeyError:
        allowed = sorted(a for (s, a) in _NEXT if s == current) + [COMMENT]
        raise FailedPrecondition(f"cannot {action} a version that is {current}; from {current} only "
                                 f"{', '.join(allowed)} are possible") from None


def versions_of(store: Store, job_id: str) -> list[VersionRecord]:
    """Every version of the job's structure sets, plans and doses, by lineage then number.

    An artifact the job made that has not been reviewed yet is version 1 of its own lineage, in
    draft (returned, not stored)."""
    stored = store.list_versions(job_id)
    versioned = {v.artifact_id for v in stored}
    made = [
        VersionRecord(new_id("ver"), job_id, a.name, 1, a.artifact_id, a.kind, DRAFT, GRID_AUTHOR, 0)
        for a in store.list_artifacts(job_id) if a.kind in APPROVABLE_KINDS and a.artifact_id not in versioned
    ]
    return sorted(stored + made, key=lambda v: (v.lineage, v.version))


def latest(versions: Iterable[VersionRecord]) -> dict[str, VersionRecord]:
    """The highest-numbered version of each lineage."""
    out: dict[str, VersionRecord] = {}
    for v in versions:
        if v.lineage not in out or v.version > out[v.lineage].version:
            out[v.lineage] = v
    return out


def stamp(data: bytes, status: str, reviewer_name: str, when_ms: int) -> bytes:
    """A DICOM object's bytes with its RT Approval module set for ``status``.

    Approved and rejected objects carry ReviewDate, ReviewTime (UTC) and ReviewerName; others are
    UNAPPROVED without them (PS3.3: those are required only for APPROVED and REJECTED)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.ApprovalStatus = DICOM_STATUS[status]
    if status in (APPROVED, REJECTED):
        when = dt.datetime.fromtimestamp(when_ms / 1000, dt.timezone.utc)
        ds.ReviewDate, ds.ReviewTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        ds.ReviewerName = reviewer_name
    else:
        for keyword in _REVIEW_TAGS:
            if keyword in ds:
                delattr(ds, keyword)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _pick(versions: list[VersionRecord], artifact_name: str,
          artifacts: dict[str, ArtifactRecord]) -> list[VersionRecord]:
    """The versions a review acts on: the one whose artifact (or lineage) is ``artifact_name``
    (a lineage: its latest version), or the latest of every lineage. A plan takes its dose along."""
    newest = latest(versions)
    if not artifact_name:
        if not newest:
            raise FailedPrecondition("the job has no structure set, plan or dose to review")
        return list(newest.values())
    by_name = {artifacts[v.artifact_id].name: v for v in versions if v.artifact_id in artifacts}
    chosen = by_name.get(artifact_name) or newest.get(artifact_name)
    if chosen is None:
        names = ", ".join(sorted(by_name)) or "none"
        raise NotFound(f"no structure set, plan or dose named {artifact_name!r} in this job (it has: {names})")
    picked = [chosen]
    if chosen.kind == "rtplan" and chosen.lineage.startswith("RP."):
        dose = newest.get("RD." + chosen.lineage[3:])
        if dose is not None and dose.version == chosen.version:
            picked.append(dose)
    return picked


def review(store: Store, blobs: BlobStore, job: JobRecord, artifact_name: str, action: str, principal: str,
           reviewer_name: str, comment: str) -> list[VersionRecord]:
    """Comment on, review, approve or reject versions of a job's structure sets and plans.

    Parameters
    ----------
    job : JobRecord
        The job (the caller has checked who may review it).
    artifact_name : str
        An artifact's name or a lineage (its latest version); empty: the latest version of every
        lineage of the job.
    action : str
        ``comment``, ``review``, ``approve`` or ``reject``.
    principal, reviewer_name : str
        The hospital acting and the person it names (written as ReviewerName).
    comment : str
        Required to reject and to comment.

    Returns
    -------
    list of VersionRecord
        The versions after the transition, all of them or none changed.

    Raises
    ------
    InvalidArgument, NotFound, FailedPrecondition
        A missing reviewer name or comment, an unknown artifact, an illegal transition.
    """
    if action not in ACTIONS:
        raise InvalidArgument(f"unknown review action {action!r}; one of {', '.join(ACTIONS)}")
    if action in (APPROVE, REVIEW, REJECT) and not reviewer_name.strip():
        raise InvalidArgument(f"to {action}, name the reviewer (--as NAME)")
    if action in (REJECT, COMMENT) and not comment.strip():
        raise InvalidArgument(f"to {action}, give a comment (--comment) that says why")
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidArgument(f"the comment is {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}")
    with store.transaction():
        artifacts = {a.artifact_id: a for a in store.list_artifacts(job.job_id)}
        versions = versions_of(store, job.job_id)
        picked = _pick(versions, artifact_name, artifacts)
        targets = {v.version_id: next_status(v.status, action) for v in picked}  # all legal, or none changes
        stored = {v.version_id for v in store.list_versions(job.job_id)}
        when = now_ms()
        done = []
        for v in picked:
            status = targets[v.version_id]
            if v.version_id not in stored:
                store.add_version(v)
            changed = dataclasses.replace(v, status=status, reviewer_name=reviewer_name, reviewed_by=principal,
                                          reviewed_ms=when, comment=comment)
            if status != v.status and v.kind in STAMPED_KINDS:
                artifact = artifacts[v.artifact_id]
                data = stamp(blobs.read_bytes(artifact.sha256), status, reviewer_name, when)
                store.update_artifact(dataclasses.replace(artifact, sha256=blobs.put_bytes(data),
                                                          size_bytes=len(data)))
            store.update_version(changed)
            store.add_review(ReviewRecord(new_id("rev"), v.version_id, when, principal, reviewer_name, v.status,
                                          status, comment))
            audit(store, principal, action, {"job_id": job.job_id, "artifact_id": v.artifact_id,
                                             "version": f"{v.lineage} v{v.version}"},
                  f"{v.status} -> {status}" + (f" by {reviewer_name}" if reviewer_name else "")
                  + (f": {comment}" if comment else ""))
            done.append(changed)
    return done


def audit(store: Store, principal: str, action: str, objects: dict[str, str], detail: str,
          outcome: str = "OK") -> None:
    """One audit row for a review step, a version upload or a share (the interceptor's log)."""
    store.add_audit(AuditRecord(new_id("audit"), now_ms(), principal, "hospital", action, "approval", objects,
                                outcome, detail[:500]))


def _referenced_series(ds: pydicom.Dataset) -> set[str]:
    found = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    found.add(str(series.SeriesInstanceUID))
    return found


def add_contours_version(store: Store, blobs: BlobStore, job: JobRecord, data: bytes, author: str,
                         lineage: str = "") -> VersionRecord:
    """Keep a corrected RTSTRUCT as the next version of a job's structure set, in draft.

    It must be an RTSTRUCT on the case's CT (its frame of reference, and the CT series where it
    names one); a new SOP Instance UID is given when it reuses an earlier version's.

    Raises
    ------
    InvalidArgument
        Not DICOM, not an RTSTRUCT, or contours of another image or patient.
    NotFound, FailedPrecondition
        No such structure set in the job, or a job without one.
    """
    from .jobs.plan import check_contours_on_case  # the plan's own check; imported late (jobs import the store)

    if len(data) > MAX_VERSION_BYTES:
        raise InvalidArgument(f"the RTSTRUCT is {len(data)} bytes; the limit is {MAX_VERSION_BYTES}")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        modality, referenced = ds.get("Modality"), _referenced_series(ds)
    except Exception as exc:  # pydicom's errors on a damaged file are of many kinds
        raise InvalidArgument(f"the corrected structure set is not a readable DICOM file: {exc}") from None
    if modality != "RTSTRUCT":
        raise InvalidArgument(f"a new contours version must be an RTSTRUCT, got modality {modality or ''!r}")
    case_series = {s.series_instance_uid for s in store.list_series(job.case_id)}
    foreign = referenced - case_series
    if foreign:
        raise InvalidArgument(f"the RTSTRUCT references CT series {', '.join(sorted(foreign))}, not case "
                              f"{job.case_id}'s series: contours of another image cannot be a version of these")
    check_contours_on_case(store, job.case_id, data, "the corrected RTSTRUCT")
    with store.transaction():
        versions = [v for v in versions_of(store, job.job_id) if v.kind == "rtstruct"]
        lineages = latest(versions)
        if not lineages:
            raise FailedPrecondition(f"job {job.job_id} made no structure set to correct")
        if not lineage:
            if len(lineages) > 1:
                raise InvalidArgument(f"job {job.job_id} has several structure sets; name one "
                                      f"({', '.join(sorted(lineages))})")
            lineage = next(iter(lineages))
        if lineage not in lineages:
            raise NotFound(f"no structure set {lineage!r} in job {job.job_id} (it has: {', '.join(sorted(lineages))})")
        artifacts = {a.artifact_id: a for a in store.list_artifacts(job.job_id)}
        earlier_uids = {pydicom.dcmread(io.BytesIO(blobs.read_bytes(artifacts[v.artifact_id].sha256)),
                                        stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID")
                        for v in versions if v.lineage == lineage and v.artifact_id in artifacts}
        if ds.get("SOPInstanceUID") in earlier_uids:
            uid = generate_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        when = now_ms()
        data = stamp(data, DRAFT, "", when)
        number = lineages[lineage].version + 1
        stem, dot, suffix = lineage.rpartition(".")
        name = f"{stem}.v{number}.{suffix}" if dot else f"{lineage}.v{number}"
        artifact = ArtifactRecord(new_id("art"), job.job_id, name, "rtstruct", "RTSTRUCT", blobs.put_bytes(data),
                                  len(data))
        stored = {v.version_id for v in store.list_versions(job.job_id)}
        for v in versions:  # version 1 gets its row now: its number is taken
            if v.lineage == lineage and v.version_id not in stored:
                store.add_version(v)
        store.add_artifact(artifact)
        version = VersionRecord(new_id("ver"), job.job_id, lineage, number, artifact.artifact_id, "rtstruct", DRAFT,
                                author, when)
        store.add_version(version)
        audit(store, author, "version", {"job_id": job.job_id, "artifact_id": artifact.artifact_id,
                                         "version": f"{lineage} v{number}"}, f"new draft {name}")
    return version


def contours_for_plan(store: Store, job_id: str, number: int = 0) -> tuple[list[ArtifactRecord], int]:
    """The structure sets a plan uses from a contour job, and their version number.

    ``number`` 0: the latest approved version, else the latest one not rejected. The number is
    the same for every lineage (a contour job has one).

    Raises
    ------
    FailedPrecondition
        The asked version does not exist or is rejected, or every version is rejected.
    """
    versions = [v for v in versions_of(store, job_id) if v.kind == "rtstruct"]
    artifacts = {a.artifact_id: a for a in store.list_artifacts(job_id)}
    chosen: list[VersionRecord] = []
    for lineage in sorted({v.lineage for v in versions}):
        mine = [v for v in versions if v.lineage == lineage]
        if number:
            match = [v for v in mine if v.version == number]
            if not match:
                raise FailedPrecondition(f"contours_version={number}: {lineage} of job {job_id} has versions "
                                         f"{', '.join(str(v.version) for v in mine)}")
            if match[0].status == REJECTED:
                raise FailedPrecondition(f"contours_version={number}: {lineage} v{number} of job {job_id} was "
                                         "rejected; a plan does not use rejected contours")
            chosen.append(match[0])
            continue
        approved = [v for v in mine if v.status == APPROVED]
        usable = approved or [v for v in mine if v.status != REJECTED]
        if not usable:
            raise FailedPrecondition(f"every version of {lineage} of job {job_id} was rejected: upload a "
                                     "corrected RTSTRUCT (rtgrid revise) or contour again")
        chosen.append(usable[-1])
    picked = [artifacts[v.artifact_id] for v in chosen if v.artifact_id in artifacts]
    return picked, (chosen[0].version if chosen else 0)


def check_release(store: Store, artifact: ArtifactRecord, require_approval: bool) -> None:
    """With ``require_approval``, a plan leaves the grid (download, and so a gateway's push to a
    device) only once approved.

    Raises
    ------
    FailedPrecondition
        An RTPLAN whose version is not approved, naming its status.
    """
    if not require_approval or artifact.kind != "rtplan":
        return
    version = next((v for v in versions_of(store, artifact.job_id) if v.artifact_id == artifact.artifact_id), None)
    status = version.status if version is not None else DRAFT
    if status != APPROVED:
        raise FailedPrecondition(
            f"plan {artifact.name} is {status}: this grid requires approval before plans go to devices or out "
            f"through the gateway (rtgrid up --require-approval); approve it first (rtgrid approve {artifact.job_id} "
            f"--artifact {artifact.name} --as NAME)")


def check_conversion(store: Store, plan_job: str) -> None:
    """With ``rtgrid up --require-approval``, device plans are made only from an approved plan:
    a conversion of an earlier plan job (``plan_job``) whose standard plan is approved.

    Raises
    ------
    FailedPrecondition
        No ``plan_job`` (a plan made in the same job cannot be approved before its conversion),
        or its standard plan not approved, naming its status.
    """
    route = ("plan without devices, approve its plan (rtgrid approve JOB --artifact RP.standard.dcm --as NAME), "
             "then convert it: rtgrid submit CASE --kind plan --plan-job JOB --devices ...")
    if not plan_job:
        raise FailedPrecondition("this grid requires approval before plans go to devices (rtgrid up "
                                 f"--require-approval), and a plan made in this job cannot be approved first: {route}")
    artifacts = {a.artifact_id: a for a in store.list_artifacts(plan_job)}
    plans = [v for v in versions_of(store, plan_job)
             if v.artifact_id in artifacts and artifacts[v.artifact_id].name == "RP.standard.dcm"]
    status = plans[0].status if plans else "missing"
    if status != APPROVED:
        raise FailedPrecondition(f"the standard plan of plan_job={plan_job} is {status}: this grid requires approval "
                                 f"before plans go to devices (rtgrid up --require-approval): {route}")
