"""The QA report of a plan before release: gamma, DVH goals, deliverability, and the verdict.

A plan passes only when every check passes: the gamma pass rate reaches the required rate
(AAPM TG-218 tolerance: 95 % at 3 %/2 mm, 10 % threshold, global), every DVH goal of the medical
order is met, and the target device reports no deliverability violation. The report says why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from rtgrid.engines.qa.gamma import GammaResult

if TYPE_CHECKING:  # records made by other engines; the report only reads their fields
    from rtgrid.engines.conversion.segment import Violation
    from rtgrid.engines.optimization.dvh import GoalResult

SCHEMA = "rtgrid-qa-report/1"
TG218_TOLERANCE_PASS_RATE_PCT = 95.0
"""AAPM TG-218 universal tolerance limit: >= 95 % of points passing 3 %/2 mm."""


class QaReportError(ValueError):
    """A QA report cannot be made as asked; the message names the argument and the value."""


@dataclass(frozen=True)
class QaReport:
    """The outcome of plan QA.

    Attributes
    ----------
    plan_label : str
    machine_name : str
        The device the plan was checked for.
    gamma : GammaResult
        The gamma comparison (independent dose check against the plan's dose).
    required_pass_rate_pct : float
    goals : tuple[GoalResult, ...]
        DVH goals of the medical order, as evaluated on the plan's dose.
    violations : tuple[Violation, ...]
        Deliverability violations on ``machine_name``.
    verdict : str
        ``"PASS"`` or ``"FAIL"``.
    reasons : tuple[str, ...]
        Why it failed (every failed check), or what passed.
    """

    plan_label: str
    machine_name: str
    gamma: GammaResult
    required_pass_rate_pct: float
    goals: tuple["GoalResult", ...]
    violations: tuple["Violation", ...]
    verdict: str
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the gamma map itself is not included)."""
        values = self.gamma.gamma[~np.isnan(self.gamma.gamma)]
        return {
            "schema": SCHEMA,
            "plan_label": self.plan_label,
            "machine_name": self.machine_name,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "gamma": {
                "pass_rate_pct": _finite_or_none(self.gamma.pass_rate_pct),
                "required_pass_rate_pct": self.required_pass_rate_pct,
                "passed": _gamma_passed(self.gamma, self.required_pass_rate_pct),
                "n_evaluated": self.gamma.n_evaluated,
                "mean_gamma": _finite_or_none(float(values.mean())) if values.size else None,
                "gamma_95th_percentile": _finite_or_none(float(np.percentile(values, 95))) if values.size else None,
                "criteria": {
                    "dose_percent": self.gamma.dose_percent,
                    "distance_mm": self.gamma.distance_mm,
                    "threshold_percent": self.gamma.threshold_percent,
                    "normalisation": "global" if self.gamma.global_norm else "local",
                    "max_gamma": self.gamma.max_gamma,
                },
            },
            "dvh_goals": [
                {"goal": g.goal, "structure": g.structure, "achieved_gy": _finite_or_none(g.achieved_gy),
                 "limit_gy": g.limit_gy, "met": bool(g.met)}
                for g in self.goals
            ],
            "deliverability": [
                {"kind": v.kind, "beam": v.beam, "segment": v.segment, "message": v.message} for v in self.violations
            ],
        }

    def to_json(self, indent: int = 2) -> str:
        """The summary as strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def build_qa_report(
    plan_label: str,
    machine_name: str,
    gamma: GammaResult,
    goals: Sequence["GoalResult"] = (),
    violations: Sequence["Violation"] = (),
    *,
    required_pass_rate_pct: float = TG218_TOLERANCE_PASS_RATE_PCT,
) -> QaReport:
    """Decide whether a plan may be released, and say why.

    Parameters
    ----------
    plan_label, machine_name : str
        What was checked, for which device.
    gamma : GammaResult
        From :func:`rtgrid.engines.qa.gamma.gamma_3d`.
    goals : Sequence[GoalResult]
        From :func:`rtgrid.engines.optimization.dvh.evaluate_goals`.
    violations : Sequence[Violation]
        From the conversion engine's deliverability check.
    required_pass_rate_pct : float
        Gamma pass rate needed to pass, in (0, 100].

    Returns
    -------
    QaReport
        ``FAIL`` when the pass rate is below the required rate (or no voxel was evaluated), any
        goal is not met, or any violation is given.

    Raises
    ------
    QaReportError
        A required pass rate outside (0, 100].
    """
    if not 0 < required_pass_rate_pct <= 100:
        raise QaReportError(f"required_pass_rate_pct must be in (0, 100], got {required_pass_rate_pct}")
    criteria = (
        f"{gamma.dose_percent:g} %/{gamma.distance_mm:g} mm {'global' if gamma.global_norm else 'local'}, "
        f"threshold {gamma.threshold_percent:g} %"
    )
    failures: list[str] = []
    if gamma.n_evaluated == 0:
        failures.append(f"gamma ({criteria}) evaluated no voxel: the reference dose is empty above the threshold")
    elif not _gamma_passed(gamma, required_pass_rate_pct):
        failures.append(
            f"gamma pass rate {gamma.pass_rate_pct:.2f} % is below {required_pass_rate_pct:g} % ({criteria}, "
            f"{gamma.n_evaluated} voxels)"
        )
    for goal in goals:
        if not goal.met:
            failures.append(
                f"DVH goal not met: {goal.goal} (achieved {goal.achieved_gy:.3f} Gy, limit {goal.limit_gy:g} Gy)"
            )
    for violation in violations:
        where = "".join(
            f" {name} {value}" for name, value in (("beam", violation.beam), ("segment", violation.segment))
            if value is not None
        )
        failures.append(f"not deliverable on {machine_name} [{violation.kind}]{where}: {violation.message}")
    if failures:
        verdict, reasons = "FAIL", tuple(failures)
    else:
        verdict = "PASS"
        reasons = (
            f"gamma pass rate {gamma.pass_rate_pct:.2f} % >= {required_pass_rate_pct:g} % ({criteria})",
            f"all {len(goals)} DVH goals met",
            f"no deliverability violation on {machine_name}",
        )
    return QaReport(
        plan_label=plan_label,
        machine_name=machine_name,
        gamma=gamma,
        required_pass_rate_pct=float(required_pass_rate_pct),
        goals=tuple(goals),
        violations=tuple(violations),
        verdict=verdict,
        reasons=reasons,
    )


def _gamma_passed(gamma: GammaResult, required_pass_rate_pct: float) -> bool:
    return gamma.n_evaluated > 0 and gamma.pass_rate_pct >= required_pass_rate_pct


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
