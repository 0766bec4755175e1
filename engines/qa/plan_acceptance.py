"""Release of a standard plan: a plan that misses its hard goals badly, or burns, is a failed plan.

An optimizer always returns *a* plan, and normalization scales it to the prescription whatever it
looks like: on a real head-and-neck patient whose beams missed part of the targets, scaling the
PTV70 coverage to 70 Gy put 399 Gy into soft tissue, and the job reported success. Before anything
is released, the plan's full-kernel dose is judged here:

- **Hot spot.** The dose maximum in the body may not exceed ``HOT_SPOT_LIMIT`` of the highest
  prescription (ICRU 83 reports the near-maximum D2 %, which clinics hold within about 107-110 %
  in IMRT; a 125 % point dose is far beyond any acceptable plan, not a matter of taste).
- **Hard goals.** Every prescription level's coverage and every constraint marked ``hard`` (by
  default the ``max_dose`` limits, the serial organs' tolerances) may miss its level by at most
  ``HARD_GOAL_TOLERANCE`` of the highest prescription (3.5 Gy at 70 Gy); a closer miss is reported
  as a warning.

Softer goals (means, DVH points) are trade-offs the report shows; they do not hold a plan back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rtgrid.engines.optimization.dvh import GoalResult
from rtgrid.engines.optimization.order import MedicalOrder

from .policy import DEFAULT_POLICY

# Both tolerances are data: the ``standard_plan`` section of the shipped release policy.
HOT_SPOT_LIMIT = DEFAULT_POLICY.standard_plan.hot_spot_limit
"""Largest acceptable dose maximum in the body, as a fraction of the highest prescription."""
HARD_GOAL_TOLERANCE = DEFAULT_POLICY.standard_plan.hard_goal_tolerance
"""How far a hard goal may be missed before the plan fails, as a fraction of the highest prescription."""


@dataclass(frozen=True)
class PlanAcceptance:
    """The verdict on a standard plan, with its reasons.

    Attributes
    ----------
    released : bool
        False when any reason stands: nothing built on the plan may be released.
    reasons : tuple of str
        Why the plan failed, the hot spot first.
    warnings : tuple of str
        Hard goals missed within the tolerance.
    max_dose_gy : float
        Dose maximum in the body (Gy).
    max_dose_pct_of_prescription : float
        The same, in % of the highest prescription.
    """

    released: bool
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    max_dose_gy: float
    max_dose_pct_of_prescription: float

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types, the verdict first."""
        return {**asdict(self), "reasons": list(self.reasons), "warnings": list(self.warnings),
                "hot_spot_limit_pct": 100.0 * HOT_SPOT_LIMIT,
                "hard_goal_tolerance_pct_of_prescription": 100.0 * HARD_GOAL_TOLERANCE}


def hard_goal_flags(order: MedicalOrder) -> list[tuple[bool, bool]]:
    """Per goal in :func:`~rtgrid.engines.optimization.dvh.evaluate_goals`' order: (hard?, lower bound?)."""
    return [(True, True)] * len(order.levels) + [(c.hard, c.is_lower_bound) for c in order.constraints]


def judge_standard_plan(order: MedicalOrder, goals: list[GoalResult], dose_gy: np.ndarray,
                        body_mask: np.ndarray) -> PlanAcceptance:
    """Whether a standard plan may be released.

    Parameters
    ----------
    order : MedicalOrder
    goals : list of GoalResult
        ``evaluate_goals(order, dose_gy, ...)``: the levels' coverage first, then the constraints.
    dose_gy : np.ndarray
        The plan's final (full-kernel, normalized) dose, Gy.
    body_mask : np.ndarray
        The outline on the dose grid (boolean, ``dose_gy``'s shape).

    Returns
    -------
    PlanAcceptance

    Raises
    ------
    ValueError
        Goals that do not match the order, or an empty body.
    """
    flags = hard_goal_flags(order)
    if len(goals) != len(flags):
        raise ValueError(f"{len(goals)} goal results for an order of {len(flags)} goals")
    body = np.asarray(body_mask, dtype=bool)
    if body.shape != np.shape(dose_gy) or not body.any():
        raise ValueError(f"the body mask {body.shape} must be non-empty on the dose grid {np.shape(dose_gy)}")
    rx_gy = max(level.dose_gy for level in order.levels)
    max_dose = float(np.max(np.asarray(dose_gy)[body]))
    reasons, warnings = [], []
    if max_dose > HOT_SPOT_LIMIT * rx_gy:
        reasons.append(f"dose maximum {max_dose:.1f} Gy is {100 * max_dose / rx_gy:.0f} % of the highest "
                       f"prescription {rx_gy:g} Gy (limit {100 * HOT_SPOT_LIMIT:.0f} %)")
    tolerance = HARD_GOAL_TOLERANCE * rx_gy
    for goal, (hard, lower) in zip(goals, flags):
        if not hard or goal.met:
            continue
        miss = goal.limit_gy - goal.achieved_gy if lower else goal.achieved_gy - goal.limit_gy
        line = f"hard goal {goal.goal} missed: {goal.achieved_gy:.1f} Gy"
        if miss > tolerance:
            reasons.append(f"{line}, {miss:.1f} Gy beyond its limit (tolerance {tolerance:.1f} Gy)")
        else:
            warnings.append(f"{line}, within the {tolerance:.1f} Gy tolerance")
    return PlanAcceptance(not reasons, tuple(reasons), tuple(warnings), max_dose, 100.0 * max_dose / rx_gy)
