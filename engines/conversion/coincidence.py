"""Coincidence check: how closely a target device matches the standard machine.

Two components are scored from 0 (nothing alike) to 1 (identical), each the minimum of its
sub-scores, so that the weakest characteristic decides:

``source`` (the beam), from water doses that each machine model itself computes
(:mod:`rtgrid.engines.dose.water`, open square fields, SSD 100 cm):

- ``pdd``: 1-D gamma pass rate of the device's depth doses (0-250 mm, fields of
  :data:`FIELDS_MM`, each normalised to its maximum) against the standard's, global dose
  criterion, points below 10 % of the maximum ignored;
- ``profiles``: the same for cross-line profiles at 100 mm depth, normalised on the axis;
- ``output_factors``: fraction of :data:`OUTPUT_FACTOR_FIELDS_MM` (100 mm depth, SSD 90 cm,
  relative to 10 x 10 cm2) whose output factors agree within the tolerance.

``mlc`` (the beam-limiting device):

- ``leaf_width``: mean over the standard's leaf-bank extent (sampled every 0.5 mm along Y) of
  ``min(w_std, w_dev) / max(w_std, w_dev)``, the leaf widths at that Y; 0 where the device has
  no leaf;
- ``boundaries``: Jaccard index of the two sets of leaf-pair edges within their common extent
  (edges that coincide within 0.1 mm); low when equally wide leaves are offset;
- ``pairs``: ``min(n_std, n_dev) / max(n_std, n_dev)``;
- ``max_field``: ratio of the smaller to the larger maximum field, X times Y;
- ``interdigitation``: 1 when the device allows every leaf arrangement the standard allows,
  0.5 when the standard interdigitates and the device may not.

The overall score is ``min(source, mlc)``; the standard plan is reused on the device (sequenced
for it) when it reaches the threshold, otherwise the plan is re-optimized on the device's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtgrid.engines.dose.machine import MachineModel
from rtgrid.engines.dose.water import depth_dose, profile
from rtgrid.engines.errors import EngineError

DEFAULT_THRESHOLD = 0.95
"""Overall score at or above which the standard plan is reused."""
FIELDS_MM = (40.0, 100.0, 200.0)
OUTPUT_FACTOR_FIELDS_MM = (30.0, 40.0, 60.0, 150.0, 200.0)
PDD_MAX_DEPTH_MM = 250.0
PROFILE_DEPTH_MM = 100.0
LOW_DOSE_CUTOFF = 0.10
BOUNDARY_TOLERANCE_MM = 0.1


class CoincidenceError(EngineError, ValueError):
    """Criteria or threshold outside their meaningful range."""


@dataclass(frozen=True)
class CoincidenceCriteria:
    """Tolerances of the source comparison (defaults: beam-matching practice, 1 % / 1 mm).

    Attributes
    ----------
    dose_pct : float
        Gamma dose criterion in % of the reference maximum (depth doses) or axis dose (profiles).
    distance_mm : float
        Gamma distance-to-agreement.
    output_factor_pct : float
        Largest difference of two output factors that still agrees, in %.
    """

    dose_pct: float = 1.0
    distance_mm: float = 1.0
    output_factor_pct: float = 1.0


@dataclass(frozen=True)
class ComponentScore:
    """Score of one component and how it was reached.

    Attributes
    ----------
    name : str
        ``source`` or ``mlc``.
    score : float
        Minimum of the sub-scores, in [0, 1].
    sub_scores : dict[str, float]
    measurements : dict[str, float]
        Figures behind the sub-scores (e.g. ``pdd_max_difference_pct``).
    """

    name: str
    score: float
    sub_scores: dict[str, float]
    measurements: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CoincidenceReport:
    """Outcome of :func:`coincidence`.

    Attributes
    ----------
    standard_id, device_id : str
    components : dict[str, ComponentScore]
        ``source`` and ``mlc``.
    overall : float
        ``min`` of the component scores.
    threshold : float
    reuse_standard_plan : bool
        ``overall >= threshold``.
    reasons : tuple of str
        One line per sub-score below 1, saying what differs (empty for identical machines).
    """

    standard_id: str
    device_id: str
    components: dict[str, ComponentScore]
    overall: float
    threshold: float
    reuse_standard_plan: bool
    reasons: tuple[str, ...]


def gamma_pass_rate_1d(ref_x_mm: np.ndarray, ref_dose: np.ndarray, eval_x_mm: np.ndarray, eval_dose: np.ndarray,
                       dose_criterion: float, distance_mm: float, low_dose_cutoff: float = LOW_DOSE_CUTOFF) -> float:
    """Fraction of reference points with gamma <= 1 (Low et al., Med Phys 25 (1998) 656), 1-D.

    Parameters
    ----------
    ref_x_mm, ref_dose
        Reference curve (positions increasing).
    eval_x_mm, eval_dose
        Evaluated curve, linearly interpolated at 0.1 mm within three distances of each point.
    dose_criterion
        Absolute dose criterion (same unit as the doses).
    distance_mm
        Distance-to-agreement.
    low_dose_cutoff
        Reference points below this fraction of the reference maximum are not evaluated.

    Returns
    -------
    float
        Pass rate in [0, 1].
    """
    ref_x_mm, ref_dose = np.asarray(ref_x_mm, float), np.asarray(ref_dose, float)
    keep = ref_dose >= low_dose_cutoff * ref_dose.max()
    offsets = np.arange(-3.0 * distance_mm, 3.0 * distance_mm + 1e-9, 0.1)
    x = ref_x_mm[keep][:, None] + offsets[None, :]
    d = np.interp(x, eval_x_mm, eval_dose, left=np.nan, right=np.nan)
    gamma_sq = (offsets[None, :] / distance_mm) ** 2 + ((d - ref_dose[keep][:, None]) / dose_criterion) ** 2
    gamma = np.sqrt(np.nanmin(np.where(np.isnan(gamma_sq), np.inf, gamma_sq), axis=1))
    return float(np.mean(gamma <= 1.0 + 1e-9))


def _source_score(standard: MachineModel, device: MachineModel, criteria: CoincidenceCriteria) -> ComponentScore:
    pdd_rates, pdd_diffs, profile_rates = [], [], []
    for field_mm in FIELDS_MM:
        depths, ref = depth_dose(standard, field_mm, max_depth_mm=PDD_MAX_DEPTH_MM)
        _, dev = depth_dose(device, field_mm, max_depth_mm=PDD_MAX_DEPTH_MM)
        ref, dev = 100.0 * ref / ref.max(), 100.0 * dev / dev.max()
        pdd_rates.append(gamma_pass_rate_1d(depths, ref, depths, dev, criteria.dose_pct, criteria.distance_mm))
        beyond_buildup = depths >= 20.0
        pdd_diffs.append(float(np.max(np.abs(dev - ref)[beyond_buildup])))
        x, ref_p = profile(standard, field_mm, PROFILE_DEPTH_MM)
        x_d, dev_p = profile(device, field_mm, PROFILE_DEPTH_MM)
        ref_p = 100.0 * ref_p / np.interp(0.0, x, ref_p)
        dev_p = 100.0 * dev_p / np.interp(0.0, x_d, dev_p)
        profile_rates.append(gamma_pass_rate_1d(x, ref_p, x_d, dev_p, criteria.dose_pct, criteria.distance_mm))
    of_diffs = []
    axis_std, axis_dev = _axis_doses(standard, PROFILE_DEPTH_MM), _axis_doses(device, PROFILE_DEPTH_MM)
    for n in range(len(OUTPUT_FACTOR_FIELDS_MM)):
        of_std, of_dev = axis_std[n] / axis_std[-1], axis_dev[n] / axis_dev[-1]
        of_diffs.append(100.0 * abs(of_dev - of_std) / of_std)
    sub = {
        "pdd": float(np.mean(pdd_rates)),
        "profiles": float(np.mean(profile_rates)),
        "output_factors": float(np.mean(np.asarray(of_diffs) <= criteria.output_factor_pct + 1e-9)),
    }
    measurements = {
        "pdd_max_difference_pct": max(pdd_diffs),
        "output_factor_max_difference_pct": max(of_diffs),
    }
    return ComponentScore("source", min(sub.values()), sub, measurements)


def _axis_doses(machine: MachineModel, depth_mm: float) -> list[float]:
    """Axis doses at ``depth_mm`` (SSD 90 cm) of the output-factor fields, then the 10 x 10 reference."""
    doses = []
    for field_mm in (*OUTPUT_FACTOR_FIELDS_MM, 100.0):
        depths, dose = depth_dose(machine, field_mm, ssd_mm=900.0, max_depth_mm=depth_mm + 3.0)
        doses.append(float(np.interp(depth_mm, depths, dose)))
    return doses


def _leaf_width_at(boundaries: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Width of the leaf pair covering each ``y`` (0 outside the bank)."""
    pair = np.searchsorted(boundaries, y, side="right") - 1
    inside = (pair >= 0) & (pair < boundaries.size - 1)
    widths = np.diff(boundaries)
    return np.where(inside, widths[np.clip(pair, 0, widths.size - 1)], 0.0)


