"""Review, approval and consultation over the real grid (TLS, tokens, real gRPC, Ray, SQLite, DICOM):
a physician's corrected RTSTRUCT uploaded as version 2, approved, planned on; the approval tags in
the downloaded objects; a master that requires approval holding an unapproved plan back; a case
shared with a consultant, seen, reviewed, revoked and expired, and tenant isolation both ways."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time

import grpc
import pydicom
import pytest

from rtgrid.client.pseudonym import Pseudonymizer
from rtgrid.protos.v1 import common_pb2

from rtgrid.engines.phantom import write_phantom_case

from ..client.test_pseudonym import IDENTITY
from .conftest import rtgrid_cmd, start_master_with, stop_process

CONSULTANT, STRANGER = "consultant-c", "stranger-d"
SHAPE, SPACING = (36, 112, 112), (4.5, 4.5, 3.0)  # as the plan test's: lungs the contour job finds
ORDER_ON_V2 = """
prescription: {target: Lung_R, dose_gy: 20, fractions: 10}
constraints:
  - {structure: Bones_corrected, type: max_dose, dose_gy: 25}
"""


def _refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""


def _download(client, job_id: str, name: str, out) -> pydicom.Dataset:
    artifact = next(a for a in client.artifacts(job_id) if a.name == name)
    return pydicom.dcmread(client.download(artifact, out))


@pytest.fixture(scope="module")
def tokens(grid) -> dict[str, str]:
    with grid.operator_client() as operator:
        return {name: operator.add_hospital(name).token for name in (CONSULTANT, STRANGER)}


@pytest.fixture(scope="module")
def reviewed(grid, tmp_path_factory):
    """hospital-a: a pseudonymized CT, its contour job, a corrected RTSTRUCT as version 2,
    approved, and a plan on it."""
    folder = tmp_path_factory.mktemp("review")
    ct = sorted(write_phantom_case(folder / "patient", shape=SHAPE, spacing_mm=SPACING, seed=4).ct_dir.iterdir())
    for path in ct:  # the patient's identity, which must never reach the grid
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=False)
    pseudonymizer = Pseudonymizer(folder / "map.json")
    copies, pseudonym = pseudonymizer.pseudonymize(ct, folder / "out")
    with grid.client() as client:
        case = client.upload_folder(*copies, label=pseudonym).case
        contour = client.submit(case.case_id, "contour", params={"shards": "2"})
        assert list(client.watch(contour.job_id))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        # The physician renames one structure: only version 2 has it, so only a plan on it can name it.
        edited = _download(client, contour.job_id, "RS.contours.dcm", folder / "v1")
        next(r for r in edited.StructureSetROISequence if r.ROIName == "Bones").ROIName = "Bones_corrected"
        edited.save_as(folder / "RS.edited.dcm", enforce_file_format=True)
        v2 = client.add_version(contour.job_id, folder / "RS.edited.dcm")
        with pytest.raises(grpc.RpcError) as on_v1:  # version 1 has no Bones_corrected
            client.submit(case.case_id, "plan", params={"order": ORDER_ON_V2, "contours_job": contour.job_id,
                                                        "contours_version": "1"})
        approved = client.review(contour.job_id, "approve", "Dr Li", "margins fixed", v2.artifact_name)
        plan = client.submit(case.case_id, "plan", params={
            "order": ORDER_ON_V2, "contours_job": contour.job_id, "gantry_angles": "180,240,300",
            "dose_grid_mm": "6"})
        events = list(client.watch(plan.job_id))
    return {"case": case, "contour": contour, "v2": v2, "approved": approved, "plan": plan, "events": events,
            "on_v1": on_v1.value, "pseudonym": pseudonym, "folder": folder}


def test_corrected_contours_approved_then_planned_on(grid, reviewed, tmp_path):
    v2, contour = reviewed["v2"], reviewed["contour"]
    assert (v2.lineage, v2.version, v2.status, v2.artifact_name) == \
        ("RS.contours.dcm", 2, "draft", "RS.contours.v2.dcm")
    on_v1 = reviewed["on_v1"]
    assert on_v1.code() == grpc.StatusCode.INVALID_ARGUMENT and "Bones_corrected" in on_v1.details()
    assert [(v.version, v.status, v.reviewer_name) for v in reviewed["approved"]] == \
        [(1, "draft", ""), (2, "approved", "Dr Li")]  # every version of the job, after the step
    assert reviewed["events"][-1].state == common_pb2.JOB_STATE_SUCCEEDED, reviewed["events"][-1].message
    with grid.client() as client:
        assert client.job(reviewed["plan"].job_id).params["contours_version"] == "2"  # the approved one, kept
        code, message = _refused(lambda: client.review(contour.job_id, "approve", "Dr Li", "",
                                                       "RS.contours.v2.dcm"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "that is approved" in message
        code, message = _refused(lambda: client.review(contour.job_id, "reject", "Dr Li", "", "RS.contours.dcm"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "comment" in message
        ds = _download(client, contour.job_id, "RS.contours.v2.dcm", tmp_path)
        assert (ds.ApprovalStatus, str(ds.ReviewerName), ds.ReviewDate) == \
            ("APPROVED", "Dr Li", time.strftime("%Y%m%d", time.gmtime(reviewed["approved"][1].reviewed_ms / 1000)))
        assert "Bones_corrected" in {r.ROIName for r in ds.StructureSetROISequence}
        # A file that is not an RTSTRUCT of this CT is refused, naming why.
        plan_file = client.download(next(a for a in client.artifacts(reviewed["plan"].job_id)
                                         if a.name == "RP.standard.dcm"), tmp_path)
        code, message = _refused(lambda: client.add_version(contour.job_id, plan_file))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "RTSTRUCT" in message
    env = {**os.environ, **grid.env()}
    listed = subprocess.run(rtgrid_cmd("versions", contour.job_id, "--format", "json"), env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["artifact_name"], r["status"]) for r in rows] == [("RS.contours.dcm", "draft"),
                                                                 ("RS.contours.v2.dcm", "approved")]
    assert rows[1]["history"][0]["to_status"] == "approved" and rows[1]["author"] == "hospital-a"
    with grid.operator_client() as operator:
        details = [e.detail for e in operator.audit(principal="hospital-a", action="approve")]
    assert any("draft -> approved by Dr Li: margins fixed" in d for d in details)


def test_an_earlier_plan_is_converted_for_a_device(grid, reviewed, tmp_path):
    """plan_job: only the convert stage runs, on the earlier job's set-up and standard plan."""
    with grid.client() as client:
        job = client.submit(reviewed["case"].case_id, "plan", params={"plan_job": reviewed["plan"].job_id,
                                                                      "devices": "TB-M120"})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        assert {s.stage for s in client.shards(job.job_id)} == {"convert"}
        rp = _download(client, job.job_id, "RP.TB-M120.dcm", tmp_path)
        standard = _download(client, reviewed["plan"].job_id, "RD.standard.dcm", tmp_path)
    assert {b.TreatmentMachineName for b in rp.BeamSequence} == {"TB-M120"}
    assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID  # the plan's structures, as planned
    assert standard.FrameOfReferenceUID == rp.FrameOfReferenceUID


