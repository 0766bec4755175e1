"""The release loop of a device plan: reasons, shortfalls and the closest attempt on hand-made QA
results, and the whole loop (real conversion, RTPLAN, independent QA) on a small water phantom under
the shipped policy and under a policy no plan can meet."""

from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import pydicom
import pytest
import torch
import yaml

from rtgrid.engines.conversion.device import load_device
from rtgrid.engines.conversion.mimic import tightened_order
from rtgrid.engines.conversion.segment import Violation
from rtgrid.engines.conversion.standard_plan import StandardPlan
from rtgrid.engines.dose.beams import equispaced_gantry_angles
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.coplanar_plan import compute_dose_influence, optimize_plan
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.engines.qa.plan_check import QaResult
from rtgrid.engines.qa.policy import DEFAULT_POLICY, DEFAULT_POLICY_PATH, load_release_policy
from rtgrid.engines.qa.release import (
    closest_attempt,
    release_device_plan,
    release_reasons,
    release_report,
    shortfalls_gy,
)

ORDER = """
prescription: {target: PTV, dose_gy: 60, fractions: 30}
constraints:
  - {structure: OAR, type: max_dvh, dose_gy: 30, volume_pct: 10, priority: 1}
  - {structure: BODY, type: max_dose, dose_gy: 66, priority: 3}
"""


def _qa(goals=(), reasons=(), gamma_pct=100.0) -> QaResult:
    return QaResult(passed=not reasons, reasons=tuple(reasons), gamma_pass_rate_pct=gamma_pct, gamma_criteria={},
                    goals=tuple(goals), violations=(), total_mu=0.0, segments=0, dose_gy=np.zeros(1), gamma=np.zeros(1))


def _goal(achieved, standard, *, met, hard=True, lower=False):
    return {"goal": "g", "achieved_gy": achieved, "limit_gy": 0.0, "met": met, "hard": hard, "lower_bound": lower,
            "standard_plan_gy": standard}


def test_conversion_violations_join_the_qa_reasons_once_each():
    field = Violation("field_size", 0, None, "target beyond the leaf bank")
    mu = Violation("beam_mu", 1, None, "beam MU 2.1 < 3")
    qa_reasons = ("gamma 3%/2 mm pass rate 90.0% < 95%", "not deliverable: beam MU 2.1 < 3")
    assert release_reasons(qa_reasons, [field, mu, field]) == (*qa_reasons, "not deliverable: target beyond the leaf bank")
    assert release_reasons((), ()) == ()