def _mlc_score(standard: MachineModel, device: MachineModel) -> ComponentScore:
    b_std = np.asarray(standard.leaf_boundaries_mm)
    b_dev = np.asarray(device.leaf_boundaries_mm)
    y = np.arange(b_std[0] + 0.25, b_std[-1], 0.5)
    w_std, w_dev = _leaf_width_at(b_std, y), _leaf_width_at(b_dev, y)
    width_ratio = np.where(w_dev > 0, np.minimum(w_std, w_dev) / np.maximum(w_std, np.maximum(w_dev, 1e-12)), 0.0)
    lo, hi = max(b_std[0], b_dev[0]), min(b_std[-1], b_dev[-1])
    edges_std = b_std[(b_std >= lo - BOUNDARY_TOLERANCE_MM) & (b_std <= hi + BOUNDARY_TOLERANCE_MM)]
    edges_dev = b_dev[(b_dev >= lo - BOUNDARY_TOLERANCE_MM) & (b_dev <= hi + BOUNDARY_TOLERANCE_MM)]
    shared = int(np.sum(np.min(np.abs(edges_std[:, None] - edges_dev[None, :]), axis=1) <= BOUNDARY_TOLERANCE_MM)) \
        if edges_std.size and edges_dev.size else 0
    union = edges_std.size + edges_dev.size - shared
    fx = min(standard.max_field_mm[0], device.max_field_mm[0]) / max(standard.max_field_mm[0], device.max_field_mm[0])
    fy = min(standard.max_field_mm[1], device.max_field_mm[1]) / max(standard.max_field_mm[1], device.max_field_mm[1])
    sub = {
        "leaf_width": float(np.mean(width_ratio)),
        "boundaries": shared / union if union else 0.0,
        "pairs": min(standard.n_pairs, device.n_pairs) / max(standard.n_pairs, device.n_pairs),
        "max_field": float(fx * fy),
        "interdigitation": 1.0 if (device.interdigitation or not standard.interdigitation) else 0.5,
    }
    measurements = {
        "standard_min_leaf_width_mm": float(min(standard.leaf_widths_mm)),
        "device_min_leaf_width_mm": float(min(device.leaf_widths_mm)),
    }
    return ComponentScore("mlc", min(sub.values()), sub, measurements)


