"""Device plans over the grid: the standard plan converted for three linacs in parallel shards,
each checked from its RTPLAN file (QA) before release; a down device's conversion rerouted; a
device whose field cannot hold the target fails QA cleanly and releases nothing."""

from __future__ import annotations

import json

import pydicom
import pytest

from rtgrid.engines.dicomrt.rtdose import read_rtdose
from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs
from rtgrid.protos.v1 import admin_pb2, common_pb2

from .test_contour_e2e import assert_valid_per_dciodvfy

SHAPE, SPACING = (36, 112, 112), (4.5, 4.5, 3.0)
DOWN, AVAILABLE = common_pb2.DEVICE_STATUS_DOWN, common_pb2.DEVICE_STATUS_AVAILABLE


def _set(client, device_id: str, status: int, queue: int = -1):
    return client.call(client.admin.SetDevice, admin_pb2.SetDeviceRequest(device_id=device_id, status=status,
                                                                          queue_length=queue))


@pytest.fixture(scope="module")
def planned_case(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("devices")
    case = write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=12)
    rtstruct, order = write_plan_inputs(case, make_phantom(SHAPE, SPACING, seed=12), out / "manual")
    with grid.client() as client:
        return client.upload_folder(case.ct_dir, rtstruct).case.case_id, order.read_text()


def test_three_device_plans_pass_qa_and_a_down_device_is_rerouted(grid, planned_case, tmp_path):
    case_id, order = planned_case
    with grid.client() as client:
        catalog = client.call(client.admin.ListDevices, admin_pb2.ListDevicesRequest())
        assert {d.device_id for d in catalog.devices} == {"TB-M120", "TB-HD120", "VERSA-AGILITY", "SYNERGY-MLCI2"}
        _set(client, "TB-M120", DOWN)
        try:
            job = client.submit(case_id, "full", params={
                "order": order, "beams": "5", "dose_grid_mm": "5", "devices": "TB-M120,VERSA-AGILITY,SYNERGY-MLCI2"})
            events = list(client.watch(job.job_id))
        finally:
            _set(client, "TB-M120", AVAILABLE)
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        assert any("TB-M120 is down" in e.message and "TB-HD120" in e.message for e in events)
        converts = [s for s in client.shards(job.job_id) if s.stage == "convert"]
        assert len(converts) == 3 and len({s.agent_id for s in converts}) == 2  # parallel shards
        files = {a.name: client.download(a, tmp_path) for a in client.artifacts(job.job_id)}
    for device in ("TB-HD120", "VERSA-AGILITY", "SYNERGY-MLCI2"):
        rp = pydicom.dcmread(files[f"RP.{device}.dcm"])
        assert {b.TreatmentMachineName for b in rp.BeamSequence} == {device}
        rd = pydicom.dcmread(files[f"RD.{device}.dcm"])
        assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
        assert_valid_per_dciodvfy(files[f"RP.{device}.dcm"])
        qa = json.loads(files[f"qa.{device}.json"].read_text())
        assert qa["released"] and qa["gamma_pass_rate_pct"] >= 95.0
        assert files[f"report.{device}.pdf"].read_bytes()[:5] == b"%PDF-"
        assert qa["violations"] == [] and all(g["met"] for g in qa["goals"] if g["hard"])
        # The dose QA recomputed from the RTPLAN file agrees with the RTDOSE we ship.
        assert qa["max_abs_difference_shipped_vs_qa_dose_gy"] < 0.01 * 60
        dose, _ = read_rtdose(rd)
        assert dose.max() > 60.0 * 0.95
    assert "RP.TB-M120.dcm" not in files


def test_field_too_small_fails_qa_and_releases_nothing(grid, tmp_path):
    # A 27 cm long phantom whose right lung (the target here) is longer than the HD120's 22 cm field.
    shape, spacing = (90, 48, 48), (10.0, 10.0, 3.0)
    case = write_phantom_case(tmp_path / "long", shape=shape, spacing_mm=spacing, seed=13)
    long_order = """
prescription: {target: Lung_R, dose_gy: 20, fractions: 10}
constraints:
  - {structure: Lung_L, type: max_dose, dose_gy: 18}
"""
    with grid.client() as client:
        case_id = client.upload_folder(case.ct_dir).case.case_id
        job = client.submit(case_id, "full", params={
            "order": long_order, "gantry_angles": "180,270", "dose_grid_mm": "10", "devices": "TB-HD120"})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_FAILED
        assert "QA failed for TB-HD120" in events[-1].message and "field" in events[-1].message
        artifacts = {a.name: a for a in client.artifacts(job.job_id)}
        qa = json.loads(client.download(artifacts["qa.TB-HD120.json"], tmp_path).read_text())
    assert not any(n.startswith(("RP.TB", "RD.TB")) for n in artifacts)  # RP.standard.dcm is the standard plan
    # every attempt failed; the report describes the one that came closest, and lists them all
    attempts = qa["attempts"]
    assert len(attempts) == 3 and not any(a["passed"] for a in attempts)
    closest = max(attempts, key=lambda a: (-len(a["reasons"]), a["gamma_pass_rate_pct"]))
    assert qa["reported_attempt"] == closest["attempt"] and not qa["released"]
    assert qa["gamma_pass_rate_pct"] == pytest.approx(closest["gamma_pass_rate_pct"]) and qa["reasons"] == closest["reasons"]
