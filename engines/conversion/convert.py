"""Convert a standard plan to a target device: coincidence -> (reuse | mimic) -> sequence ->
refine MU -> dose from the segments -> goals and deliverability.

1. :func:`~.coincidence.coincidence` of the standard machine and the device.
2. The device's own beamlets for every beam (:func:`~.leaf_grid.device_leaf_grid`, rows = leaf
   pairs, the Y jaws closing on the target's ends) and their dose influence with the device's
   kernel, corrected for the far scatter it leaves out (:mod:`rtgrid.engines.dose.far_scatter`),
   probed with the standard fluence resampled onto the device's bixels: the standard dose to
   mimic and the segments' final dose are full-kernel doses, so the matrix that bridges them must
   carry far scatter too.
3. The ideal device fluence: above the threshold, the standard fluence itself resampled onto the
   device's bixels (reuse); below it, :func:`~.mimic.mimic_dose` to the standard dose, then
   ``correction_rounds`` times the matrix corrected again with the mimicked fluence as the probe
   and mimicking resumed from it.
4. Per beam, :func:`~.sequencing.sequence_beam` (MU per fraction), then the MU of all segments
   refitted together (:func:`~.sequencing.refine_segment_mu`) to the ideal fluence's dose.
5. The dose recomputed from the segments' apertures (:func:`~.segment_dose.segments_dose`), the
   MU scaled once so that the target's D(normalization volume) equals the prescription, the
   order's goals evaluated and every beam checked (:func:`~.deliverability.deliverability`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from rtgrid.engines.dose.beams import Beam
from rtgrid.engines.dose.far_scatter import far_scatter_ratio, with_far_scatter
from rtgrid.engines.dose.machine import MachineModel, load_machine
from rtgrid.engines.dose.pencil_beam import assemble_dij, compute_beam_dose
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.coplanar_plan import CORRECTION_MAX_ITER, DEFAULT_CORRECTION_ROUNDS
from rtgrid.engines.optimization.dvh import GoalResult, dose_at_volume, evaluate_goals, targets_mask
from rtgrid.engines.optimization.order import MedicalOrder

from .coincidence import DEFAULT_THRESHOLD, CoincidenceReport, coincidence
from .deliverability import deliverability
from .device import DeviceModel
from .leaf_grid import LeafGrid, device_beam_dij, device_leaf_grid, lattice_cells, resample_fluence
from .mimic import mimic_dose
from .segment import Segment, Violation
from .segment_dose import DEFAULT_RESOLUTION_MM, segment_open_fractions, segments_dose
from .sequencing import DEFAULT_LEVELS, refine_segment_mu, sequence_beam
from .standard_plan import StandardPlan

LOST_FLUENCE_TOLERANCE = 0.01
"""Fraction of a beam's standard fluence outside the device's bixels above which reuse is reported."""
REFINE_TARGET_BOOST = 4.0
"""Extra weight of target voxels in the MU refinement."""


class ConversionError(EngineError, ValueError):
    """A standard plan and the data given with it do not fit together."""


@dataclass(frozen=True)
class DevicePlan:
    """A plan for one device.

    Attributes
    ----------
    device_id, device_hash : str
        The device's machine file and its SHA-256.
    coincidence : CoincidenceReport
    reused_standard_plan : bool
        True: the standard fluence was sequenced as is; False: re-optimized by dose mimicking.
    beams : tuple of Beam
    leaf_grids : tuple of LeafGrid
    fluence_maps : tuple of np.ndarray
        Per beam, the ideal fluence on the leaf grid (MU per fraction).
    segments : tuple of tuple of Segment
        Per beam, the step-and-shoot segments (MU per fraction, normalised).
    dose : Volume
        Dose from the segments (Gy, all fractions) on the dose grid.
    ideal_dose_gy : np.ndarray
        Dose of the ideal fluence (Gy, all fractions, dose-grid shape), from the device's matrix.
    goals : tuple of GoalResult
    violations : tuple of Violation
        Empty when every beam is deliverable.
    timings_s : dict[str, float]
        ``coincidence``, ``dose_influence``, ``fluence``, ``sequencing``, ``refinement``, ``dose``, ``total``.
    """

    device_id: str
    device_hash: str
    coincidence: CoincidenceReport
    reused_standard_plan: bool
    beams: tuple[Beam, ...]
    leaf_grids: tuple[LeafGrid, ...]
    fluence_maps: tuple[np.ndarray, ...]
    segments: tuple[tuple[Segment, ...], ...]
    dose: Volume
    ideal_dose_gy: np.ndarray
    goals: tuple[GoalResult, ...]
    violations: tuple[Violation, ...]
    timings_s: dict[str, float]

    @property
    def mu_per_beam(self) -> tuple[float, ...]:
        """MU per fraction of each beam."""
        return tuple(float(sum(s.mu for s in segs)) for segs in self.segments)

    @property
    def n_segments(self) -> int:
        return sum(len(segs) for segs in self.segments)


def convert_plan(
    plan: StandardPlan,
    density: Volume,
    masks: Mapping[str, np.ndarray],
    device: DeviceModel,
    *,
    standard: MachineModel | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    column_mm: float = 5.0,
    margin_mm: float = 5.0,
    n_levels: int = DEFAULT_LEVELS,
    max_iter: int = 200,
    resolution_mm: float = DEFAULT_RESOLUTION_MM,
    compute_device: str = "cpu",
    objectives: MedicalOrder | None = None,
    correction_rounds: int = DEFAULT_CORRECTION_ROUNDS,
) -> DevicePlan:
    """Convert a standard plan into a deliverable plan for ``device``.

    Parameters
    ----------
    plan
        The standard plan.
    density
        Relative electron density on the plan's dose grid.
    masks
        Boolean structure masks on the dose grid: every structure of the order and ``plan.body``.
    device
    standard
        The standard machine; loaded from ``plan.machine_id`` when not given.
    threshold
        Coincidence score at or above which the standard fluence is reused.
    column_mm, margin_mm
        Column width of the device bixels and margin around the target's projection.
    n_levels
        Intensity levels of the sequencer.
    max_iter
        Iterations of dose mimicking.
    resolution_mm
        Aperture lattice of the final dose.
    compute_device
        ``"cpu"`` or ``"gpu"`` for the dose engine.
    objectives
        The order dose mimicking optimizes, e.g. the plan's with a goal tightened after a QA
        failure (:func:`tightened_order`); the goals are always judged on the plan's own order.
        Default: the plan's order.
    correction_rounds
        After dose mimicking, how often the matrix is corrected again for far scatter, probed
        with the mimicked fluence, and mimicking resumed from it (as for the standard plan,
        :func:`~rtgrid.engines.optimization.coplanar_plan.optimize_on_full_kernel`).

    Returns
    -------
    DevicePlan

    Raises
    ------
    ConversionError
        The standard machine is not the one the plan was made with, the density is not on the
        plan's dose grid, or a structure is missing.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    standard = standard or load_machine(plan.machine_id)
    body, targets = _checked_inputs(plan, density, masks, standard)
    order = plan.order
    rx = order.prescription

    t = time.perf_counter()
    report = coincidence(standard, device.machine, threshold)
    timings["coincidence"] = time.perf_counter() - t

    t = time.perf_counter()
    beamlets = _device_beamlets(plan, density, body, targets, device, report.reuse_standard_plan,
                                column_mm=column_mm, margin_mm=margin_mm, compute_device=compute_device)
    violations = list(beamlets.violations)
    ideal = np.concatenate(beamlets.resampled)
    per_beam = beamlets.corrected_for(ideal)
    timings["dose_influence"] = time.perf_counter() - t

    t = time.perf_counter()
    if not report.reuse_standard_plan:
        ideal, per_beam = _mimicked_fluence(plan, masks, beamlets, objectives or order, ideal, per_beam,
                                            max_iter=max_iter, correction_rounds=correction_rounds)
    ideal_dose = (assemble_dij(per_beam) @ ideal.astype(np.float32)).astype(np.float32)
    timings["fluence"] = time.perf_counter() - t

    t = time.perf_counter()
    grids = beamlets.grids
    offsets = beamlets.offsets
    maps = tuple(g.to_map(ideal[offsets[n]:offsets[n + 1]]) / rx.fractions for n, g in enumerate(grids))
    sequenced = [sequence_beam(m, g, device, n_levels=n_levels) for m, g in zip(maps, grids)]
    timings["sequencing"] = time.perf_counter() - t

    t = time.perf_counter()
    refined = _refined_segments(plan, masks, body, grids, per_beam, sequenced, device)
    timings["refinement"] = time.perf_counter() - t

    t = time.perf_counter()
    final, dose = _normalized_delivery(plan, density, body, masks, refined, device, resolution_mm=resolution_mm,
                                       compute_device=compute_device)
    timings["dose"] = time.perf_counter() - t

    for n, segs in enumerate(final):
        violations.extend(deliverability(segs, device, beam=n))
    voxel_cc = density.voxel_volume_mm3 / 1000.0
    goals = tuple(evaluate_goals(order, dose, dict(masks), voxel_cc))
    timings["total"] = time.perf_counter() - start
    return DevicePlan(
        device_id=device.id,
        device_hash=device.machine.content_hash,
        coincidence=report,
        reused_standard_plan=report.reuse_standard_plan,
        beams=plan.beams,
        leaf_grids=tuple(grids),
        fluence_maps=maps,
        segments=final,
        dose=density.with_voxels(dose.astype(np.float32)),
        ideal_dose_gy=ideal_dose.reshape(density.shape),
        goals=goals,
        violations=tuple(violations),
        timings_s=timings,
    )


