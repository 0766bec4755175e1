"""QA report: verdict and reasons from gamma, DVH goals and deliverability; strict JSON out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtgrid.engines.conversion.segment import Violation
from rtgrid.engines.optimization.dvh import GoalResult
from rtgrid.engines.qa.gamma import gamma_3d
from rtgrid.engines.qa.report import SCHEMA, QaReportError, build_qa_report


def ramp_pair(scale: float):
    x = np.arange(40, dtype=np.float64)
    reference = np.broadcast_to(20.0 + x, (6, 6, 40)).copy()
    return reference, scale * reference


GOALS = (
    GoalResult("PTV D95% >= 60 Gy (prescription)", "PTV", 60.4, 60.0, True),
    GoalResult("SpinalCord Dmax <= 45 Gy", "SpinalCord", 38.2, 45.0, True),
)


def test_a_clean_plan_passes_and_says_what_passed() -> None:
    gamma = gamma_3d(*ramp_pair(1.0), (2.0, 2.0, 2.0))
    report = build_qa_report("PLAN1", "TrueBeam1", gamma, GOALS, ())
    assert report.passed and report.verdict == "PASS"
    data = json.loads(report.to_json())
    assert data["schema"] == SCHEMA and data["verdict"] == "PASS"
    assert data["gamma"]["pass_rate_pct"] == 100.0 and data["gamma"]["passed"] is True
    assert data["gamma"]["n_evaluated"] == 6 * 6 * 40
    assert data["gamma"]["criteria"] == {"dose_percent": 3.0, "distance_mm": 2.0, "threshold_percent": 10.0,
                                         "normalisation": "global", "max_gamma": 2.0}
    assert data["gamma"]["mean_gamma"] == 0.0
    assert [g["met"] for g in data["dvh_goals"]] == [True, True] and data["deliverability"] == []
    assert "all 2 DVH goals met" in data["reasons"]


def test_every_failed_check_is_a_reason() -> None:
    gamma = gamma_3d(*ramp_pair(1.06), (2.0, 2.0, 2.0))
    assert gamma.pass_rate_pct < 95.0
    goals = GOALS + (GoalResult("Heart Dmean <= 20 Gy", "Heart", 23.456, 20.0, False),)
    violations = (Violation("leaf_gap", 1, 3, "leaf pair 12 gap 0.2 mm < 0.5 mm"),
                  Violation("beam_mu", 0, None, "beam MU 2.1 < 3"))
    report = build_qa_report("PLAN2", "Synergy", gamma, goals, violations)
    assert report.verdict == "FAIL" and not report.passed
    reasons = report.reasons
    assert len(reasons) == 4
    assert reasons[0].startswith(f"gamma pass rate {gamma.pass_rate_pct:.2f} % is below 95 % (3 %/2 mm global")
    assert reasons[1] == "DVH goal not met: Heart Dmean <= 20 Gy (achieved 23.456 Gy, limit 20 Gy)"
    assert reasons[2] == "not deliverable on Synergy [leaf_gap] beam 1 segment 3: leaf pair 12 gap 0.2 mm < 0.5 mm"
    assert reasons[3] == "not deliverable on Synergy [beam_mu] beam 0: beam MU 2.1 < 3"
    data = json.loads(report.to_json())
    assert data["verdict"] == "FAIL" and data["gamma"]["passed"] is False
    assert data["deliverability"][1] == {"kind": "beam_mu", "beam": 0, "segment": None, "message": "beam MU 2.1 < 3"}


def test_the_required_rate_decides_the_gamma_check() -> None:
    gamma = gamma_3d(*ramp_pair(1.06), (2.0, 2.0, 2.0))
    lenient = build_qa_report("P", "M", gamma, required_pass_rate_pct=max(gamma.pass_rate_pct, 1e-3))
    assert lenient.passed
    with pytest.raises(QaReportError, match="required_pass_rate_pct"):
        build_qa_report("P", "M", gamma, required_pass_rate_pct=0.0)
