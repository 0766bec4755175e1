"""Review and approval of structure sets and plans, and shared cases, on the real store (SQLite and
PostgreSQL) with real DICOM objects: the state machine with every illegal transition, the
approval tags written into the objects, corrected contours as versions and the version a plan
takes, shares that end by revocation and by time, and an older store gaining the new tables."""

from __future__ import annotations

import io
import time

import pydicom
import pytest
from pydicom.data import get_testdata_file

from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs
from rtgrid.master import approval, sharing
from rtgrid.master.blobs import BlobStore
from rtgrid.master.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from rtgrid.master.store.factory import open_store
from rtgrid.master.store.records import (
    ArtifactRecord,
    CaseRecord,
    HospitalRecord,
    JobRecord,
    SeriesRecord,
)

from .test_store import location, store  # noqa: F401  (both backends)

SHAPE, SPACING = (8, 48, 48), (4.0, 4.0, 4.0)
OWNER, CONSULTANT, STRANGER = "hospital-a", "hospital-b", "hospital-c"
STATUSES = ("draft", "reviewed", "approved", "rejected")
# The state machine, whole: (status, action) -> the status it leads to; absent: refused.
LEGAL = {("draft", "review"): "reviewed", ("draft", "approve"): "approved", ("reviewed", "approve"): "approved",
         ("draft", "reject"): "rejected", ("reviewed", "reject"): "rejected"}


@pytest.fixture(scope="module")
def rtstruct_bytes(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("approval")
    case = write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=1)
    rtstruct, _ = write_plan_inputs(case, make_phantom(SHAPE, SPACING, seed=1), out / "manual")
    return rtstruct.read_bytes()


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _referenced_series(ds: pydicom.Dataset) -> str:
    return ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]\
        .SeriesInstanceUID


def _contour_job(store, blobs, rtstruct: bytes, plan_too: bool = False) -> JobRecord:
    """A hospital-a case on the RTSTRUCT's CT, a finished job with it (and a plan with its dose)."""
    ds = _ds(rtstruct)
    store.add_case(CaseRecord("case-1", "x", True, 1, OWNER))
    store.add_series(SeriesRecord("ser-1", "case-1", "CT", _referenced_series(ds),
                                  ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID, 8, 48, 48,
                                  [4.0, 4.0, 4.0], "v" * 64, "m" * 64))
    job = JobRecord("job-1", "case-1", "contour", "succeeded", 0, {}, "merge", 1)
    store.add_job(job)
    files = [("RS.contours.dcm", "rtstruct", "RTSTRUCT", rtstruct)]
    if plan_too:
        plan = open(get_testdata_file("rtplan.dcm"), "rb").read()
        files += [("RP.standard.dcm", "rtplan", "RTPLAN", plan), ("RD.standard.dcm", "rtdose", "RTDOSE", b"dose")]
    for i, (name, kind, modality, data) in enumerate(files):
        store.add_artifact(ArtifactRecord(f"art-{i}", job.job_id, name, kind, modality, blobs.put_bytes(data),
                                          len(data)))
    return job


def _status(store, job_id: str) -> dict[str, str]:
    names = {a.artifact_id: a.name for a in store.list_artifacts(job_id)}
    return {names[v.artifact_id]: v.status for v in approval.versions_of(store, job_id)}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("action", ("review", "approve", "reject", "comment"))
def test_the_state_machine_whole(status, action):
    if action == "comment":
        assert approval.next_status(status, action) == status
    elif (status, action) in LEGAL:
        assert approval.next_status(status, action) == LEGAL[(status, action)]
    else:
        with pytest.raises(FailedPrecondition, match=f"cannot {action} a version that is {status}"):
            approval.next_status(status, action)


