"""Goal-driven optimization: the order's goals steer the optimizer until they hold or cannot.

A one-sided quadratic penalty at a goal's level settles *above* the level wherever it trades
against the target (TG-119's core objective at 10 Gy ends at 13.8 Gy on the full-kernel dose);
planners learned to write objectives below the goals they must meet. Here the optimizer does
that itself, by iterative goal adaptation: after each plan, every goal the final dose misses gets
its objective moved past the goal by the miss (cumulatively), and the fluence is re-optimized
from the last solution on the matrix corrected with that plan's far scatter. Hard goals lead:
the best plan is the one with the least total miss of hard goals, then of all goals (then the
same from inside the order's margin, below).

An order's ``goal_margin_gy`` makes the optimizer aim every goal but the normalization that far
inside its limit: a goal met with less room counts as missed by the difference, for the rounds and
for the choice of the best plan (the report still judges the limits as written). The optimizer
sees structures on the dose grid; a department reads the dose interpolated onto its CT, where the
edge voxels of a parotid next to a target receive more (OpenKBP pt_202 at 4 mm: parotid means
25.6 Gy on the dose grid, 26.6 and 27.3 Gy on the CT grid).

A goal still missed after the last round is reported as unmet with the best trade-off found,
which is what the release check (:mod:`rtgrid.engines.qa.plan_acceptance`) then judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .dvh import GoalResult
from .order import MedicalOrder

DEFAULT_GOAL_ROUNDS = 3
"""Adaptation rounds after the first plan. On TG-119 with its goals as written (3 mm grid, nine
beams) the core D10 went 13.8 -> 11.7 -> 10.8 -> 10.5 Gy with PTV D10 at 55.1 Gy; two more rounds
gained 0.1 Gy. Raising the missed goals' priority as well overshot (core 10.1 Gy, PTV D10 57.5 Gy)."""


def goal_misses_gy(order: MedicalOrder, goals: Sequence[GoalResult], margin_gy: float = 0.0) -> list[float]:
    """Per goal of :func:`~.dvh.evaluate_goals` (levels first), how far the plan misses it (0 if met), Gy.

    With ``margin_gy`` each limit but the first level's (the normalization, met exactly) counts
    that far inside itself: a goal met with less room is missed by the difference.
    """
    flags = [True] * len(order.levels) + [c.is_lower_bound for c in order.constraints]
    if len(flags) != len(goals):
        raise ValueError(f"{len(goals)} goal results for an order of {len(flags)} goals")
    margins = [0.0] + [margin_gy] * (len(goals) - 1)
    return [max(g.limit_gy + m - g.achieved_gy if low else g.achieved_gy - (g.limit_gy - m), 0.0)
            if m > 0 or not g.met else 0.0
            for g, low, m in zip(goals, flags, margins)]


def unmet_with_margin(order: MedicalOrder, goals: Sequence[GoalResult]) -> bool:
    """Whether any goal is missed, or met with less room than the order's ``goal_margin_gy``."""
    return any(m > 0 for m in goal_misses_gy(order, goals, order.goal_margin_gy))


def plan_score(order: MedicalOrder, goals: Sequence[GoalResult]) -> tuple[float, float]:
    """(total miss of hard goals, total miss of all goals), Gy: lower is better, hard goals first."""
    misses = goal_misses_gy(order, goals)
    hard = [True] * len(order.levels) + [c.hard for c in order.constraints]
    return sum(m for m, h in zip(misses, hard) if h), sum(misses)


def plan_rank(order: MedicalOrder, goals: Sequence[GoalResult]) -> tuple[float, float, float, float]:
    """How good a plan is, lower being better: :func:`plan_score` (the total miss of hard goals, then
    of all goals), then the same two counted from inside the order's ``goal_margin_gy``.

    The margin only breaks ties: the goals as written, soft ones (the body's maximum) included,
    weigh more than room inside the hard ones.
    """
    hard = [True] * len(order.levels) + [c.hard for c in order.constraints]
    inside = goal_misses_gy(order, goals, order.goal_margin_gy)
    return (*plan_score(order, goals), sum(m for m, h in zip(inside, hard) if h), sum(inside))


def adapted_objectives(objectives: MedicalOrder, order: MedicalOrder, goals: Sequence[GoalResult]) -> MedicalOrder:
    """The objectives of the next round: each missed goal's level moved past the goal by its miss
    (counted from inside the order's ``goal_margin_gy``).

    Parameters
    ----------
    objectives : MedicalOrder
        The objectives of the round that gave ``goals`` (``order`` itself in the first round).
    order : MedicalOrder
        The order as written; its goals are what ``goals`` judged.
    goals : sequence of GoalResult
        :func:`~.dvh.evaluate_goals` of ``order`` on the round's final dose.

    Returns
    -------
    MedicalOrder
        Same structure as ``objectives``; the first level (the normalization) is never moved,
        upper bounds never go below 0 Gy.
    """
    misses = goal_misses_gy(order, goals, order.goal_margin_gy)
    n_levels = len(order.levels)
    levels = [replace(level, dose_gy=level.dose_gy + miss) if miss > 0 else level
              for level, miss in zip(objectives.lower_levels, misses[1:n_levels])]
    constraints = tuple(
        replace(c, dose_gy=max(c.dose_gy + miss if c.is_lower_bound else c.dose_gy - miss, 0.0)) if miss > 0 else c
        for c, miss in zip(objectives.constraints, misses[n_levels:])
    )
    return replace(objectives, lower_levels=tuple(levels), constraints=constraints)
