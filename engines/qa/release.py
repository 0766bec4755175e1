"""Release of a device plan: convert, write the RTPLAN, check it independently, regenerate on failure.

The loop the release policy (:mod:`rtgrid.engines.qa.policy`) bounds:

1. Convert the standard plan for the device with the attempt's settings
   (:func:`~rtgrid.engines.conversion.convert.convert_plan`) and write its RTPLAN.
2. Check the plan from those RTPLAN bytes alone, as a separate system would
   (:func:`~rtgrid.engines.qa.plan_check.check_plan`). What the conversion itself found
   undeliverable (e.g. a target wider than the leaf bank) is not visible in the clipped segments
   the check reads back, so it counts against release too.
3. Passed: stop. Failed: the next attempt (finer sequencing, re-optimized on the device's own model)
   with the hard goals the plan missed tightened by how far it fell behind the standard plan.

A regeneration can do worse than the attempt before it (a tightened goal costs gamma elsewhere):
the attempt reported is the one that came closest (passed first, then fewest reasons, then the
highest gamma pass rate), with every attempt's history. Nothing fails silently: a plan is released
only when its reported attempt passed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from rtgrid.engines.conversion.convert import DevicePlan, convert_plan
from rtgrid.engines.conversion.device import DeviceModel
from rtgrid.engines.conversion.mimic import tightened_order
from rtgrid.engines.conversion.segment import Violation
from rtgrid.engines.conversion.standard_plan import StandardPlan
from rtgrid.engines.dicomrt.rtplan import PlanBeam, PlanData, step_and_shoot_control_points, write_rtplan
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.optimization.order import MedicalOrder

from .plan_check import QaResult, check_plan
from .policy import DEFAULT_POLICY, ReleasePolicy


@dataclass(frozen=True)
class ReleaseAttempt:
    """One try at a releasable device plan.

    Attributes
    ----------
    number : int
        1 for the first attempt.
    settings : dict
        The policy's ``convert_plan`` settings of this attempt.
    objectives : MedicalOrder
        The order dose mimicking optimized (the plan's own, tightened after a failure).
    device_plan : DevicePlan
    rtplan : pydicom.Dataset
        The plan as written (``rtplan_bytes`` is what QA read back).
    rtplan_bytes : bytes
    qa : QaResult
    reasons : tuple of str
        Why it may not be released: QA's reasons and the conversion's own violations; empty when it passed.
    """

    number: int
    settings: Mapping[str, Any]
    objectives: MedicalOrder
    device_plan: DevicePlan
    rtplan: pydicom.Dataset
    rtplan_bytes: bytes
    qa: QaResult
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def history(self) -> dict[str, Any]:
        """The attempt as one entry of the QA report's ``attempts`` (plain JSON types)."""
        return {"attempt": self.number, "settings": dict(self.settings), "passed": self.passed,
                "reasons": list(self.reasons), "gamma_pass_rate_pct": self.qa.gamma_pass_rate_pct,
                "objectives": [c.describe() for c in self.objectives.constraints]}


@dataclass(frozen=True)
class Release:
    """Every attempt, and the one reported.

    Attributes
    ----------
    attempts : tuple of ReleaseAttempt
        In the order they were made; the last passed, or all failed.
    reported : ReleaseAttempt
        :func:`closest_attempt` of ``attempts``.
    policy : ReleasePolicy
    """

    attempts: tuple[ReleaseAttempt, ...]
    reported: ReleaseAttempt
    policy: ReleasePolicy

    @property
    def released(self) -> bool:
        """True only when the reported attempt passed QA."""
        return self.reported.passed


def release_reasons(qa_reasons: Sequence[str], violations: Sequence[Violation]) -> tuple[str, ...]:
    """QA's reasons, then each conversion violation QA did not already state (in order, once each).

    Parameters
    ----------
    qa_reasons
        :attr:`QaResult.reasons` of the plan's RTPLAN.
    violations
        :attr:`DevicePlan.violations` of the conversion.

    Returns
    -------
    tuple of str
        Empty when the plan may be released.
    """
    reasons = list(qa_reasons)
    reasons += [r for r in dict.fromkeys(f"not deliverable: {v.message}" for v in violations) if r not in reasons]
    return tuple(reasons)


def closeness(passed: bool, reasons: Sequence[str], gamma_pass_rate_pct: float) -> tuple[bool, int, float]:
    """Sort key of an attempt: passed first, then fewer reasons, then a higher gamma pass rate (%)."""
    return passed, -len(reasons), gamma_pass_rate_pct


def closest_attempt(attempts: Sequence[ReleaseAttempt]) -> ReleaseAttempt:
    """The attempt that came closest to release; the earliest among equals.

    Raises
    ------
    ValueError
        No attempt.
    """
    if not attempts:
        raise ValueError("no attempt to choose from")
    best = attempts[0]
    for attempt in attempts[1:]:
        if closeness(attempt.passed, attempt.reasons, attempt.qa.gamma_pass_rate_pct) > \
                closeness(best.passed, best.reasons, best.qa.gamma_pass_rate_pct):
            best = attempt
    return best


def shortfalls_gy(qa: QaResult, n_levels: int) -> list[float]:
    """Per constraint of the order, how far (Gy) the device plan fell behind the standard plan on a
    hard goal it missed; 0 elsewhere.

    Parameters
    ----------
    qa
        Its ``goals`` list the ``n_levels`` prescription levels first, then the order's constraints.
    n_levels
        Prescription levels of the order.

    Returns
    -------
    list of float
        One entry per constraint, >= 0 Gy: what :func:`~rtgrid.engines.conversion.mimic.tightened_order` takes.
    """
    shortfalls = []
    for goal in qa.goals[n_levels:]:
        behind = goal["achieved_gy"] - goal["standard_plan_gy"]
        if goal["lower_bound"]:
            behind = -behind
        shortfalls.append(max(behind, 0.0) if goal["hard"] and not goal["met"] else 0.0)
    return shortfalls


def device_plan_data(dp: DevicePlan, device: DeviceModel, device_name: str, fractions: int, rx_gy: float,
                     rtstruct_uid: str) -> PlanData:
    """The RTPLAN content of a device plan: one step-and-shoot beam per beam, named ``G<gantry>``.

    Parameters
    ----------
    dp
        The converted plan.
    device
        Its device model (leaf boundaries, SAD, model id).
    device_name
        The treatment machine's name (the plan label is its first 16 characters).
    fractions, rx_gy
        The prescription: fractions and dose (Gy).
    rtstruct_uid
        The structure set the plan references.
    """
    beams = []
    for n, (beam, segments) in enumerate(zip(dp.beams, dp.segments)):
        cps, meterset = step_and_shoot_control_points(
            [np.stack([s.leaf_x1_mm, s.leaf_x2_mm]) for s in segments],
            [s.jaw_x_mm for s in segments], [s.jaw_y_mm for s in segments], [s.mu for s in segments],
        )
        beams.append(PlanBeam(f"G{beam.gantry_deg:03.0f}", n + 1, beam.gantry_deg, beam.collimator_deg,
                              beam.couch_deg, tuple(beam.isocenter_mm), cps, meterset, kind="DYNAMIC"))
    return PlanData(
        label=device_name[:16], machine_name=device_name, leaf_boundaries_mm=tuple(device.leaf_boundaries_mm),
        beams=tuple(beams), prescription_gy=rx_gy, fractions=fractions, referenced_rtstruct_uid=rtstruct_uid,
        sad_mm=device.machine.sad_mm, machine_model_id=device.id,
    )


def release_device_plan(plan: StandardPlan, density: Volume, masks: Mapping[str, np.ndarray], device: DeviceModel,
                        series: ImageSeries, *, device_name: str, rtstruct_uid: str,
                        policy: ReleasePolicy = DEFAULT_POLICY, compute_device: str = "cpu") -> Release:
    """Convert, check and regenerate a device plan until QA passes or the policy's attempts run out.

    Parameters
    ----------
    plan
        The standard plan.
    density
        Relative electron density on the plan's dose grid.
    masks
        Boolean structure masks on the dose grid: every structure of the order and ``plan.body``.
    device
        The target device.
    series
        The CT the RTPLAN files under.
    device_name
        The treatment machine's name in the RTPLAN.
    rtstruct_uid
        The structure set the RTPLAN references.
    policy
        Attempts and QA tolerances; the shipped policy by default.
    compute_device
        ``"cpu"`` or ``"gpu"`` for the conversion's dose engine.

    Returns
    -------
    Release
        Stops at the first attempt that passes; otherwise holds every attempt of the policy.

    Raises
    ------
    ConversionError, PlanCheckError, RtPlanError
        Inputs that do not fit together (every one an :class:`~rtgrid.engines.errors.EngineError`).
    """
    rx = plan.order.prescription
    masks = dict(masks)
    objectives = plan.order
    attempts: list[ReleaseAttempt] = []
    for number, settings in enumerate(policy.attempts, start=1):
        dp = convert_plan(plan, density, masks, device, objectives=objectives, compute_device=compute_device,
                          **settings)
        rtplan = write_rtplan(device_plan_data(dp, device, device_name, rx.fractions, rx.dose_gy, rtstruct_uid),
                              series, sop_instance_uid=generate_uid())
        buffer = io.BytesIO()
        rtplan.save_as(buffer, enforce_file_format=True)
        rtplan_bytes = buffer.getvalue()
        # The check starts from the file, as a separate system would.
        qa = check_plan(pydicom.dcmread(io.BytesIO(rtplan_bytes)), device, density=density,
                        dose_mask=masks[plan.body], reference_dose_gy=plan.dose.voxels, masks=masks, order=plan.order,
                        tolerances=policy.qa)
        attempt = ReleaseAttempt(number, settings, objectives, dp, rtplan, rtplan_bytes, qa,
                                 release_reasons(qa.reasons, dp.violations))
        attempts.append(attempt)
        if attempt.passed:
            break
        objectives = tightened_order(objectives, shortfalls_gy(qa, len(plan.order.levels)))
    return Release(tuple(attempts), closest_attempt(attempts), policy)


def release_report(release: Release, device_name: str) -> dict[str, Any]:
    """The QA report of a device plan (JSON types): the reported attempt's QA, verdict and history.

    Parameters
    ----------
    release
        From :func:`release_device_plan`.
    device_name
        The treatment machine's name.

    Returns
    -------
    dict
        QA's result (gamma, goals, violations, MU, segments), ``released`` and ``passed``, its
        ``reasons``, every attempt's history, the reported attempt's number, the coincidence, the
        MU per beam, the conversion's timings, the largest difference between the shipped and the
        QA dose (Gy), and the policy's identity.
    """
    best = release.reported
    dp, qa = best.device_plan, best.qa
    return {
        "device": device_name, "model": dp.device_id, **qa.to_json_dict(), "released": release.released,
        "passed": release.released, "reasons": list(best.reasons),
        "attempts": [a.history() for a in release.attempts],
        "coincidence": {"overall": dp.coincidence.overall, "threshold": dp.coincidence.threshold,
                        "reused_standard_plan": dp.reused_standard_plan,
                        "components": {k: c.score for k, c in dp.coincidence.components.items()},
                        "reasons": list(dp.coincidence.reasons)},
        "mu_per_beam": list(dp.mu_per_beam), "timings_s": dp.timings_s,
        "max_abs_difference_shipped_vs_qa_dose_gy": float(np.abs(dp.dose.voxels - qa.dose_gy).max()),
        "reported_attempt": best.number,
        "policy": release.policy.describe(),
    }