def test_transitions_are_kept_stamped_and_audited(store, blobs, rtstruct_bytes):
    job = _contour_job(store, blobs, rtstruct_bytes, plan_too=True)
    assert _status(store, job.job_id) == dict.fromkeys(("RD.standard.dcm", "RP.standard.dcm", "RS.contours.dcm"),
                                                       "draft")
    with pytest.raises(InvalidArgument, match="--as"):
        approval.review(store, blobs, job, "RS.contours.dcm", "approve", OWNER, "", "")
    made = next(a for a in store.list_artifacts(job.job_id) if a.name == "RS.contours.dcm")
    approval.review(store, blobs, job, "RS.contours.dcm", "review", OWNER, "Dr Review", "")
    approval.review(store, blobs, job, "RS.contours.dcm", "approve", OWNER, "Dr Approve", "good")
    rs = next(a for a in store.list_artifacts(job.job_id) if a.name == "RS.contours.dcm")
    data = blobs.read_bytes(rs.sha256)
    assert len(data) == rs.size_bytes and rs.sha256 != made.sha256  # what a download serves, and its digest
    ds = _ds(data)
    assert (ds.ApprovalStatus, str(ds.ReviewerName)) == ("APPROVED", "Dr Approve")
    assert ds.ReviewDate == time.strftime("%Y%m%d", time.gmtime()) and len(ds.ReviewTime) == 6
    assert ds.StructureSetROISequence  # the contours themselves are untouched

    for action in ("approve", "review", "reject"):  # nothing leaves approved
        with pytest.raises(FailedPrecondition, match="that is approved"):
            approval.review(store, blobs, job, "RS.contours.dcm", action, OWNER, "Dr X", "why")
    with pytest.raises(InvalidArgument, match="comment"):
        approval.review(store, blobs, job, "RP.standard.dcm", "reject", OWNER, "Dr X", "")
    approval.review(store, blobs, job, "RP.standard.dcm", "reject", OWNER, "Dr X", "PTV underdosed")
    assert _status(store, job.job_id) == {"RD.standard.dcm": "rejected", "RP.standard.dcm": "rejected",
                                          "RS.contours.dcm": "approved"}  # the dose follows its plan
    plan = next(a for a in store.list_artifacts(job.job_id) if a.name == "RP.standard.dcm")
    assert _ds(blobs.read_bytes(plan.sha256)).ApprovalStatus == "REJECTED"
    with pytest.raises(FailedPrecondition, match="that is rejected"):
        approval.review(store, blobs, job, "RP.standard.dcm", "approve", OWNER, "Dr X", "")
    with pytest.raises(NotFound, match="no structure set, plan or dose named 'nope'"):
        approval.review(store, blobs, job, "nope", "approve", OWNER, "Dr X", "")

    version = next(v for v in store.list_versions(job.job_id) if v.lineage == "RS.contours.dcm")
    history = [(r.from_status, r.to_status, r.reviewer_name) for r in store.list_reviews(version.version_id)]
    assert history == [("draft", "reviewed", "Dr Review"), ("reviewed", "approved", "Dr Approve")]
    details = [e.detail for e in store.list_audit(principal=OWNER)]
    assert "draft -> reviewed by Dr Review" in details and "reviewed -> approved by Dr Approve: good" in details
    assert any(d.startswith("draft -> rejected by Dr X: PTV underdosed") for d in details)


def test_a_refused_step_changes_nothing(store, blobs, rtstruct_bytes):
    job = _contour_job(store, blobs, rtstruct_bytes, plan_too=True)
    approval.review(store, blobs, job, "RP.standard.dcm", "approve", OWNER, "Dr A", "")
    before = {a.artifact_id: a.sha256 for a in store.list_artifacts(job.job_id)}
    with pytest.raises(FailedPrecondition, match="that is approved"):  # all latest versions: one is approved
        approval.review(store, blobs, job, "", "approve", OWNER, "Dr A", "")
    assert _status(store, job.job_id)["RS.contours.dcm"] == "draft"
    assert {a.artifact_id: a.sha256 for a in store.list_artifacts(job.job_id)} == before


