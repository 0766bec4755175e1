"""QA before release: an independent check of a device plan that starts from its RTPLAN file alone.

The check reads the plan back from DICOM (nothing from the conversion's memory), rebuilds each
beam's step-and-shoot segments from the control points, recomputes their dose with the device's
own beam model, and compares it with the standard plan's dose (3D gamma, AAPM TG-218 criteria by
default), checks the medical order's goals on the recomputed dose, and the plan's deliverability
on the device (leaf travel, gaps, field size, MU per segment).

Hard goals: the prescription's coverage and every constraint of priority 1 (the order's most
important class). A hard goal fails the plan when the device plan misses it *and* does worse than
the standard plan by more than ``HARD_GOAL_SLACK`` of the prescription: an objective the standard
plan itself could not reach is no reason to withhold a device plan that delivers the same dose.
Softer goals are reported, not enforced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from rtgrid.engines.conversion.deliverability import deliverability
from rtgrid.engines.conversion.device import DeviceModel
from rtgrid.engines.conversion.segment import Segment
from rtgrid.engines.conversion.segment_dose import segments_dose
from rtgrid.engines.dicomrt.rtplan import PlanBeam, read_rtplan
from rtgrid.engines.dose.beams import Beam
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.dvh import GoalResult, evaluate_goals
from rtgrid.engines.optimization.order import MedicalOrder

from .gamma import gamma_3d
from .policy import DEFAULT_POLICY, QaTolerances

# The tolerances are data (rtgrid.engines.qa.policy, the shipped release policy); these names are
# the default policy's values. AAPM TG-218 universal tolerance for IMRT QA: 3 % (global) / 2 mm,
# 10 % threshold, >= 95 % pass. Goals are compared with 0.1 % of the prescription of rounding room
# (a recomputed D95 of 49.999995 Gy meets 50 Gy). Against the standard plan, hard goals tolerate the
# dose difference the gamma criterion allows, 3 % of the prescription (TG-218's universal
# tolerance): a device with a wider penumbra than the standard machine (Agility's is about 1 mm
# wider) cannot spare an organ next to the target quite as well, and a 2 % slack withheld such
# plans on TG-119 by 0.05 Gy.
GAMMA_DOSE_PERCENT = DEFAULT_POLICY.qa.gamma.dose_percent
GAMMA_DISTANCE_MM = DEFAULT_POLICY.qa.gamma.distance_mm
GAMMA_THRESHOLD_PERCENT = DEFAULT_POLICY.qa.gamma.threshold_percent
GAMMA_PASS_RATE_PCT = DEFAULT_POLICY.qa.gamma.pass_rate_pct
HARD_PRIORITY = DEFAULT_POLICY.qa.hard_priority
GOAL_TOLERANCE = DEFAULT_POLICY.qa.goal_tolerance
HARD_GOAL_SLACK = DEFAULT_POLICY.qa.hard_goal_slack


class PlanCheckError(EngineError, ValueError):
    """The RTPLAN cannot be checked (not step-and-shoot, another device, unreadable)."""


@dataclass(frozen=True)
class QaResult:
    """Verdict and evidence of one plan's QA."""

    passed: bool
    reasons: tuple[str, ...]
    gamma_pass_rate_pct: float
    gamma_criteria: dict
    goals: tuple[dict, ...]
    violations: tuple[str, ...]
    total_mu: float
    segments: int
    dose_gy: np.ndarray = field(repr=False)
    gamma: np.ndarray = field(repr=False)

    def to_json_dict(self) -> dict:
        """The report without its arrays."""
        out = asdict(self)
        del out["dose_gy"], out["gamma"]
        return out


def segments_of(beam: PlanBeam) -> list[Segment]:
    """Step-and-shoot segments of a beam: control-point pairs with one aperture and a weight rise.

    Raises
    ------
    PlanCheckError
        When leaves move while the beam is on (a dynamic delivery this check does not model).
    """
    segments = []
    cps = beam.control_points
    for a, b in zip(cps[:-1], cps[1:]):
        rise = b.cumulative_weight - a.cumulative_weight
        if rise <= 0:
            continue
        if not np.allclose(a.leaf_positions_mm, b.leaf_positions_mm, atol=1e-6):
            raise PlanCheckError(f"beam {beam.name}: leaves move while the beam is on (dynamic MLC)")
        segments.append(Segment(a.leaf_positions_mm[0].copy(), a.leaf_positions_mm[1].copy(), a.jaw_x_mm,
                                a.jaw_y_mm, rise * beam.meterset_mu))
    return segments


def _goal_kinds(order: MedicalOrder, hard_priority: int = HARD_PRIORITY) -> tuple[list[bool], list[bool]]:
    """Per goal in :func:`evaluate_goals`' order (the prescription first): hard?, lower bound?"""
    levels = [True] * len(order.levels)
    return (levels + [c.priority <= hard_priority for c in order.constraints],
            levels + [c.is_lower_bound for c in order.constraints])


