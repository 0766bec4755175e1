"""The medical order loader: the issue's order as written, the shipped example, and every rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtgrid.engines.optimization.order import Constraint, MedicalOrderError, load_order

STRUCTURES = ("OuterTarget", "Core", "BODY")
ISSUE_ORDER = """
prescription: {target: OuterTarget, dose_gy: 50, fractions: 25}
constraints:
  - {structure: OuterTarget, type: min_dvh, dose_gy: 50, volume_pct: 95}
  - {structure: Core, type: max_dvh, dose_gy: 10, volume_pct: 10}
  - {structure: Core, type: max_dose, dose_gy: 25}
  - {structure: BODY, type: max_dose, dose_gy: 60}
"""
EXAMPLE = Path(__file__).resolve().parents[3] / "engines" / "optimization" / "example_order.yaml"


def test_issue_order_is_accepted_as_written():
    order = load_order(ISSUE_ORDER, STRUCTURES)
    rx = order.prescription
    assert (rx.target, rx.dose_gy, rx.fractions, rx.dose_per_fraction_gy) == ("OuterTarget", 50.0, 25, 2.0)
    assert rx.normalization_volume_pct == 95.0
    assert order.constraints[1] == Constraint("Core", "max_dvh", 10.0, 10.0, 2)
    assert [c.describe() for c in order.constraints] == [
        "OuterTarget D95% >= 50 Gy", "Core D10% <= 10 Gy", "Core Dmax <= 25 Gy", "BODY Dmax <= 60 Gy",
    ]
    assert order.structures == STRUCTURES


def test_json_text_and_shipped_example_file_load():
    as_json = json.dumps({
        "prescription": {"target": "OuterTarget", "dose_gy": 50, "fractions": 25},
        "constraints": [{"structure": "Core", "type": "max_mean_dose", "dose_gy": 12, "priority": 4}],
    })
    assert load_order(as_json, STRUCTURES).constraints[0].priority == 4
    example = load_order(EXAMPLE, STRUCTURES)
    assert example.source == str(EXAMPLE)
    assert {c.type for c in example.constraints} == {"min_dvh", "max_dvh", "max_dose"}
    assert load_order(str(EXAMPLE), STRUCTURES).constraints == example.constraints


def _order_with(constraint: str, prescription: str = "{target: OuterTarget, dose_gy: 50, fractions: 25}") -> str:
    return f"prescription: {prescription}\nconstraints:\n  - {constraint}\n"


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ("{structure: Cord, type: max_dose, dose_gy: 45}", "unknown structure 'Cord'"),
        ("{structure: core, type: max_dose, dose_gy: 45}", "did you mean 'Core'"),
        ("{structure: Core, type: max_dose, dose_gy: -1}", "must not be negative, got -1"),
        ("{structure: Core, type: max_dvh, dose_gy: 10, volume_pct: 150}", "volume_pct must lie in (0, 100], got 150"),
        ("{structure: Core, type: max_dvh, dose_gy: 10, volume_pct: 0}", "use max_dose"),
        ("{structure: Core, type: max_dvh, dose_gy: 10}", "'volume_pct' is missing"),
        ("{structure: Core, type: max_dose, dose_gy: 10, volume_pct: 5}", "volume_pct only applies"),
        ("{structure: Core, type: v20, dose_gy: 10}", "type must be one of"),
        ("{structure: Core, type: max_dose, dose_Gy: 10}", "unknown field(s) ['dose_Gy']"),
        ("{structure: Core, type: max_dose, dose_gy: ten}", "'dose_gy' must be a finite number"),
        ("{structure: Core, type: min_dose, dose_gy: 0}", "asks for nothing"),
        ("{structure: Core, type: max_dose, dose_gy: 10, priority: 9}", "'priority' must be an integer from 1"),
        ("{structure: OuterTarget, type: max_dose, dose_gy: 45}", "the prescription, to which the plan is normalized"),
        ("{structure: OuterTarget, type: min_dose, dose_gy: 52}", "cannot hold together"),
    ],
)
def test_bad_constraints_are_rejected_with_the_reason(constraint, message):
    with pytest.raises(MedicalOrderError) as err:
        load_order(_order_with(constraint), STRUCTURES)
    assert message in str(err.value)
    assert "constraints[0]" in str(err.value) or "impossible goals" in str(err.value)


@pytest.mark.parametrize(
    ("prescription", "message"),
    [
        ("{target: Tumour, dose_gy: 50, fractions: 25}", "unknown structure 'Tumour'"),
        ("{target: OuterTarget, dose_gy: 0, fractions: 25}", "dose_gy must be positive"),
        ("{target: OuterTarget, dose_gy: 50, fractions: 0}", "fractions must be a whole number from 1 to 80, got 0"),
        ("{target: OuterTarget, dose_gy: 50, fractions: 2.5}", "fractions must be a whole number from 1 to 80, got 2.5"),
        # found by an adversarial review: 10^12 fractions planned to "succeeded"
        ("{target: OuterTarget, dose_gy: 50, fractions: 1000000000000}", "from 1 to 80, got 1000000000000"),
        ("{target: OuterTarget, dose_gy: 5, fractions: 40}", "0.125 Gy per fraction, below the 0.5 Gy"),
        ("{target: OuterTarget, dose_gy: 50}", "'fractions' is missing"),
        ("{target: OuterTarget, dose_gy: 50, fractions: 25, normalization_volume_pct: 101}", "normalization_volume_pct"),
    ],
)
def test_bad_prescriptions_are_rejected(prescription, message):
    with pytest.raises(MedicalOrderError, match="prescription") as err:
        load_order(_order_with("{structure: Core, type: max_dose, dose_gy: 20}", prescription), STRUCTURES)
    assert message in str(err.value)


def test_contradictions_between_constraints_of_one_structure():
    both = "{structure: Core, type: min_dvh, dose_gy: 20, volume_pct: 50}\n  - {structure: Core, type: max_dvh, dose_gy: 10, volume_pct: 30}"
    with pytest.raises(MedicalOrderError, match=r"impossible goals for Core: 'Core D50% >= 20 Gy' cannot hold together with 'Core D30% <= 10 Gy'"):
        load_order(_order_with(both), STRUCTURES)
    # D(70%) >= 20 and D(30%) <= 10 contradict; D(30%) >= 20 with D(70%) <= 10 is a steep DVH, allowed.
    fine = "{structure: Core, type: min_dvh, dose_gy: 20, volume_pct: 30}\n  - {structure: Core, type: max_dvh, dose_gy: 10, volume_pct: 70}"
    assert len(load_order(_order_with(fine), STRUCTURES).constraints) == 2
    means = "{structure: Core, type: min_mean_dose, dose_gy: 20}\n  - {structure: Core, type: max_dose, dose_gy: 15}"
    with pytest.raises(MedicalOrderError, match="Dmean >= 20 Gy"):
        load_order(_order_with(means), STRUCTURES)


def test_unreadable_sources(tmp_path):
    with pytest.raises(MedicalOrderError, match="cannot read the medical order file .*missing.yaml"):
        load_order(str(tmp_path / "missing.yaml"), STRUCTURES)
    with pytest.raises(MedicalOrderError, match="not valid YAML"):
        load_order("prescription: {target: [", STRUCTURES)
    with pytest.raises(MedicalOrderError, match="'prescription' is missing"):
        load_order("constraints: []", STRUCTURES)
    with pytest.raises(MedicalOrderError, match=r"unknown field\(s\) \['constraint'\]"):
        load_order("prescription: {target: Core, dose_gy: 5, fractions: 1}\nconstraint: []", STRUCTURES)