def test_corrected_contours_are_versions_and_a_plan_takes_the_approved_one(store, blobs, rtstruct_bytes):
    job = _contour_job(store, blobs, rtstruct_bytes)
    edited = _ds(rtstruct_bytes)
    edited.StructureSetROISequence[0].ROIName = "PTV_edited"
    buffer = io.BytesIO()
    edited.save_as(buffer, enforce_file_format=True)
    v2 = approval.add_contours_version(store, blobs, job, buffer.getvalue(), OWNER)
    assert (v2.lineage, v2.version, v2.status, v2.author) == ("RS.contours.dcm", 2, "draft", OWNER)
    kept = _ds(blobs.read_bytes(store.get_artifact(v2.artifact_id).sha256))
    assert store.get_artifact(v2.artifact_id).name == "RS.contours.v2.dcm" and kept.ApprovalStatus == "UNAPPROVED"
    assert kept.SOPInstanceUID != edited.SOPInstanceUID  # the same UID as version 1 is a new object's now

    def chosen(number: int = 0) -> tuple[str, int]:
        artifacts, n = approval.contours_for_plan(store, job.job_id, number)
        return artifacts[0].name, n

    assert chosen() == ("RS.contours.v2.dcm", 2)  # nothing approved: the latest
    approval.review(store, blobs, job, "RS.contours.dcm", "approve", OWNER, "Dr A", "")
    assert chosen() == ("RS.contours.dcm", 1)  # the latest approved
    approval.review(store, blobs, job, "RS.contours.v2.dcm", "approve", OWNER, "Dr A", "")
    assert chosen() == ("RS.contours.v2.dcm", 2) and chosen(1) == ("RS.contours.dcm", 1)
    with pytest.raises(FailedPrecondition, match="has versions 1, 2"):
        chosen(3)

    other = _ds(rtstruct_bytes)
    other.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    for roi in other.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = "1.2.3.4"
    other.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]\
        .SeriesInstanceUID = "1.2.3.5"
    buffer = io.BytesIO()
    other.save_as(buffer, enforce_file_format=True)
    with pytest.raises(InvalidArgument, match="references CT series 1.2.3.5"):
        approval.add_contours_version(store, blobs, job, buffer.getvalue(), OWNER)
    with pytest.raises(InvalidArgument, match="must be an RTSTRUCT, got modality 'RTPLAN'"):
        approval.add_contours_version(store, blobs, job, open(get_testdata_file("rtplan.dcm"), "rb").read(), OWNER)
    with pytest.raises(InvalidArgument, match="not a readable DICOM"):
        approval.add_contours_version(store, blobs, job, b"not dicom", OWNER)
    assert [v.version for v in store.list_versions(job.job_id)] == [1, 2]


def test_require_approval_holds_plans_back(store, blobs, rtstruct_bytes):
    job = _contour_job(store, blobs, rtstruct_bytes, plan_too=True)
    plan = next(a for a in store.list_artifacts(job.job_id) if a.name == "RP.standard.dcm")
    approval.check_release(store, plan, require_approval=False)
    with pytest.raises(FailedPrecondition, match="plan RP.standard.dcm is draft: this grid requires approval"):
        approval.check_release(store, plan, require_approval=True)
    approval.check_release(store, store.get_artifact("art-0"), require_approval=True)  # an RTSTRUCT goes out
    approval.review(store, blobs, job, "RP.standard.dcm", "approve", OWNER, "Dr A", "")
    approval.check_release(store, store.get_artifact(plan.artifact_id), require_approval=True)


def test_device_plans_come_only_from_an_approved_plan(store, blobs, rtstruct_bytes):
    job = _contour_job(store, blobs, rtstruct_bytes, plan_too=True)
    with pytest.raises(FailedPrecondition, match="--require-approval.*cannot be approved first.*--plan-job"):
        approval.check_conversion(store, "")
    with pytest.raises(FailedPrecondition, match="plan_job=job-1 is draft"):
        approval.check_conversion(store, job.job_id)
    approval.review(store, blobs, job, "RP.standard.dcm", "review", OWNER, "Dr A", "")
    with pytest.raises(FailedPrecondition, match="plan_job=job-1 is reviewed"):
        approval.check_conversion(store, job.job_id)
    approval.review(store, blobs, job, "RP.standard.dcm", "approve", OWNER, "Dr A", "")
    approval.check_conversion(store, job.job_id)


