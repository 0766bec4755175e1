"""Goal-driven optimization on an analytic water phantom: a feasible hard goal is met, an
infeasible one is reported unmet with the best trade-off (and fails the release check)."""

from __future__ import annotations

import pytest

from rtgrid.engines.dose.beams import equispaced_gantry_angles
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.optimization.coplanar_plan import compute_dose_influence, optimize_plan
from rtgrid.engines.optimization.dvh import GoalResult
from rtgrid.engines.optimization.goal_driven import (
    adapted_objectives, goal_misses_gy, plan_rank, plan_score, unmet_with_margin,
)
from rtgrid.engines.optimization.order import MedicalOrderError, load_order
from rtgrid.engines.qa.plan_acceptance import judge_standard_plan
from tests.engines.conversion.test_conversion_plan import water_case


def _order(oar_goal: str, names) -> object:
    return load_order(f"""
prescription: {{target: PTV, dose_gy: 60, fractions: 30}}
constraints:
  - {oar_goal}
""", names)


@pytest.fixture(scope="module")
def influence():
    density, masks = water_case()
    return compute_dose_influence(density, masks, "PTV", "BODY", load_machine(), equispaced_gantry_angles(5),
                                  dose_grid_mm=4.0)


def test_a_feasible_hard_goal_the_first_plan_misses_is_met(influence):
    # A quadratic objective at the goal settles above it (16.0 Gy for 15 Gy here); adaptation meets it.
    order = _order("{structure: OAR, type: max_dvh, dose_gy: 15, volume_pct: 10, hard: true}", influence.masks)
    first = optimize_plan(influence, order, load_machine(), "BODY", goal_rounds=0)
    assert not first.goals[1].met and first.goals[1].achieved_gy > 15.3
    driven = optimize_plan(influence, order, load_machine(), "BODY")
    assert driven.goal_rounds >= 1 and all(g.met for g in driven.goals) and not driven.unmet_goals
    assert judge_standard_plan(order, list(driven.goals), driven.dose_gy, influence.masks["BODY"]).released


def test_an_infeasible_hard_goal_is_reported_with_the_best_trade_off(influence):
    # 1 Gy at most anywhere in an organ 5 mm from a 60 Gy target: no fluence can do it.
    order = _order("{structure: OAR, type: max_dose, dose_gy: 1}", influence.masks)
    plan = optimize_plan(influence, order, load_machine(), "BODY", goal_rounds=2)
    assert plan.goal_rounds == 2
    (unmet,) = plan.unmet_goals
    assert unmet.goal == "OAR Dmax <= 1 Gy" and unmet.achieved_gy > 1.0 + 0.05 * 60
    verdict = judge_standard_plan(order, list(plan.goals), plan.dose_gy, influence.masks["BODY"])
    assert not verdict.released and "hard goal OAR Dmax <= 1 Gy missed" in verdict.reasons[0]


def test_adaptation_moves_missed_goals_past_their_limits_and_never_the_normalization():
    names = ("PTV70", "PTV56", "Cord", "Gland", "BODY")
    order = load_order("""
prescriptions: [{target: PTV70, dose_gy: 70}, {target: PTV56, dose_gy: 56}]
fractions: 35
constraints:
  - {structure: Cord, type: max_dose, dose_gy: 45}
  - {structure: Gland, type: max_mean_dose, dose_gy: 26}
""", names)
    goals = [GoalResult("", "PTV70", 70.0, 70.0, True), GoalResult("", "PTV56", 53.0, 56.0, False),
             GoalResult("", "Cord", 47.5, 45.0, False), GoalResult("", "Gland", 20.0, 26.0, True)]
    assert goal_misses_gy(order, goals) == [0.0, 3.0, 2.5, 0.0]
    assert plan_score(order, goals) == (5.5, 5.5)
    once = adapted_objectives(order, order, goals)
    twice = adapted_objectives(once, order, goals)
    assert once.prescription == order.prescription
    assert [lv.dose_gy for lv in twice.lower_levels] == [62.0]
    assert [c.dose_gy for c in twice.constraints] == [40.0, 26.0]