def test_shortfalls_are_how_far_a_missed_hard_goal_fell_behind_the_standard_plan():
    goals = [
        _goal(55.0, 60.0, met=False, lower=True),   # the prescription level: never a constraint shortfall
        _goal(32.5, 30.0, met=False),               # upper bound 2.5 Gy above the standard plan
        _goal(57.0, 58.5, met=False, lower=True),   # lower bound 1.5 Gy below it
        _goal(40.0, 30.0, met=False, hard=False),   # soft: never tightened
        _goal(29.0, 30.0, met=False),               # missed, but no worse than the standard plan
        _goal(35.0, 20.0, met=True),                # met: nothing to tighten
    ]
    assert shortfalls_gy(_qa(goals), n_levels=1) == pytest.approx([2.5, 1.5, 0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A standard plan on a water cylinder (PTV on the axis, an OAR behind it) and a CT series to file it under."""
    torch.set_num_threads(1)
    shape, spacing = (10, 36, 40), 4.0
    nz, ny, nx = shape
    origin = -(np.array([nx, ny, nz]) - 1) / 2 * spacing
    z, y, x = np.meshgrid(*(origin[2 - a] + spacing * np.arange(shape[a]) for a in range(3)), indexing="ij")
    body = (x / 75) ** 2 + (y / 65) ** 2 <= 1
    ptv = (x**2 + y**2 <= 20.0**2) & (np.abs(z) <= 16.0)
    oar = (x**2 + (y - 34.0) ** 2 <= 9.0**2) & (np.abs(z) <= 20.0) & ~ptv
    density = Volume(np.where(body, 1.0, 0.0).astype(np.float32), origin, (spacing,) * 3)
    machine = load_machine()
    influence = compute_dose_influence(density, {"PTV": ptv, "OAR": oar, "BODY": body}, "PTV", "BODY", machine,
                                       equispaced_gantry_angles(5), dose_grid_mm=4.0)
    order = load_order(ORDER, influence.masks)
    result = optimize_plan(influence, order, machine, "BODY", max_iter=60, solver="torch", device="cpu")
    plan = StandardPlan.from_optimization(machine, influence.bixels, result.weights, influence.dose_grid,
                                          result.dose_gy, order, "BODY")
    series = load_series_dir(write_phantom_case(tmp_path_factory.mktemp("ct"), shape=(8, 32, 32),
                                                spacing_mm=(4.0, 4.0, 4.0)).ct_dir)
    return plan, influence, series


def test_a_plan_that_passes_qa_is_released_at_the_first_attempt(case):
    plan, influence, series = case
    device = load_device("varian-truebeam-m120-6x")
    release = release_device_plan(plan, influence.dose_grid, influence.masks, device, series, device_name="TB-M120",
                                  rtstruct_uid="1.2.3.4")
    assert release.released and len(release.attempts) == 1 and release.reported is release.attempts[0]
    best = release.reported
    assert best.settings == DEFAULT_POLICY.attempts[0] and best.objectives == plan.order and best.reasons == ()
    assert best.qa.gamma_pass_rate_pct >= DEFAULT_POLICY.qa.gamma.pass_rate_pct
    # what QA read is what ships: the RTPLAN bytes name the device and its model
    ds = pydicom.dcmread(io.BytesIO(best.rtplan_bytes))
    assert ds.SOPInstanceUID == best.rtplan.SOPInstanceUID and ds.RTPlanLabel == "TB-M120"
    assert {b.TreatmentMachineName for b in ds.BeamSequence} == {"TB-M120"}
    report = release_report(release, "TB-M120")
    assert report["released"] and report["reported_attempt"] == 1 and report["model"] == device.id
    assert report["attempts"] == [{"attempt": 1, "settings": {"n_levels": 10}, "passed": True, "reasons": [],
                                   "gamma_pass_rate_pct": best.qa.gamma_pass_rate_pct,
                                   "objectives": [c.describe() for c in plan.order.constraints]}]
    assert report["policy"]["sha256"] == DEFAULT_POLICY.content_hash
    assert report["max_abs_difference_shipped_vs_qa_dose_gy"] < 0.01 * 60


def test_a_plan_no_attempt_can_pass_runs_every_attempt_and_reports_the_closest(case, tmp_path):
    plan, influence, series = case
    # 0.1 %/0.1 mm at 100 %: no recomputed dose meets it; every constraint hard, with 0.06 Gy of slack
    data = copy.deepcopy(yaml.safe_load(DEFAULT_POLICY_PATH.read_text()))
    data["qa"]["gamma"].update(dose_percent=0.1, distance_mm=0.1, pass_rate_pct=100)
    data["qa"]["hard_priority"] = 3
    data["conversion"]["attempts"] = [{"n_levels": 4}, {"n_levels": 8, "threshold": 1.0, "max_iter": 40}]
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(data))
    policy = load_release_policy(tmp_path / "strict.yaml")
    release = release_device_plan(plan, influence.dose_grid, influence.masks, load_device("varian-truebeam-m120-6x"),
                                  series, device_name="TB-M120", rtstruct_uid="1.2.3.4", policy=policy)
    first, second = release.attempts
    assert not release.released and not first.passed and not second.passed
    assert first.qa.gamma_criteria["pass_rate_required_pct"] == 100.0
    assert all(any(r.startswith("gamma 0.1%/0.1 mm pass rate") for r in a.reasons) for a in release.attempts)
    # attempt 1 reused the standard fluence; attempt 2 re-optimized, on the goals tightened by attempt 1's shortfalls
    assert first.device_plan.reused_standard_plan and not second.device_plan.reused_standard_plan
    shortfalls = shortfalls_gy(first.qa, len(plan.order.levels))
    assert max(shortfalls) > 0.5  # the OAR's D10 fell behind the standard plan's (about 1.9 Gy here)
    assert second.objectives == tightened_order(first.objectives, shortfalls) != first.objectives
    key = [(a.passed, -len(a.reasons), a.qa.gamma_pass_rate_pct) for a in release.attempts]
    assert release.reported is release.attempts[max(range(len(key)), key=key.__getitem__)]  # the first of equals
    report = release_report(release, "TB-M120")
    assert not report["released"] and report["reasons"] == list(release.reported.reasons)
    assert [a["attempt"] for a in report["attempts"]] == [1, 2] and report["reported_attempt"] == release.reported.number
    # the choice among attempts: fewer reasons beat a higher gamma; a pass beats everything; ties keep the earliest
    fewer = dataclasses.replace(second, reasons=("one reason",), qa=dataclasses.replace(second.qa, gamma_pass_rate_pct=1.0))
    more = dataclasses.replace(first, reasons=("a", "b"), qa=dataclasses.replace(first.qa, gamma_pass_rate_pct=99.0))
    assert closest_attempt([more, fewer]) is fewer
    passed = dataclasses.replace(more, reasons=())
    assert closest_attempt([fewer, passed]) is passed
    twin = dataclasses.replace(fewer, number=3)
    assert closest_attempt([fewer, twin]) is fewer
    with pytest.raises(ValueError, match="no attempt"):
        closest_attempt([])