def test_a_grid_that_requires_approval_holds_unapproved_plans_back(grid, reviewed, tmp_path):
    """A second master with --require-approval on a copy of the grid's store and blobs."""
    copy = tmp_path / "copy"
    copy.mkdir()
    with sqlite3.connect(grid.data_dir / "rtgrid.sqlite") as source, sqlite3.connect(copy / "rtgrid.sqlite") as to:
        source.backup(to)
    shutil.copytree(grid.data_dir / "blobs", copy / "blobs", copy_function=shutil.copy)
    proc, ready = start_master_with(copy, grid.ray_address, grid.pki, args=("--require-approval",))
    try:
        plan_job = reviewed["plan"].job_id
        case_id = reviewed["case"].case_id
        with grid.hospital_client(grid.token, ready["target"]) as client:
            code, message = _refused(lambda: _download(client, plan_job, "RP.standard.dcm", tmp_path))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert "plan RP.standard.dcm is draft" in message and "--require-approval" in message
            _download(client, plan_job, "RD.standard.dcm", tmp_path)  # what is not a plan goes out
            # Device plans come only from an approved plan: never from one made in the same job.
            code, message = _refused(lambda: client.submit(case_id, "plan", params={
                "order": ORDER_ON_V2, "contours_job": reviewed["contour"].job_id, "devices": "TB-M120"}))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "--plan-job" in message
            convert = {"plan_job": plan_job, "devices": "TB-M120"}
            code, message = _refused(lambda: client.submit(case_id, "plan", params=convert))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and f"plan_job={plan_job} is draft" in message
            env = {**os.environ, **grid.env(), "RTGRID_TARGET": ready["target"]}
            approved = subprocess.run(rtgrid_cmd("approve", plan_job, "--artifact", "RP.standard.dcm", "--as",
                                                 "Dr Wang"), env=env, capture_output=True, text=True, timeout=120)
            assert approved.returncode == 0, approved.stderr
            assert "RP.standard.dcm" in approved.stdout and "approved" in approved.stdout
            ds = _download(client, plan_job, "RP.standard.dcm", tmp_path)
            queued = client.submit(case_id, "plan", params=convert)  # approved: it may go to the device now
            assert (queued.stage, queued.params["order"]) == ("convert", ORDER_ON_V2)
            client.cancel(queued.job_id)  # this master has no agents
        assert (ds.ApprovalStatus, str(ds.ReviewerName)) == ("APPROVED", "Dr Wang")
    finally:
        stop_process(proc)


