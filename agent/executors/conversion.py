"""Device-plan executor: the engine's release loop (convert, RTPLAN, independent QA, bounded
regeneration: :func:`rtgrid.engines.qa.release.release_device_plan`) for one device, then its
files: the QA report and pictures always, the RTPLAN and RTDOSE only when the plan is released."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rtgrid.engines.conversion.device import load_device
from rtgrid.engines.conversion.standard_plan import StandardPlan
from rtgrid.engines.dicomrt.rtdose import write_rtdose
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.dvh import cumulative_dvh
from rtgrid.engines.qa.plan_check import QaResult
from rtgrid.engines.qa.release import release_device_plan, release_report
from rtgrid.engines.report.pdf_report import device_plan_pdf
from rtgrid.engines.report.plan_report import render_dvh_png, render_gamma_png

from rtgrid.protos.grid_contract import Artifact, ConvertDeviceCall, DevicePlanResult, PlanSetup

from .files import dataset_bytes
from .plan import setup_grid


def convert_device(call: ConvertDeviceCall) -> dict[str, Any]:
    """One device's plan, released only when QA passes (at most as many tries as the release policy allows)."""
    plan = StandardPlan.from_bytes(call.standard_plan)
    device = load_device(call.model_id)
    setup = PlanSetup.from_result(call.setup)
    density, masks = setup_grid(setup), setup.masks
    series, device_name, rtstruct_uid = call.series, call.device_name, call.rtstruct_uid
    release = release_device_plan(plan, density, masks, device, series, device_name=device_name,
                                  rtstruct_uid=rtstruct_uid)
    best, passed = release.reported, release.released
    dp, qa, rtplan = best.device_plan, best.qa, best.rtplan
    report = release_report(release, device_name)
    files = [(f"qa.{device_name}.json", "qa_report", "", json.dumps(report, indent=2).encode()),
             (f"qa.{device_name}.png", "image", "", _dvh_comparison(plan, qa, masks, density, device_name, passed)),
             (f"gamma.{device_name}.png", "image", "", render_gamma_png(
                 qa.gamma, density, title=f"{device_name}: gamma {qa.gamma_pass_rate_pct:.1f}% "
                                          f"({qa.gamma_criteria['dose_percent']:g}%/{qa.gamma_criteria['distance_mm']:g} mm)"))]
    # This device's section of the plan document, from the QA report and the two pictures above.
    files.append((f"report.{device_name}.pdf", "report_pdf", "", device_plan_pdf(
        series, report, str(rtplan.SOPInstanceUID), device.machine.content_hash, rtstruct_uid, files[1][3], files[2][3])))
    if passed:
        rtdose = write_rtdose(dp.dose.voxels, density, series, referenced_rtplan_uid=rtplan.SOPInstanceUID,
                              comment=f"rtgrid plan for {device_name}")
        files = [(f"RP.{device_name}.dcm", "rtplan", "RTPLAN", best.rtplan_bytes),
                 (f"RD.{device_name}.dcm", "rtdose", "RTDOSE", dataset_bytes(rtdose))] + files
    return DevicePlanResult(device_name, passed, list(best.reasons), tuple(Artifact(*f) for f in files)).to_result()


def _dvh_comparison(plan: StandardPlan, qa: QaResult, masks: dict[str, np.ndarray], grid: Volume, name: str,
                    passed: bool) -> bytes:
    voxel_cc = grid.voxel_volume_mm3 / 1000.0
    dvhs, reference = {}, {}
    for structure, mask in masks.items():
        d = cumulative_dvh(qa.dose_gy, mask, voxel_cc)
        r = cumulative_dvh(plan.dose.voxels, mask, voxel_cc)
        dvhs[structure], reference[structure] = (d.dose_gy, d.volume_pct), (r.dose_gy, r.volume_pct)
    verdict = "released" if passed else "NOT released"
    return render_dvh_png(dvhs, reference=reference,
                          title=f"{name}: QA dose (solid) vs standard plan (dashed), gamma "
                                f"{qa.gamma_pass_rate_pct:.1f}% — {verdict}")
