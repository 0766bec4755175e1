"""Orders with several prescription levels (simultaneous integrated boost) and hard goals."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.optimization.dvh import evaluate_goals, targets_mask
from rtgrid.engines.optimization.objectives import build_penalty_terms
from rtgrid.engines.optimization.order import MedicalOrderError, load_order

STRUCTURES = ("PTV70", "PTV63", "PTV56", "SpinalCord", "Parotid_L", "BODY")
SIB = """
prescriptions:
  - {target: PTV70, dose_gy: 70}
  - {target: PTV63, dose_gy: 63}
  - {target: PTV56, dose_gy: 56}
fractions: 35
constraints:
  - {structure: SpinalCord, type: max_dose, dose_gy: 45}
  - {structure: Parotid_L, type: max_mean_dose, dose_gy: 26}
  - {structure: Parotid_L, type: max_dvh, dose_gy: 30, volume_pct: 50, hard: true}
"""


def test_goals_come_from_the_order_unless_it_asks_for_the_predicted_dose():
    assert load_order(SIB, STRUCTURES).goals == "order"
    assert load_order("goals: predicted\n" + SIB, STRUCTURES).goals == "predicted"


def test_three_levels_share_the_fractions_highest_first():
    order = load_order(SIB, STRUCTURES)
    assert order.targets == ("PTV70", "PTV63", "PTV56")
    assert [(lv.dose_gy, lv.fractions) for lv in order.levels] == [(70.0, 35), (63.0, 35), (56.0, 35)]
    assert order.prescription.target == "PTV70"  # the highest level sets the normalization
    assert order.levels[2].dose_per_fraction_gy == pytest.approx(1.6)
    assert order.structures[:3] == ("PTV70", "PTV63", "PTV56")
    # max_dose limits are hard unless the order says otherwise; others only when it says so
    assert [c.hard for c in order.constraints] == [True, False, True]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SIB.replace("dose_gy: 63}", "dose_gy: 73}"), "levels out of order: PTV63 73 Gy comes after PTV70 70 Gy"),
        (SIB.replace("target: PTV63", "target: PTV60"), "unknown structure 'PTV60'"),
        (SIB.replace("target: PTV63", "target: PTV56"), "target PTV56 has more than one prescription level"),
        (SIB.replace("fractions: 35\n", ""), "'fractions' is missing (one number for all prescription levels)"),
        (SIB.replace("fractions: 35", "fractions: 350"), "from 1 to 80, got 350"),
        (SIB.replace("{target: PTV63, dose_gy: 63}", "{target: PTV63, dose_gy: 63, fractions: 30}"), "unknown field(s) ['fractions']"),
        (SIB.replace("{target: PTV56, dose_gy: 56}", "{target: PTV56, dose_gy: 56, normalization_volume_pct: 98}"),
         "only the first (highest) level sets the normalization"),
        (SIB + "prescription: {target: PTV70, dose_gy: 70, fractions: 35}\n", "either 'prescription' or 'prescriptions'"),
        (SIB.replace("hard: true", "hard: maybe"), "'hard' must be true or false"),
        ("prescriptions: []\nfractions: 35\n", "a list of 1 to 5 levels"),
        ("goals: guessed\n" + SIB, "'goals' must be one of ['order', 'predicted'], got 'guessed'"),
    ],
)
def test_bad_multi_level_orders_name_the_problem(text, message):
    with pytest.raises(MedicalOrderError) as err:
        load_order(text, STRUCTURES)
    assert message in str(err.value)


def test_overlapping_targets_are_governed_by_the_higher_level():
    order = load_order(SIB, STRUCTURES)
    masks = {name: np.zeros(100, dtype=bool) for name in STRUCTURES}
    masks["PTV70"][10:30] = True
    masks["PTV63"][20:50] = True   # overlaps PTV70 on 20..29
    masks["PTV56"][0:60] = True    # holds both
    voxels = {name: np.flatnonzero(mask) for name, mask in masks.items()}
    uniform = [t for t in build_penalty_terms(order, voxels) if t.kind == "uniform"]
    assert [(t.dose_gy, t.voxels.tolist()) for t in uniform] == [
        (70.0, list(range(10, 30))), (63.0, list(range(30, 50))), (56.0, list(range(0, 10)) + list(range(50, 60))),
    ]
    assert np.count_nonzero(targets_mask(order, masks)) == 60



def test_soft_organ_limits_leave_out_the_targets_prescribed_above_them():
    order = load_order(SIB + """  - {structure: BODY, type: max_dose, dose_gy: 75, hard: false}
  - {structure: SpinalCord, type: max_dose, dose_gy: 43, hard: false}
""", STRUCTURES)
    masks = {name: np.zeros(100, dtype=bool) for name in STRUCTURES}
    masks["PTV70"][0:10] = True
    masks["PTV56"][10:40] = True
    masks["Parotid_L"][35:50] = True   # 35..39 inside PTV56
    masks["SpinalCord"][5:15] = True   # wholly inside the targets
    masks["BODY"][:] = True
    voxels = {name: np.flatnonzero(mask) for name, mask in masks.items()}
    terms = {t.label: t.voxels.tolist() for t in build_penalty_terms(order, voxels) if t.kind != "uniform"}
    assert terms["Parotid_L Dmean <= 26 Gy"] == list(range(40, 50))      # soft: the organ outside the targets
    assert terms["Parotid_L D50% <= 30 Gy"] == list(range(35, 50))       # hard: every voxel
    assert terms["SpinalCord Dmax <= 45 Gy"] == list(range(5, 15))       # hard
    assert terms["SpinalCord Dmax <= 43 Gy"] == list(range(5, 15))       # soft, but no voxel outside the targets
    assert terms["BODY Dmax <= 75 Gy"] == list(range(100))               # above every level: nothing to leave out


def test_each_level_has_its_coverage_goal_first():
    order = load_order(SIB, STRUCTURES)
    masks = {name: np.zeros(100, dtype=bool) for name in STRUCTURES}
    for name, lo, hi in (("PTV70", 0, 20), ("PTV63", 20, 40), ("PTV56", 40, 60), ("SpinalCord", 60, 70),
                         ("Parotid_L", 70, 80), ("BODY", 0, 100)):
        masks[name][lo:hi] = True
    dose = np.zeros(100)
    dose[0:20], dose[20:40], dose[40:60], dose[60:70], dose[70:80] = 70.0, 63.0, 40.0, 50.0, 20.0
    goals = evaluate_goals(order, dose, masks, 1.0)
    assert [g.goal for g in goals[:3]] == [
        "PTV70 D95% >= 70 Gy (prescription)", "PTV63 D95% >= 63 Gy (prescription)", "PTV56 D95% >= 56 Gy (prescription)",
    ]
    assert [g.met for g in goals] == [True, True, False, False, True, True]