def test_a_shared_case_is_seen_reviewed_and_revoked(grid, reviewed, tokens, tmp_path):
    case_id, job_id = reviewed["case"].case_id, reviewed["contour"].job_id
    with grid.client() as owner, grid.hospital_client(tokens[CONSULTANT]) as consultant, \
            grid.hospital_client(tokens[STRANGER]) as stranger:
        assert _refused(lambda: consultant.case(case_id))[0] == grpc.StatusCode.NOT_FOUND
        share = owner.share(case_id, CONSULTANT, "review")
        assert (share.hospital, share.grant, share.until_ms) == (CONSULTANT, "review", 0)

        assert case_id in [c.case_id for c in consultant.cases()] and consultant.case(case_id).case_id == case_id
        assert consultant.job(job_id).case_id == case_id
        ds = _download(consultant, job_id, "RS.contours.v2.dcm", tmp_path / "consultant")
        assert str(ds.PatientName) == reviewed["pseudonym"] != IDENTITY["PatientName"]  # never the identity
        assert all(v not in str(ds) for v in IDENTITY.values())
        consultant.review(job_id, "comment", "Dr Zhou", "check the cord margin", "RS.contours.v2.dcm")
        code, message = _refused(lambda: consultant.review(job_id, "approve", "Dr Zhou", "", "RS.contours.dcm"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "approve grant" in message
        # A consultant reads and reviews; it never acts as the owner.
        for call in (lambda: consultant.submit(case_id, "contour"), lambda: consultant.cancel(job_id),
                     lambda: consultant.share(case_id, STRANGER), lambda: consultant.delete_case(case_id),
                     lambda: consultant.add_version(job_id, reviewed["folder"] / "RS.edited.dcm")):
            assert _refused(call)[0] == grpc.StatusCode.NOT_FOUND
        # Nobody else sees it, and the consultant's own case stays its own.
        for call in (lambda: stranger.case(case_id), lambda: stranger.job(job_id), lambda: stranger.versions(job_id),
                     lambda: stranger.artifacts(job_id)):
            assert _refused(call)[0] == grpc.StatusCode.NOT_FOUND
        assert case_id not in [c.case_id for c in stranger.cases()]
        theirs = consultant.create_case("consultant's own")
        assert _refused(lambda: owner.case(theirs.case_id))[0] == grpc.StatusCode.NOT_FOUND
        assert theirs.case_id not in [c.case_id for c in owner.cases()]

        owner.unshare(case_id, CONSULTANT)  # immediate: the very next call is refused
        for call in (lambda: consultant.case(case_id), lambda: consultant.job(job_id),
                     lambda: consultant.versions(job_id), lambda: consultant.artifacts(job_id)):
            code, message = _refused(call)
            assert code == grpc.StatusCode.NOT_FOUND
        assert case_id not in [c.case_id for c in consultant.cases()]

        owner.share(case_id, CONSULTANT, "view", int(time.time() * 1000) + 1500)
        assert consultant.case(case_id).case_id == case_id
        time.sleep(1.6)
        assert _refused(lambda: consultant.case(case_id))[0] == grpc.StatusCode.NOT_FOUND
        consultant.delete_case(theirs.case_id)
    with grid.operator_client() as operator:
        seen = operator.audit(principal=CONSULTANT, action="consult")
    assert {e.objects["case_id"] for e in seen} == {case_id} and {e.objects["owner"] for e in seen} == {"hospital-a"}
    what = {e.detail.split(" through")[0] for e in seen}
    assert {"ListCases", "GetCase", "GetJob", "ListArtifacts", "DownloadArtifact", "ReviewVersion comment"} <= what
    assert any(e.objects.get("name") == "RS.contours.v2.dcm" for e in seen)  # which object it downloaded
