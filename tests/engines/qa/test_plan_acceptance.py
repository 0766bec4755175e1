"""The release check of a standard plan on analytic doses: hot spots and badly missed hard goals fail it."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.optimization.dvh import evaluate_goals
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.qa.plan_acceptance import judge_standard_plan

ORDER = """
prescriptions:
  - {target: PTV70, dose_gy: 70}
  - {target: PTV56, dose_gy: 56}
fractions: 35
constraints:
  - {structure: SpinalCord, type: max_dose, dose_gy: 45}
  - {structure: Parotid, type: max_mean_dose, dose_gy: 26}
"""
NAMES = ("PTV70", "PTV56", "SpinalCord", "Parotid", "BODY")


def _case(ptv70=70.0, ptv56=56.0, cord=40.0, parotid=20.0, hot=None):
    """A 1-D 'patient': 20 voxels per structure, a uniform dose on each."""
    masks = {name: np.zeros(100, dtype=bool) for name in NAMES}
    dose = np.zeros(100)
    for i, (name, level) in enumerate((("PTV70", ptv70), ("PTV56", ptv56), ("SpinalCord", cord), ("Parotid", parotid))):
        masks[name][20 * i:20 * (i + 1)] = True
        dose[20 * i:20 * (i + 1)] = level
    masks["BODY"][:] = True
    if hot is not None:
        dose[90] = hot  # soft tissue, in no structure but the body
    order = load_order(ORDER, NAMES)
    return order, evaluate_goals(order, dose, masks, 1.0), dose, masks["BODY"]


def test_a_plan_that_meets_its_hard_goals_is_released():
    verdict = judge_standard_plan(*_case(parotid=30.0))  # a soft goal missed: a trade-off, not a failure
    assert verdict.released and not verdict.reasons and not verdict.warnings
    assert verdict.max_dose_gy == 70.0 and verdict.max_dose_pct_of_prescription == pytest.approx(100.0)


def test_a_hot_spot_far_above_the_highest_prescription_fails_the_plan():
    verdict = judge_standard_plan(*_case(hot=683.0))  # the dose maximum of the patient
    assert not verdict.released
    assert verdict.reasons == ("dose maximum 683.0 Gy is 976 % of the highest prescription 70 Gy (limit 125 %)",)
    assert judge_standard_plan(*_case(hot=87.0)).released  # 124 %: hot, but not far above


def test_badly_missed_hard_goals_fail_the_plan_and_close_misses_warn():
    verdict = judge_standard_plan(*_case(cord=118.6, ptv56=26.0))
    assert not verdict.released
    assert verdict.reasons == (
        "dose maximum 118.6 Gy is 169 % of the highest prescription 70 Gy (limit 125 %)",
        "hard goal PTV56 D95% >= 56 Gy (prescription) missed: 26.0 Gy, 30.0 Gy beyond its limit (tolerance 3.5 Gy)",
        "hard goal SpinalCord Dmax <= 45 Gy missed: 118.6 Gy, 73.6 Gy beyond its limit (tolerance 3.5 Gy)",
    )
    close = judge_standard_plan(*_case(cord=47.0))
    assert close.released and close.warnings == (
        "hard goal SpinalCord Dmax <= 45 Gy missed: 47.0 Gy, within the 3.5 Gy tolerance",)


def test_an_explicitly_soft_max_dose_does_not_hold_a_plan_back():
    order, _, dose, body = _case(cord=60.0)
    soft = load_order(ORDER.replace("dose_gy: 45}", "dose_gy: 45, hard: false}"), NAMES)
    masks = {name: np.zeros(100, dtype=bool) for name in NAMES}
    for i, name in enumerate(NAMES[:4]):
        masks[name][20 * i:20 * (i + 1)] = True
    masks["BODY"][:] = True
    assert judge_standard_plan(soft, evaluate_goals(soft, dose, masks, 1.0), dose, body).released
    assert not judge_standard_plan(order, evaluate_goals(order, dose, masks, 1.0), dose, body).released
