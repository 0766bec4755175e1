"""The hospital's DICOM node end to end against a real DICOM peer (dcmtk): ``storescu`` sends a CT
series to ``rtgrid gateway``, which de-identifies it, uploads it to a real grid (TLS, token),
runs a contour job and pushes the re-identified RTSTRUCT to a ``storescp`` acting as the TPS.
On a grid that requires approval, a TPS's CT and RTSTRUCT become one full job whose plan reaches
the TPS only once a physicist has approved it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs

from .conftest import HOSPITAL, Grid, free_port, rtgrid_cmd, stop_process

ROUND_TRIP_TIMEOUT_S = 600


def _dcmtk() -> None:
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        if os.environ.get("CI"):
            pytest.fail("dcmtk is missing in CI (make tools installs it)")
        pytest.skip("dcmtk (storescu, storescp) is not installed")


def _json_line(proc: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"gateway exited ({proc.poll()}) without the expected line")
        if line.startswith("{"):
            return json.loads(line)
    raise TimeoutError("no JSON line from the gateway")


def test_gateway_round_trip_with_dcmtk(grid, tmp_path):
    _dcmtk()
    phantom = write_phantom_case(tmp_path / "phantom", shape=(40, 160, 160), spacing_mm=(3.0, 3.0, 3.0), seed=1)
    tps_dir = tmp_path / "tps"
    tps_dir.mkdir()
    tps_port = free_port()
    tps = subprocess.Popen(["storescp", "-aet", "TPS", "-od", str(tps_dir), str(tps_port)], start_new_session=True)
    mapping = tmp_path / "pseudonyms.json"
    gateway = subprocess.Popen(
        rtgrid_cmd("gateway", "--ae-title", "RTGRID", "--host", "127.0.0.1", "--port", "0", "--kind", "contour",
                   "--send-to", f"TPS@127.0.0.1:{tps_port}", "--accept", "CT_SIM", "--spool", str(tmp_path / "spool"),
                   "--quiet-s", "2", "--pseudonymize", "--pseudonym-map", str(mapping),
                   "--target", grid.target, "--ca", str(grid.pki.ca), "--token", grid.token),
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = _json_line(gateway, 120)
        assert ready["ae_title"] == "RTGRID" and ready["send_to"] == [f"TPS@127.0.0.1:{tps_port}"]
        port = str(ready["port"])
        # C-ECHO answers; a calling AE that is not accepted is refused.
        assert subprocess.run(["echoscu", "-aet", "CT_SIM", "-aec", "RTGRID", "127.0.0.1", port]).returncode == 0
        refused = subprocess.run(["storescu", "-aet", "STRANGER", "-aec", "RTGRID", "127.0.0.1", port,
                                  str(phantom.ct_files[0])], capture_output=True, text=True)
        assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr
        sent = subprocess.run(["storescu", "-aet", "CT_SIM", "-aec", "RTGRID", "+sd", "+r", "127.0.0.1", port,
                               str(phantom.ct_dir)], capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr
        # An MR image: kept, uploaded, refused by the master (a plan needs a CT), set aside with the reason.
        mr = subprocess.run(["storescu", "-aet", "CT_SIM", "-aec", "RTGRID", "127.0.0.1", port,
                             get_testdata_file("MR_small.dcm")], capture_output=True, text=True)
        assert mr.returncode == 0, mr.stderr

        ended = {}
        while len(ended) < 2:
            record = _json_line(gateway, ROUND_TRIP_TIMEOUT_S)
            ended[record["event"]] = record
        done, failed = ended["done"], ended["failed"]
        assert done["instances"] == 40 and done["pushed"] == {f"TPS@127.0.0.1:{tps_port}": 1}
        assert failed["instances"] == 1 and "refused the series" in failed["error"] and "MR" in failed["error"]
    finally:
        stop_process(gateway)
        stop_process(tps)
    assert gateway.returncode == 0  # SIGTERM: a clean stop

    # The TPS holds the RTSTRUCT, re-identified: the patient and the UIDs of the series it was sent.
    received = [pydicom.dcmread(p) for p in tps_dir.iterdir()]
    assert [ds.Modality for ds in received] == ["RTSTRUCT"]
    rs = received[0]
    ct = pydicom.dcmread(phantom.ct_files[0], stop_before_pixels=True)
    assert rs.PatientID == phantom.patient_id and rs.StudyInstanceUID == ct.StudyInstanceUID
    frame = rs.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    sent_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in phantom.ct_files}
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == sent_uids
    assert {"BODY", "Lung_L", "Lung_R"} <= {r.ROIName for r in rs.StructureSetROISequence}

    # The grid saw only the pseudonym; the spool kept no instance once the master had the series.
    with grid.client() as client:
        case = client.job(done["job_id"]).case_id
        assert client.call(client.hospital.GetCase, _get_case(case)).label.startswith("RTG-")
    spool = tmp_path / "spool"
    assert list((spool / "ready").iterdir()) == [] and list((spool / "incoming").iterdir()) == []
    assert [p.name for p in (spool / "done").iterdir() for p in p.glob("*.dcm")] == []
    [kept] = (spool / "failed").iterdir()  # the refused series keeps its instance
    assert len(list(kept.glob("*.dcm"))) == 1
    assert json.loads(mapping.read_text())["patients"][phantom.patient_id]["pseudonym"].startswith("RTG-")


def _get_case(case_id: str):
    from rtgrid.protos.v1 import hospital_pb2

    return hospital_pb2.GetCaseRequest(case_id=case_id)


@pytest.fixture(scope="module")
def approval_grid(ray_cluster, pki, tmp_path_factory):
    """A master that requires approval before plans leave it (``rtgrid up --require-approval``)."""
    g = Grid(tmp_path_factory.mktemp("approval-grid"), ray_cluster.address, pki)
    g.start_master(args=("--require-approval",))
    try:
        g.add_hospital(HOSPITAL)
        g.start_agent("agent-approval", cpus=2)
        yield g
    finally:
        g.stop()


def test_gateway_plans_a_tps_ct_with_its_structures_and_pushes_only_the_approved_plan(approval_grid, tmp_path):
    _dcmtk()
    grid = approval_grid
    shape, spacing = (36, 112, 112), (4.5, 4.5, 3.0)  # as the plan tests: a feasible order
    phantom = write_phantom_case(tmp_path / "phantom", shape=shape, spacing_mm=spacing, seed=4)
    rtstruct, order = write_plan_inputs(phantom, make_phantom(shape, spacing, seed=4), tmp_path / "manual")
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"rules:\n  - match: {{modality: CT}}\n    kind: full\n    order: {order}\n"
                     f"    params: {{beams: '5', dose_grid_mm: '6'}}\n")
    tps_dir = tmp_path / "tps"
    tps_dir.mkdir()
    tps_port = free_port()
    tps = subprocess.Popen(["storescp", "-aet", "TPS", "-od", str(tps_dir), str(tps_port)], start_new_session=True)
    gateway = subprocess.Popen(
        rtgrid_cmd("gateway", "--ae-title", "RTGRID", "--host", "127.0.0.1", "--port", "0", "--rules", str(rules),
                   "--send-to", f"TPS@127.0.0.1:{tps_port}", "--spool", str(tmp_path / "spool"), "--quiet-s", "3",
                   "--target", grid.target, "--ca", str(grid.pki.ca), "--token", grid.token),
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = str(_json_line(gateway, 120)["port"])
        # The TPS sends the CT and the physician's structures in one association.
        sent = subprocess.run(["storescu", "-aet", "TPS_SIM", "-aec", "RTGRID", "127.0.0.1", port,
                               *map(str, phantom.ct_files), str(rtstruct)], capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr
        waiting = _json_line(gateway, ROUND_TRIP_TIMEOUT_S)
        assert waiting["event"] == "awaiting_approval", waiting
        assert "RP.standard.dcm is draft" in waiting["error"] and "--require-approval" in waiting["error"]
        time.sleep(3)  # a few polls: still held, and said once
        assert list(tps_dir.iterdir()) == []
        with grid.client() as client:
            case = client.case(client.job(waiting["job_id"]).case_id)
        assert any(a.startswith("RTSTRUCT:") for a in case.attachments)  # the structures joined their CT

        env = {**os.environ, **grid.env()}
        approved = subprocess.run(rtgrid_cmd("approve", waiting["job_id"], "--artifact", "RP.standard.dcm",
                                             "--as", "Dr Wang"), env=env, capture_output=True, text=True, timeout=120)
        assert approved.returncode == 0, approved.stderr
        done = _json_line(gateway, 120)
        assert done["event"] == "done" and done["job_id"] == waiting["job_id"], done
        assert done["pushed"] == {f"TPS@127.0.0.1:{tps_port}": 3}
    finally:
        stop_process(gateway)
        stop_process(tps)
    received = {ds.Modality: ds for ds in (pydicom.dcmread(p) for p in tps_dir.iterdir())}
    assert set(received) == {"RTSTRUCT", "RTPLAN", "RTDOSE"}  # the grid's contours, the plan, its dose
    assert (received["RTPLAN"].ApprovalStatus, str(received["RTPLAN"].ReviewerName)) == ("APPROVED", "Dr Wang")
    ct = pydicom.dcmread(phantom.ct_files[0], stop_before_pixels=True)
    assert received["RTDOSE"].FrameOfReferenceUID == ct.FrameOfReferenceUID