def _checked_inputs(plan: StandardPlan, density: Volume, masks: Mapping[str, np.ndarray],
                    standard: MachineModel) -> tuple[np.ndarray, np.ndarray]:
    """The body and all targets' mask, once the inputs are known to fit the plan (else ConversionError)."""
    if standard.content_hash != plan.machine_hash:
        raise ConversionError(f"standard machine {standard.id} (sha256 {standard.content_hash[:12]}) is not the model the plan "
                              f"was made with ({plan.machine_id}, sha256 {plan.machine_hash[:12]})")
    if not density.same_grid(plan.dose):
        raise ConversionError(f"density grid {density.shape} is not the plan's dose grid {plan.dose.shape}")
    missing = [n for n in (*plan.order.structures, plan.body) if n not in masks]
    if missing:
        raise ConversionError(f"no mask for {missing}; masks given: {sorted(masks)}")
    return np.asarray(masks[plan.body], dtype=bool), targets_mask(plan.order, masks)  # every level's target


@dataclass(frozen=True)
class _Beamlets:
    """The device's bixels of every beam, their pencil-beam dose influence and the standard fluence on them."""

    density: Volume
    body: np.ndarray
    device: DeviceModel
    compute_device: str
    grids: list[LeafGrid]
    raw_beams: list[sp.csr_matrix]
    raw_dij: sp.csr_matrix
    resampled: list[np.ndarray]
    violations: tuple[Violation, ...]

    @property
    def offsets(self) -> np.ndarray:
        """Where each beam's bixels start in the concatenated weights (and the total at the end)."""
        return np.cumsum([0] + [g.n_bixels for g in self.grids])

    def corrected_for(self, weights: np.ndarray) -> list[sp.csr_matrix]:
        """Per beam, the dose influence corrected for the far scatter of ``weights`` (the probe)."""
        split = np.split(weights, self.offsets[1:-1])
        full = _full_kernel_dose(self.density, self.body, self.grids, split, self.device, self.compute_device)
        ratio = far_scatter_ratio(self.raw_dij @ weights.astype(np.float32), full)
        return [with_far_scatter(d, ratio) for d in self.raw_beams]


