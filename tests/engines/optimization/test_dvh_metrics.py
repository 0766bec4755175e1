"""DVHs, plan metrics and goal checks against hand-computed values and direct counting."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.optimization.dvh import (
    DvhError, cumulative_dvh, dose_at_volume, evaluate_goals, plan_metrics,
)
from rtgrid.engines.optimization.order import load_order


def test_metrics_of_a_ramp_match_hand_values():
    # 100 voxels receiving 1, 2, ..., 100 Gy (shuffled on a 4 x 5 x 5 grid), 0.5 cc each.
    rng = np.random.default_rng(3)
    dose = rng.permutation(np.arange(1.0, 101.0)).reshape(4, 5, 5)
    mask = np.ones_like(dose, dtype=bool)
    m = plan_metrics(dose, {"ramp": mask}, 0.5, dose_levels_gy=(90.0,))["ramp"]
    # D(v%) is the dose of the ceil(v)-th hottest voxel: D2 = 99, D10 = 91, D50 = 51, D95 = 6, D98 = 3.
    assert (m["D2"], m["D10"], m["D50"], m["D95"], m["D98"]) == (99.0, 91.0, 51.0, 6.0, 3.0)
    assert (m["Dmin"], m["Dmax"], m["Dmean"], m["volume_cc"]) == (1.0, 100.0, 50.5, 50.0)
    assert (m["V90Gy_pct"], m["V90Gy_cc"]) == (11.0, 5.5)
    # 95 % of 20 voxels is exactly 19 voxels, despite 0.95 * 20 = 19.000000000000004 in floating point.
    assert dose_at_volume(np.arange(1.0, 21.0), 95.0) == 2.0


def test_cumulative_dvh_equals_direct_counting():
    rng = np.random.default_rng(7)
    dose = rng.gamma(4.0, 5.0, size=(12, 20, 20))
    mask = rng.random(dose.shape) < 0.3
    dvh = cumulative_dvh(dose, mask, voxel_volume_cc=0.027, bin_gy=0.25)
    inside = dose[mask]
    expected_cc = np.array([np.count_nonzero(inside >= d) for d in dvh.dose_gy]) * 0.027
    np.testing.assert_allclose(dvh.volume_cc, expected_cc, rtol=0, atol=1e-9)
    assert dvh.dose_gy[0] == 0.0 and dvh.volume_pct[0] == 100.0 and dvh.volume_cc[-1] == 0.0
    assert dvh.total_volume_cc == pytest.approx(mask.sum() * 0.027)
    # Index arrays and masks are two spellings of the same structure.
    same = cumulative_dvh(dose, np.flatnonzero(mask), 0.027, bin_gy=0.25)
    np.testing.assert_array_equal(same.volume_cc, dvh.volume_cc)


def test_goals_report_met_and_missed_with_achieved_values():
    order = load_order(
        """
prescription: {target: PTV, dose_gy: 60, fractions: 30}
constraints:
  - {structure: PTV, type: max_dose, dose_gy: 66}
  - {structure: Cord, type: max_dose, dose_gy: 45}
  - {structure: Lung, type: max_mean_dose, dose_gy: 20}
  - {structure: Lung, type: max_dvh, dose_gy: 20, volume_pct: 30}
""",
        ["PTV", "Cord", "Lung"],
    )
    dose = np.zeros((1, 1, 40))
    ptv, cord, lung = np.arange(0, 20), np.arange(20, 25), np.arange(25, 40)
    dose[0, 0, ptv] = np.linspace(59.0, 67.0, 20)   # D95 = 19th hottest = 59.42 Gy, Dmax 67
    dose[0, 0, cord] = [10, 20, 30, 40, 44]
    dose[0, 0, lung] = np.r_[np.full(5, 30.0), np.full(10, 5.0)]  # mean 13.33; D30% = 5th hottest = 30
    results = evaluate_goals(order, dose, {"PTV": ptv, "Cord": cord, "Lung": lung}, 1.0)
    summary = [(r.goal, round(r.achieved_gy, 2), r.met) for r in results]
    assert summary == [
        ("PTV D95% >= 60 Gy (prescription)", 59.42, False),
        ("PTV Dmax <= 66 Gy", 67.0, False),
        ("Cord Dmax <= 45 Gy", 44.0, True),
        ("Lung Dmean <= 20 Gy", 13.33, True),
        ("Lung D30% <= 20 Gy", 30.0, False),
    ]


def test_structure_errors_name_the_structure():
    dose = np.ones((2, 3, 4))
    with pytest.raises(DvhError, match="mask of Heart has shape"):
        plan_metrics(dose, {"Heart": np.ones((2, 3, 3), dtype=bool)}, 1.0)
    with pytest.raises(DvhError, match="structure Heart holds no voxel"):
        plan_metrics(dose, {"Heart": np.zeros((2, 3, 4), dtype=bool)}, 1.0)
    order = load_order("prescription: {target: PTV, dose_gy: 2, fractions: 1}", ["PTV"])
    with pytest.raises(DvhError, match=r"no mask for \['PTV'\]"):
        evaluate_goals(order, dose, {}, 1.0)
