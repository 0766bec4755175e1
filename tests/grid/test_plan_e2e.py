"""The standard plan over the grid: beams spread over agents, goals of the medical order met,
RTDOSE valid and on the CT's frame of reference; a plan on an earlier contour job's structures;
orders that name unknown structures refused."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pydicom
import pytest

from rtgrid.engines.conversion.standard_plan import StandardPlan
from rtgrid.engines.dicomrt.rtdose import read_rtdose
from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import PHANTOM_ORDER, make_phantom, write_phantom_case, write_plan_inputs
from rtgrid.protos.v1 import common_pb2

from .test_contour_e2e import assert_valid_per_dciodvfy

SHAPE, SPACING = (36, 112, 112), (4.5, 4.5, 3.0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan-phantom")
    case = write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=4)
    rtstruct, order = write_plan_inputs(case, make_phantom(SHAPE, SPACING, seed=4), out / "manual")
    return case, rtstruct, order


def test_full_job_contours_then_plans(grid, phantom, tmp_path):
    case, rtstruct, order = phantom
    with grid.client() as client:
        uploaded = client.upload_folder(case.ct_dir, rtstruct, label="plan phantom").case
        assert any(a.startswith("RTSTRUCT:") for a in uploaded.attachments)
        job = client.submit(uploaded.case_id, "full", params={
            "order": order.read_text(), "beams": "5", "dose_grid_mm": "5", "shards": "2"})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        stages = [e.stage for e in events if e.type == common_pb2.EVENT_TYPE_PROGRESS]
        assert [s for i, s in enumerate(stages) if s not in stages[:i]] == ["contour", "merge", "setup", "dose", "optimize"]
        dose_shards = [s for s in client.shards(job.job_id) if s.stage == "dose"]
        assert len(dose_shards) == 5 and len({s.agent_id for s in dose_shards}) == 2
        files = {a.name: client.download(a, tmp_path) for a in client.artifacts(job.job_id)}
    assert {"RS.contours.dcm", "RD.standard.dcm", "standard-plan.npz", "plan-report.json", "dvh.png",
            "dose-wash.png", "report.pdf"} <= set(files)
    assert files["report.pdf"].read_bytes()[:5] == b"%PDF-"  # content: tests/engines/report/test_pdf_report.py
    rp = pydicom.dcmread(files["RP.standard.dcm"])  # the plan RD.standard.dcm references exists
    assert {b.TreatmentMachineName for b in rp.BeamSequence} == {"RTGRID-STANDARD"}
    assert pydicom.dcmread(files["RD.standard.dcm"]).ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == \
        rp.SOPInstanceUID
    assert_valid_per_dciodvfy(files["RP.standard.dcm"])
    report = json.loads(files["plan-report.json"].read_text())
    assert report["all_goals_met"], [g for g in report["goals"] if not g["met"]]
    plan = StandardPlan.from_bytes(files["standard-plan.npz"].read_bytes())
    assert len(plan.beams) == 5 and plan.machine_id == "rtgrid-standard-6mv"
    assert plan.order.prescription.target == "PTV" and plan.dose.shape == plan.dose.voxels.shape
    # The RTDOSE: valid, on the CT's frame of reference, referencing the standard plan, and its dose
    # agrees with the report (PTV D95 = 60 Gy after normalization).
    series = load_series_dir(case.ct_dir)
    ds = pydicom.dcmread(files["RD.standard.dcm"])
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == report["plan_uid"]
    assert_valid_per_dciodvfy(files["RD.standard.dcm"])
    dose, grid_volume = read_rtdose(ds)
    assert np.allclose(grid_volume.spacing_mm, 5.0)
    ptv_ct = read_rtstruct(pydicom.dcmread(files["RS.contours.dcm"]), series.volume)  # automatic contours
    assert {"BODY", "Lung_L", "Lung_R"} <= set(ptv_ct)
    assert abs(report["metrics"]["PTV"]["D95"] - 60.0) < 0.05
    assert report["metrics"]["SpinalCord"]["Dmax"] <= 45.0 + 1e-6
    assert dose.max() == pytest.approx(report["metrics"]["BODY"]["Dmax"], rel=1e-3)


def test_plan_on_earlier_contour_job_and_bad_orders(grid, phantom):
    case, rtstruct, order = phantom
    with grid.client() as client:
        ct_only = client.upload_folder(case.ct_dir).case
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(ct_only.case_id, "plan", params={"order": order.read_text()})
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "contours" in caught.value.details()
        contour = client.submit(ct_only.case_id, "contour")
        list(client.watch(contour.job_id))
        # The automatic contours have no PTV: the order names a structure nobody drew.
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(ct_only.case_id, "plan", params={"order": order.read_text(), "contours_job": contour.job_id})
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "PTV" in caught.value.details()
        impossible = PHANTOM_ORDER.replace("dose_gy: 60,", "dose_gy: -60,")
        with_rs = client.upload_folder(case.ct_dir, rtstruct).case
        # Another case of the same hospital, even of the same CT: its contours never reach this plan.
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(with_rs.case_id, "plan", params={"order": order.read_text(), "contours_job": contour.job_id})
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ct_only.case_id in caught.value.details() and with_rs.case_id in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(with_rs.case_id, "full", params={"order": impossible})
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dose" in caught.value.details().lower()
        lung_order = """
prescription: {target: Lung_R, dose_gy: 20, fractions: 10}
constraints:
  - {structure: Lung_L, type: max_dose, dose_gy: 15}
"""
        job = client.submit(ct_only.case_id, "plan", params={
            "order": lung_order, "contours_job": contour.job_id, "gantry_angles": "180,240,300", "dose_grid_mm": "6"})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        assert len([s for s in client.shards(job.job_id) if s.stage == "dose"]) == 3


def test_a_plan_that_fails_its_hard_goals_fails_the_job_loudly_and_releases_nothing(grid, phantom, tmp_path):
    # The body cannot stay under 15 Gy where the target gets 20 Gy: the plan misses that hard goal
    # by 5 Gy, beyond the 1 Gy (5 % of Rx) tolerance. The job fails at the optimize stage, says
    # why, releases no RTDOSE or standard plan, and converts nothing for the device it named.
    case, _, _ = phantom
    with grid.client() as client:
        ct_only = client.upload_folder(case.ct_dir).case
        contour = client.submit(ct_only.case_id, "contour")
        list(client.watch(contour.job_id))
        failing = """
prescription: {target: Lung_R, dose_gy: 20, fractions: 10}
constraints:
  - {structure: BODY, type: max_dose, dose_gy: 15}
"""
        job = client.submit(ct_only.case_id, "plan", params={
            "order": failing, "contours_job": contour.job_id, "gantry_angles": "180,240,300", "dose_grid_mm": "6",
            "devices": "auto"})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_FAILED
        assert events[-1].message.startswith("standard plan FAILED its release check, nothing released")
        assert "hard goal BODY Dmax <= 15 Gy missed" in events[-1].message
        names = {a.name: a for a in client.artifacts(job.job_id)}
        assert "plan-report.json" in names and "dvh.png" in names
        assert "RD.standard.dcm" not in names and "standard-plan.npz" not in names
        assert not any(name.startswith(("RP.", "RD.TB")) for name in names)
        assert not [s for s in client.shards(job.job_id) if s.stage == "convert"]
        report = json.loads(client.download(names["plan-report.json"], tmp_path).read_text())
        assert next(iter(report)) == "release" and report["release"]["released"] is False
        assert report["levels"][0]["target"] == "Lung_R" and report["levels"][0]["D95"] == pytest.approx(20.0, abs=0.05)