def _device_beamlets(plan: StandardPlan, density: Volume, body: np.ndarray, targets: np.ndarray, device: DeviceModel,
                     reuse: bool, *, column_mm: float, margin_mm: float, compute_device: str) -> _Beamlets:
    """Leaf grids, their influence and the resampled standard fluence; what the device cannot reach as violations."""
    violations: list[Violation] = []
    grids = []
    for n, beam in enumerate(plan.beams):
        grid, found = device_leaf_grid(beam, targets, density, device, column_mm, margin_mm)
        grids.append(grid)
        violations.extend(replace(v, beam=n) for v in found)
    raw_beams = [device_beam_dij(density, body, g, device, compute_device=compute_device) for g in grids]
    resampled = []
    for n, (grid, bixels, w) in enumerate(zip(grids, plan.bixels, plan.weights)):
        device_w, lost = resample_fluence(bixels, w, grid)
        resampled.append(device_w)
        if reuse and lost > LOST_FLUENCE_TOLERANCE:
            violations.append(Violation("field_size", n, None, f"{100 * lost:.1f} % of the standard fluence of beam {n} "
                                                              f"lies outside the leaf bank of {device.id}"))
    return _Beamlets(density, body, device, compute_device, grids, raw_beams, assemble_dij(raw_beams), resampled,
                     tuple(violations))


def _mimicked_fluence(plan: StandardPlan, masks: Mapping[str, np.ndarray], beamlets: _Beamlets,
                      objectives: MedicalOrder, ideal: np.ndarray, per_beam: list[sp.csr_matrix], *, max_iter: int,
                      correction_rounds: int) -> tuple[np.ndarray, list[sp.csr_matrix]]:
    """Dose mimicking of the standard dose, then ``correction_rounds`` re-probes of far scatter.

    Returns the device fluence and the per-beam influence it was last optimized on.
    """
    positions = [g.positions for g in beamlets.grids]
    ideal = mimic_dose(assemble_dij(per_beam), plan.dose.voxels, masks, objectives, bixel_positions=positions,
                       max_iter=max_iter).weights
    for _ in range(correction_rounds):
        # the mimicked fluence moves away from the standard one where the device's beam
        # differs, and its far scatter with it: probe again, resume from the solution
        per_beam = beamlets.corrected_for(ideal)
        ideal = mimic_dose(assemble_dij(per_beam), plan.dose.voxels, masks, objectives, bixel_positions=positions,
                           max_iter=min(max_iter, CORRECTION_MAX_ITER), initial_weights=ideal).weights
    return ideal, per_beam