def _reasons(standard: MachineModel, device: MachineModel, components: dict[str, ComponentScore]) -> list[str]:
    reasons = []
    src, mlc = components["source"], components["mlc"]
    if src.sub_scores["pdd"] < 1.0:
        reasons.append(f"source: depth doses differ by up to {src.measurements['pdd_max_difference_pct']:.2f} % "
                       f"(gamma pass rate {100 * src.sub_scores['pdd']:.1f} %)")
    if src.sub_scores["profiles"] < 1.0:
        reasons.append(f"source: profiles at {PROFILE_DEPTH_MM:g} mm pass gamma at {100 * src.sub_scores['profiles']:.1f} %")
    if src.sub_scores["output_factors"] < 1.0:
        reasons.append(f"source: output factors differ by up to {src.measurements['output_factor_max_difference_pct']:.2f} %")
    if mlc.sub_scores["leaf_width"] < 1.0 or mlc.sub_scores["boundaries"] < 1.0:
        reasons.append(f"mlc: leaf widths {sorted(set(device.leaf_widths_mm))} mm on {device.id} vs "
                       f"{sorted(set(standard.leaf_widths_mm))} mm on {standard.id} (width score "
                       f"{mlc.sub_scores['leaf_width']:.2f}, boundary score {mlc.sub_scores['boundaries']:.2f})")
    if mlc.sub_scores["pairs"] < 1.0:
        reasons.append(f"mlc: {device.n_pairs} leaf pairs vs {standard.n_pairs}")
    if mlc.sub_scores["max_field"] < 1.0:
        reasons.append(f"mlc: maximum field {device.max_field_mm[0]:g} x {device.max_field_mm[1]:g} mm vs "
                       f"{standard.max_field_mm[0]:g} x {standard.max_field_mm[1]:g} mm")
    if mlc.sub_scores["interdigitation"] < 1.0:
        reasons.append(f"mlc: {device.id} does not allow interdigitation, {standard.id} does")
    return reasons


def coincidence(standard: MachineModel, device: MachineModel, threshold: float = DEFAULT_THRESHOLD,
                criteria: CoincidenceCriteria = CoincidenceCriteria()) -> CoincidenceReport:
    """Score how closely ``device`` matches ``standard`` and decide whether the standard plan is reused.

    Parameters
    ----------
    standard
        The standard machine the plan was made on.
    device
        The target device's machine model (``DeviceModel.machine``).
    threshold
        Overall score at or above which the standard plan is reused, in (0, 1].
    criteria
        Tolerances of the source comparison.

    Returns
    -------
    CoincidenceReport

    Raises
    ------
    CoincidenceError
        Threshold outside (0, 1] or non-positive criteria.
    """
    if not 0.0 < threshold <= 1.0:
        raise CoincidenceError(f"coincidence threshold must lie in (0, 1], got {threshold}")
    if min(criteria.dose_pct, criteria.distance_mm, criteria.output_factor_pct) <= 0:
        raise CoincidenceError(f"coincidence criteria must be positive, got {criteria}")
    components = {"source": _source_score(standard, device, criteria), "mlc": _mlc_score(standard, device)}
    overall = min(c.score for c in components.values())
    return CoincidenceReport(
        standard_id=standard.id,
        device_id=device.id,
        components=components,
        overall=overall,
        threshold=threshold,
        reuse_standard_plan=overall >= threshold,
        reasons=tuple(_reasons(standard, device, components)),
    )