def test_a_conversion_takes_only_a_finished_plan_of_its_own_case(store, blobs, rtstruct_bytes):
    from rtgrid.master.jobs.plan import PlanJob

    contour = _contour_job(store, blobs, rtstruct_bytes)
    plan = PlanJob()
    for params, words in (({"plan_job": "job-1", "devices": "TB-M120", "beams": "5"}, "drop beams"),
                          ({"plan_job": "job-1"}, "give devices"),
                          ({"plan_job": contour.job_id, "devices": "TB-M120"}, "not a finished plan"),
                          ({"plan_job": "job-none", "devices": "TB-M120"}, "not a finished plan")):
        with pytest.raises(InvalidArgument, match=words):
            plan.validate(params, store, blobs, "case-1")
    store.add_job(JobRecord("job-p", "case-other", "plan", "succeeded", 0, {"order": "x"}, "optimize", 2))
    with pytest.raises(InvalidArgument, match="planned case case-other, not case case-1"):
        plan.validate({"plan_job": "job-p", "devices": "TB-M120"}, store, blobs, "case-1")
    assert plan.stages_for({"order": "x", "plan_job": "job-p", "devices": "TB-M120"}) == ("convert",)


def test_shares_end_by_revocation_and_by_time(store):
    for name in (OWNER, CONSULTANT, STRANGER):
        store.add_hospital(HospitalRecord(name, name * 2, 1))
    mine = CaseRecord("case-a", "a", True, 1, OWNER)
    for case in (mine, CaseRecord("case-b", "b", True, 2, OWNER), CaseRecord("case-c", "c", True, 3, CONSULTANT)):
        store.add_case(case)
    with pytest.raises(NotFound, match="no hospital 'nobody'"):
        sharing.share_case(store, mine, OWNER, "nobody", "view", 0)
    with pytest.raises(InvalidArgument, match="own"):
        sharing.share_case(store, mine, OWNER, OWNER, "view", 0)
    with pytest.raises(InvalidArgument, match="unknown grant 'all'"):
        sharing.share_case(store, mine, OWNER, CONSULTANT, "all", 0)
    sharing.share_case(store, mine, OWNER, CONSULTANT, "comment", 0)

    def visible(hospital: str) -> list[str]:
        return [c.case_id for c in store.list_visible_cases(hospital, int(time.time() * 1000))]

    assert visible(CONSULTANT) == ["case-a", "case-c"] and visible(STRANGER) == []
    assert visible(OWNER) == ["case-a", "case-b"]  # sharing gives the owner nothing of the consultant's
    sharing.consult(store, mine, CONSULTANT, "GetCase", {}, "comment")
    with pytest.raises(PermissionDenied, match="approve needs the approve grant"):
        sharing.consult(store, mine, CONSULTANT, "approve", {}, "approve")
    with pytest.raises(NotFound, match="no case 'case-a'"):
        sharing.consult(store, mine, STRANGER, "GetCase", {})
    consults = [e for e in store.list_audit(principal=CONSULTANT, action="consult")]
    assert consults and consults[0].objects == {"case_id": "case-a", "owner": OWNER}

    sharing.unshare_case(store, mine, OWNER, CONSULTANT)
    assert visible(CONSULTANT) == ["case-c"]
    with pytest.raises(NotFound, match="no case 'case-a'"):
        sharing.consult(store, mine, CONSULTANT, "GetCase", {})
    with pytest.raises(NotFound, match="not shared with"):
        sharing.unshare_case(store, mine, OWNER, CONSULTANT)

    soon = int(time.time() * 1000) + 300
    sharing.share_case(store, mine, OWNER, CONSULTANT, "view", soon)
    assert visible(CONSULTANT) == ["case-a", "case-c"]
    time.sleep(0.4)
    assert visible(CONSULTANT) == ["case-c"]
    with pytest.raises(NotFound):
        sharing.consult(store, mine, CONSULTANT, "GetCase", {})
    with pytest.raises(InvalidArgument, match="in the past"):
        sharing.share_case(store, mine, OWNER, CONSULTANT, "view", soon)


def test_an_older_store_gains_the_new_tables(location):
    first = open_store(location)
    with first.transaction():
        for table in ("versions", "reviews", "shares"):
            first._execute(f"DROP TABLE {table}")
        first._set_schema_version(4)
    first.add_case(CaseRecord("case-old", "kept", True, 1, OWNER))
    first.close()
    second = open_store(location)
    try:
        assert second._schema_version() == 5 and second.get_case("case-old").label == "kept"
        assert second.list_versions("job-x") == [] and second.list_shares("case-old") == []
    finally:
        second.close()