def _refined_segments(plan: StandardPlan, masks: Mapping[str, np.ndarray], body: np.ndarray, grids: list[LeafGrid],
                      per_beam: list[sp.csr_matrix], sequenced: list[list[Segment]],
                      device: DeviceModel) -> list[list[Segment]]:
    """All segments' MU refitted together; segments left at 0 MU are dropped."""
    rx = plan.order.prescription
    rows = np.flatnonzero(body.ravel())
    columns, beam_of = [], []
    for n, (segs, d) in enumerate(zip(sequenced, per_beam)):
        if segs:
            columns.append(np.asarray((d[rows] @ segment_open_fractions(segs, grids[n], device)).todense()))
            beam_of.extend([n] * len(segs))
    in_target = np.asarray(masks[rx.target]).ravel()[rows]
    voxel_weights = 1.0 + REFINE_TARGET_BOOST * in_target
    # The segments' MU reproduce the standard plan's dose, which QA compares with, rather than the
    # ideal fluence's: the refinement then also undoes what resampling and sequencing lost.
    reference = np.asarray(plan.dose.voxels, dtype=np.float64).ravel()
    mu = refine_segment_mu(np.concatenate(columns, axis=1), reference[rows] / rx.fractions, voxel_weights,
                           np.asarray(beam_of), min_mu=device.min_segment_mu,
                           max_segments_per_beam=device.max_segments_per_beam)
    refined, k = [], 0
    for segs in sequenced:
        refined.append([replace(s, mu=float(mu[k + i])) for i, s in enumerate(segs) if mu[k + i] > 0])
        k += len(segs)
    return refined


def _normalized_delivery(plan: StandardPlan, density: Volume, body: np.ndarray, masks: Mapping[str, np.ndarray],
                         refined: list[list[Segment]], device: DeviceModel, *, resolution_mm: float,
                         compute_device: str) -> tuple[tuple[tuple[Segment, ...], ...], np.ndarray]:
    """The segments scaled so that the target's D(normalization volume) is the prescription, and their dose (Gy)."""
    rx = plan.order.prescription
    dose = _segments_total_dose(plan, density, body, refined, device, resolution_mm, compute_device)
    target_doses = dose.ravel()[np.asarray(masks[rx.target]).ravel()]
    factor = rx.dose_gy / dose_at_volume(target_doses, rx.normalization_volume_pct)
    dose *= factor
    final = tuple(tuple(replace(s, mu=s.mu * factor) for s in segs) for segs in refined)
    if any(s.mu < device.min_segment_mu for segs in final for s in segs):
        # Normalization scaled a segment under the device's minimum MU: lift it, and recompute the
        # dose from the segments as delivered (the dose always comes from the segments themselves).
        final = tuple(tuple(replace(s, mu=max(s.mu, device.min_segment_mu)) for s in segs) for segs in final)
        dose = _segments_total_dose(plan, density, body, final, device, resolution_mm, compute_device)
    return final, dose


def _segments_total_dose(plan: StandardPlan, density: Volume, body: np.ndarray, segments: Sequence[Sequence[Segment]],
                         device: DeviceModel, resolution_mm: float, compute_device: str) -> np.ndarray:
    """Dose (Gy, all fractions, float64, the density's shape) of every beam's segments (MU per fraction)."""
    dose = np.zeros(density.shape, dtype=np.float64)
    for beam, segs in zip(plan.beams, segments):
        if segs:
            dose += segments_dose(density, body, beam, segs, device, resolution_mm=resolution_mm,
                                  compute_device=compute_device)
    dose *= plan.order.prescription.fractions
    return dose


def _full_kernel_dose(density: Volume, body: np.ndarray, grids: list[LeafGrid], weights: list[np.ndarray],
                      device: DeviceModel, compute_device: str) -> np.ndarray:
    """Dose (Gy, flat) of per-beam device-bixel weights with the device's full kernel."""
    dose = np.zeros(density.shape, dtype=np.float64)
    for grid, w in zip(grids, weights):
        cells, aggregation = lattice_cells(grid, device.machine.sad_mm)
        dose += compute_beam_dose(density, body, grid.beam, cells, device.machine, aggregation @ w,
                                  device=compute_device)
    return dose.ravel()