def hard_goal_failures(order: MedicalOrder, goals: list[GoalResult], standard: list[GoalResult],
                       tolerances: QaTolerances = DEFAULT_POLICY.qa) -> list[str]:
    """The hard goals a device plan misses by more than the slack (``HARD_GOAL_SLACK`` of Rx by default)
    beyond the standard plan.

    Parameters
    ----------
    order : MedicalOrder
    goals, standard : list of GoalResult
        :func:`evaluate_goals` of the device plan's and of the standard plan's dose (the
        prescription first, then the order's constraints).
    tolerances : QaTolerances
        Which priorities are hard and the slack; the shipped release policy's by default.

    Returns
    -------
    list of str
        One reason per failing goal, naming it and both plans' values.
    """
    hard, lower = _goal_kinds(order, tolerances.hard_priority)
    slack = tolerances.hard_goal_slack * order.prescription.dose_gy
    reasons = []
    for g, ref, is_hard, low in zip(goals, standard, hard, lower):
        behind = ref.achieved_gy - g.achieved_gy if low else g.achieved_gy - ref.achieved_gy
        if is_hard and not g.met and behind > slack:
            reasons.append(f"hard goal missed: {g.goal} (achieved {g.achieved_gy:.2f} Gy, "
                           f"standard plan {ref.achieved_gy:.2f} Gy)")
    return reasons


def check_plan(rtplan: Dataset, device: DeviceModel, *, density: Volume, dose_mask: np.ndarray,
               reference_dose_gy: np.ndarray, masks: dict[str, np.ndarray], order: MedicalOrder,
               tolerances: QaTolerances = DEFAULT_POLICY.qa) -> QaResult:
    """Check a device plan from its RTPLAN against the standard plan's dose and the order.

    Parameters
    ----------
    rtplan
        The device plan as DICOM.
    device
        The device the plan names (its model id must match ``rtplan``'s).
    density
        Relative electron density on the dose grid (its geometry is the dose's).
    dose_mask
        Voxels where dose is computed (the body).
    reference_dose_gy
        The standard plan's dose (Gy, all fractions) on the same grid.
    masks
        Structures of the order on the dose grid.
    order
        The medical order.
    tolerances
        Gamma criteria, goal tolerance and hard goals; the shipped release policy's by default.

    Returns
    -------
    QaResult
    """
    plan = read_rtplan(rtplan)
    if plan.machine_model_id and plan.machine_model_id != device.id:
        raise PlanCheckError(f"the plan is for model {plan.machine_model_id!r}, not {device.id!r}")
    dose = np.zeros(density.shape, dtype=np.float64)
    violations: list[str] = []
    n_segments, total_mu = 0, 0.0
    for b, pb in enumerate(plan.beams):
        segments = segments_of(pb)
        n_segments += len(segments)
        total_mu += sum(s.mu for s in segments)
        violations += [v.message for v in deliverability(segments, device, beam=b)]
        beam = Beam(pb.gantry_deg, pb.couch_deg, pb.collimator_deg, np.asarray(pb.isocenter_mm))
        dose += segments_dose(density, dose_mask, beam, segments, device)
    dose *= plan.fractions
    criteria = tolerances.gamma
    gamma = gamma_3d(reference_dose_gy, dose, density.spacing_mm, dose_percent=criteria.dose_percent,
                     distance_mm=criteria.distance_mm, threshold_percent=criteria.threshold_percent)
    voxel_cc = density.voxel_volume_mm3 / 1000.0
    rx_gy = order.prescription.dose_gy
    goals = evaluate_goals(order, dose, masks, voxel_cc, tolerance_gy=tolerances.goal_tolerance * rx_gy)
    standard = evaluate_goals(order, reference_dose_gy, masks, voxel_cc, tolerance_gy=tolerances.goal_tolerance * rx_gy)
    hard, lower = _goal_kinds(order, tolerances.hard_priority)
    reasons = []
    if gamma.pass_rate_pct < criteria.pass_rate_pct:
        reasons.append(f"gamma {criteria.dose_percent:g}%/{criteria.distance_mm:g} mm pass rate "
                       f"{gamma.pass_rate_pct:.1f}% < {criteria.pass_rate_pct:g}%")
    reasons += hard_goal_failures(order, goals, standard, tolerances)
    reasons += [f"not deliverable: {v}" for v in violations]
    return QaResult(
        passed=not reasons, reasons=tuple(reasons), gamma_pass_rate_pct=gamma.pass_rate_pct,
        gamma_criteria={"dose_percent": criteria.dose_percent, "distance_mm": criteria.distance_mm,
                        "threshold_percent": criteria.threshold_percent, "global": True,
                        "pass_rate_required_pct": criteria.pass_rate_pct},
        goals=tuple({"goal": g.goal, "achieved_gy": g.achieved_gy, "limit_gy": g.limit_gy, "met": g.met,
                     "hard": h, "lower_bound": low, "standard_plan_gy": ref.achieved_gy}
                    for g, ref, h, low in zip(goals, standard, hard, lower)),
        violations=tuple(violations), total_mu=float(total_mu), segments=n_segments,
        dose_gy=dose.astype(np.float32), gamma=gamma.gamma,
    )
