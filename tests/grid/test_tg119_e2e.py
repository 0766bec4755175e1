"""The AAPM TG-119 C-shape test over the grid: the phantom uploaded as a CT series with a manual
RTSTRUCT, planned with the TG-119 order on 9 beams (5 mm dose grid), and converted for three linacs;
every device plan passes its independent QA and is released, and the standard plan meets the
TG-119 goals (Ezzell et al., Med. Phys. 36 (2009) 5359): PTV D95 >= 50 Gy, core D10 <= 25 Gy
(the easier goal), checked both in the plan report and on the shipped RTDOSE sampled at the CT's
structure voxels."""

from __future__ import annotations

import json
import os

import numpy as np
import pydicom
import pytest
from scipy.ndimage import map_coordinates

from rtgrid.engines.dicomrt.rtdose import read_rtdose
from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom.tg119 import Tg119Error
from rtgrid.engines.phantom.tg119_dicom import write_tg119_case
from rtgrid.protos.v1 import common_pb2

DEVICES = ("TB-M120", "VERSA-AGILITY", "SYNERGY-MLCI2")
BEAMS = 9
RX_GY = 50.0


@pytest.fixture(scope="module")
def tg119_case(tmp_path_factory):
    out = tmp_path_factory.mktemp("tg119")
    try:
        ct_dir, rtstruct, order = write_tg119_case(out)
    except Tg119Error as exc:
        if os.environ.get("CI"):
            pytest.fail(f"TG-119 phantom missing in CI: {exc}")
        pytest.skip(str(exc))
    return ct_dir, rtstruct, order


def _dose_at_voxels(dose_gy: np.ndarray, grid, points_lps: np.ndarray) -> np.ndarray:
    """Trilinear dose at LPS points (mm), from the RTDOSE grid alone."""
    ijk = grid.lps_to_index(points_lps)
    return map_coordinates(dose_gy, ijk[:, ::-1].T, order=1, mode="nearest")


def _percentile_dose(values: np.ndarray, volume_pct: float) -> float:
    """D_v: the least dose received by the hottest ``volume_pct`` of the voxels."""
    return float(np.percentile(values, 100.0 - volume_pct))


def test_tg119_plan_and_three_device_plans(grid, tg119_case, tmp_path):
    ct_dir, rtstruct, order = tg119_case
    with grid.client() as client:
        case_id = client.upload_folder(ct_dir, rtstruct, label="TG-119").case.case_id
        job = client.submit(case_id, "plan", params={
            "order": order, "beams": str(BEAMS), "dose_grid_mm": "5", "devices": ",".join(DEVICES)})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        shards = client.shards(job.job_id)
        assert len([s for s in shards if s.stage == "dose"]) == BEAMS
        converts = [s for s in shards if s.stage == "convert"]
        assert sorted(s.target for s in converts) == sorted(DEVICES)
        files = {a.name: client.download(a, tmp_path) for a in client.artifacts(job.job_id)}

    for device in DEVICES:
        assert {f"RP.{device}.dcm", f"RD.{device}.dcm", f"qa.{device}.json", f"qa.{device}.png"} <= set(files)
        qa = json.loads(files[f"qa.{device}.json"].read_text())
        assert qa["passed"] and qa["released"], (device, qa["reasons"])
        assert qa["gamma_pass_rate_pct"] >= 95.0, (device, qa["gamma_pass_rate_pct"])
        assert qa["gamma_criteria"]["dose_percent"] == 3.0 and qa["gamma_criteria"]["distance_mm"] == 2.0
        rp = pydicom.dcmread(files[f"RP.{device}.dcm"])
        assert {b.TreatmentMachineName for b in rp.BeamSequence} == {device} and len(rp.BeamSequence) == BEAMS

    report = json.loads(files["plan-report.json"].read_text())
    ptv, core = report["metrics"]["OuterTarget"], report["metrics"]["Core"]
    assert ptv["D95"] >= RX_GY - 0.05, ptv
    assert core["D10"] <= 25.0, core

    # The same goals from the shipped RTDOSE, sampled at the centres of the CT voxels of each
    # structure (the RTSTRUCT read back on the CT): independent of the plan's own dose-grid masks.
    series = load_series_dir(ct_dir)
    masks = read_rtstruct(pydicom.dcmread(rtstruct), series.volume)
    dose, dose_grid = read_rtdose(pydicom.dcmread(files["RD.standard.dcm"]))
    ct = series.volume
    sampled = {}
    for name in ("OuterTarget", "Core"):
        lps = ct.index_to_lps(np.argwhere(masks[name])[:, ::-1])  # (k, j, i) -> (i, j, k) -> LPS mm
        sampled[name] = _dose_at_voxels(dose, dose_grid, lps)
    # 1 Gy tolerance: the plan is normalized on the 5 mm grid's masks, not on the CT's voxels.
    assert _percentile_dose(sampled["OuterTarget"], 95.0) >= RX_GY - 1.0
    assert _percentile_dose(sampled["Core"], 10.0) <= 25.0