def test_a_goal_margin_counts_goals_met_with_less_room_as_missed_but_never_the_normalization():
    names = ("PTV70", "PTV56", "Cord", "Gland", "BODY")
    text = """
prescriptions: [{target: PTV70, dose_gy: 70}, {target: PTV56, dose_gy: 56}]
fractions: 35
goal_margin_gy: 1.5
constraints:
  - {structure: Cord, type: max_dose, dose_gy: 45}
  - {structure: Gland, type: max_mean_dose, dose_gy: 26}
"""
    order = load_order(text, names)
    assert order.goal_margin_gy == 1.5 and load_order(text.replace("goal_margin_gy: 1.5", ""), names).goal_margin_gy == 0
    goals = [GoalResult("", "PTV70", 70.0, 70.0, True), GoalResult("", "PTV56", 57.0, 56.0, True),
             GoalResult("", "Cord", 44.0, 45.0, True), GoalResult("", "Gland", 20.0, 26.0, True)]
    assert goal_misses_gy(order, goals) == [0.0, 0.0, 0.0, 0.0]
    assert goal_misses_gy(order, goals, 1.5) == [0.0, 0.5, 0.5, 0.0]
    assert unmet_with_margin(order, goals) and plan_score(order, goals) == (0.0, 0.0)
    assert plan_rank(order, goals) == (0.0, 0.0, 1.0, 1.0)
    once = adapted_objectives(order, order, goals)  # aimed past the margin by what it lacks
    assert [lv.dose_gy for lv in once.lower_levels] == [56.5] and [c.dose_gy for c in once.constraints] == [44.5, 26.0]
    roomy = [goals[0], GoalResult("", "PTV56", 58.0, 56.0, True), GoalResult("", "Cord", 43.0, 45.0, True), goals[3]]
    assert not unmet_with_margin(order, roomy)
    for bad, message in (("-1", "between 0 and 7 Gy"), ("8", "between 0 and 7 Gy"), ("'x'", "must be a finite number")):
        with pytest.raises(MedicalOrderError, match=message):
            load_order(text.replace("goal_margin_gy: 1.5", f"goal_margin_gy: {bad}"), names)


def test_a_reference_dose_brings_its_sparing_to_an_order_that_does_not_ask_for_it(influence):
    # goals: predicted. The reference spares the organ (mean <= 12 Gy); an order that only asks for
    # the target gives it far more. Mimicking the reference brings the sparing back, with the
    # target still normalized to its prescription.
    import numpy as np

    oar = influence.masks["OAR"]
    spared = optimize_plan(influence, _order("{structure: OAR, type: max_mean_dose, dose_gy: 12, hard: true}",
                                             influence.masks), load_machine(), "BODY")
    loose_order = _order("{structure: OAR, type: max_mean_dose, dose_gy: 55, priority: 5}", influence.masks)
    loose = optimize_plan(influence, loose_order, load_machine(), "BODY", goal_rounds=0)
    mimicked = optimize_plan(influence, loose_order, load_machine(), "BODY", goal_rounds=0,
                             reference_dose_gy=spared.dose_gy)
    reference_mean, loose_mean, mimicked_mean = (float(p.dose_gy[oar].mean()) for p in (spared, loose, mimicked))
    assert reference_mean <= 12.0 + 0.3 and loose_mean > reference_mean + 5.0
    assert mimicked_mean < loose_mean - 0.7 * (loose_mean - reference_mean)
    assert mimicked.fluence.solver == "mimic-lbfgs" and mimicked.goals[0].met  # PTV D95 = Rx, normalized
    assert np.isclose(np.percentile(mimicked.dose_gy[influence.masks["PTV"]], 5), 60.0, rtol=0.02)
