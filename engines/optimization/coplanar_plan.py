"""A coplanar IMRT plan from a density volume, structure masks and a medical order.

Chains the standard machine's dose engine and the fluence optimizer: dose grid, equispaced
coplanar beams at the target's centroid, bixel grids over the target's projection, one dose
influence matrix per beam (the unit of work a grid shards), and the optimized, normalized
fluence. The final dose is the full kernel's: the optimization is corrected for the far scatter
the sparse matrix leaves out (:mod:`rtgrid.engines.dose.far_scatter`). Timings of the stages are
kept apart, for benchmarks and the job's progress.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from rtgrid.engines.conversion.mimic import mimic_dose
from rtgrid.engines.dose.beams import Beam, BixelGrid, default_isocenter, make_bixel_grid
from rtgrid.engines.dose.far_scatter import far_scatter_ratio, with_far_scatter
from rtgrid.engines.dose.grid import resample_mask, resample_to_dose_grid
from rtgrid.engines.dose.machine import MachineModel
from rtgrid.engines.dose.pencil_beam import FullKernelBeam, assemble_dij, compute_beam_dij
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.parallel import engine_threads, ordered_map
from rtgrid.engines.qa.plan_acceptance import judge_standard_plan

from .dvh import GoalResult, dose_at_volume, evaluate_goals
from .goal_driven import DEFAULT_GOAL_ROUNDS, adapted_objectives, plan_rank, unmet_with_margin
from .fluence import DEFAULT_SMOOTHNESS, FluenceResult, optimize_fluence
from .order import MedicalOrder


@dataclass(frozen=True)
class DoseInfluence:
    """Everything the optimizer needs from the dose engine.

    Attributes
    ----------
    dose_grid : Volume
        Relative electron density on the dose grid (its geometry is the dose's).
    masks : dict[str, np.ndarray]
        Structures resampled to the dose grid (boolean, the grid's shape).
    bixels : tuple of BixelGrid
        One per beam, in the dose influence matrix's column order.
    dij : scipy.sparse.csr_matrix
        ``(n_voxels, n_bixels)`` float32, Gy per unit weight.
    time_s : float
        Wall time of the dose influence computation (per-beam matrices and their assembly).
    """

    dose_grid: Volume
    masks: dict[str, np.ndarray]
    bixels: tuple[BixelGrid, ...]
    dij: sp.csr_matrix
    time_s: float

    @property
    def bixel_positions(self) -> list[np.ndarray]:
        """Per beam, the ``(row, col)`` = ``(iy, ix)`` lattice position of each bixel (smoothness)."""
        return [np.stack([b.iy, b.ix], axis=1) for b in self.bixels]


def compute_dose_influence(
    density: Volume,
    masks: Mapping[str, np.ndarray],
    target: str | Sequence[str],
    body: str,
    machine: MachineModel,
    gantry_angles_deg: Sequence[float],
    *,
    dose_grid_mm: float = 3.0,
    bixel_mm: float = 5.0,
    patient_position: str = "HFS",
    device: str = "cpu",
) -> DoseInfluence:
    """Coplanar beams at the targets' centroid and their dose influence on the dose grid.

    Parameters
    ----------
    density : Volume
        Relative electron density on the CT grid.
    masks : Mapping[str, np.ndarray]
        Structures on the CT grid (boolean, ``density``'s shape).
    target : str or sequence of str
        The target, or every prescription level's target (``MedicalOrder.targets``): the bixels
        cover their union.
    body : str
        The outline (voxels that get dose rows).
    machine : MachineModel
    gantry_angles_deg : sequence of float
        Couch and collimator stay at 0.
    dose_grid_mm : float
        Isotropic dose voxel size.
    bixel_mm : float
        Bixel side at the isocenter plane.
    patient_position : str
    device : str
        ``"cpu"`` or ``"gpu"`` for the dose engine.

    Returns
    -------
    DoseInfluence
    """
    start = time.perf_counter()
    grid = resample_to_dose_grid(density, dose_grid_mm)
    # structures resampled side by side (scipy.ndimage releases the GIL)
    resampled = ordered_map(lambda mask: resample_mask(mask, density, grid), list(masks.values()), engine_threads())
    dose_masks = dict(zip(masks, resampled))
    targets = [target] if isinstance(target, str) else list(target)
    covered = np.logical_or.reduce([dose_masks[name] for name in targets])
    isocenter = default_isocenter(covered, grid)
    beams = [Beam(float(g), 0.0, 0.0, isocenter, patient_position) for g in gantry_angles_deg]
    bixels = tuple(make_bixel_grid(beam, covered, grid, machine, bixel_mm) for beam in beams)
    # On the CPU, beams side by side, one thread each: a beam's projection, lattice and assembly
    # are serial, which left one of two threads idle for a third of a beam's matrix.
    threads = 1 if device != "cpu" else engine_threads()
    per_beam = ordered_map(lambda beam_bixels: compute_beam_dij(grid, dose_masks[body], *beam_bixels, machine,
                                                                device=device, workers=1),
                           list(zip(beams, bixels)), threads)
    dij = assemble_dij(per_beam, release=True)  # each beam's matrix freed once copied: a lower peak
    return DoseInfluence(grid, dose_masks, bixels, dij, time.perf_counter() - start)


@dataclass(frozen=True)
class FinalPlan:
    """An optimized plan scored on its full-kernel dose.

    Attributes
    ----------
    weights : np.ndarray
        Bixel weights (all beams), normalized so that the full-kernel dose meets the prescription.
    dose_gy : np.ndarray
        Full-kernel dose (float32 Gy, all fractions, dose-grid shape).
    fluence : FluenceResult
        The last optimization (on the far-scatter corrected matrix when ``correction_rounds`` > 0).
    correction_rounds : int
        Re-optimizations on the corrected matrix after the first one.
    goal_rounds : int
        Goal-driven re-optimizations that ran (:mod:`.goal_driven`); 0 when the first plan met
        every goal.
    goals : tuple of GoalResult
        The order's goals on ``dose_gy`` (levels first), the best trade-off found.
    optimization_s : float
        Wall time of the optimizations and of the full-kernel doses that probe the far scatter.
    final_dose_s : float
        Wall time of the final full-kernel dose.
    """

    weights: np.ndarray
    dose_gy: np.ndarray
    fluence: FluenceResult
    correction_rounds: int
    optimization_s: float
    final_dose_s: float
    goal_rounds: int = 0
    goals: tuple[GoalResult, ...] = ()

    @property
    def unmet_goals(self) -> tuple[GoalResult, ...]:
        """Goals the best plan still misses: infeasible with these beams, or traded away."""
        return tuple(g for g in self.goals if not g.met)


DEFAULT_CORRECTION_ROUNDS = 1
"""One re-optimization on the corrected matrix: on TG-119 (3 mm grid, full-kernel dose) the core's
D10 drops from 12.0 to 10.5 Gy as PTV D10 rises from 53.0 to 54.5 Gy; a second round gained a
few tenths of a Gy more in trials, for as much time again."""
CORRECTION_MAX_ITER = 40
"""Iterations of a correction round, which starts from the last solution: in trials on TG-119, 40
warm iterations did better (core D10 10.5 Gy) than 80 from the flat fluence (10.8 Gy), in half
the time."""


def optimize_plan(
    influence: DoseInfluence,
    order: MedicalOrder,
    machine: MachineModel,
    body: str,
    *,
    correction_rounds: int = DEFAULT_CORRECTION_ROUNDS,
    goal_rounds: int = DEFAULT_GOAL_ROUNDS,
    solver: str = "lbfgs",
    max_iter: int = 300,
    smoothness: float = DEFAULT_SMOOTHNESS,
    device: str | None = None,
    reference_dose_gy: np.ndarray | None = None,
) -> FinalPlan:
    """:func:`optimize_on_full_kernel` on a :class:`DoseInfluence` (``body`` names its outline)."""
    return optimize_on_full_kernel(
        influence.dij, influence.masks, order, influence.dose_grid, influence.masks[body], influence.bixels,
        machine, correction_rounds=correction_rounds, goal_rounds=goal_rounds, solver=solver, max_iter=max_iter,
        smoothness=smoothness, device=device, reference_dose_gy=reference_dose_gy,
    )


def optimize_on_full_kernel(
    dij: sp.csr_matrix,
    masks: Mapping[str, np.ndarray],
    order: MedicalOrder,
    dose_grid: Volume,
    body: np.ndarray,
    bixels: Sequence[BixelGrid],
    machine: MachineModel,
    *,
    correction_rounds: int = DEFAULT_CORRECTION_ROUNDS,
    goal_rounds: int = DEFAULT_GOAL_ROUNDS,
    solver: str = "lbfgs",
    max_iter: int = 300,
    smoothness: float = DEFAULT_SMOOTHNESS,
    device: str | None = None,
    reference_dose_gy: np.ndarray | None = None,
) -> FinalPlan:
    """Optimize on the influence matrix, again on it corrected for far scatter, then toward the goals.

    Each round takes the per-voxel ratio of the last plan's full-kernel dose to its matrix dose
    (:func:`~rtgrid.engines.dose.far_scatter.far_scatter_ratio`), scales the matrix's rows by it
    and optimizes afresh; the result is scored and normalized on its full-kernel dose.

    Parameters
    ----------
    dij : scipy.sparse.csr_matrix
        ``(n_voxels, n_bixels)``, the beams' matrices assembled in ``bixels``' order.
    masks : Mapping[str, np.ndarray]
        Structures on the dose grid.
    order : MedicalOrder
    dose_grid : Volume
        Relative electron density on the dose grid.
    body : np.ndarray
        Voxels that get dose (dose-grid shape).
    bixels : sequence of BixelGrid
        Per beam, in the matrix's column order.
    machine : MachineModel
    correction_rounds : int
        Re-optimizations on the corrected matrix (0: the matrix alone).
    goal_rounds : int
        Goal-driven re-optimizations at most (:mod:`.goal_driven`; 0: none), each on the matrix
        corrected with the last plan's far scatter; they stop once every goal is met (with the
        order's ``goal_margin_gy`` to spare).
    solver, max_iter, smoothness, device
        As :func:`.fluence.optimize_fluence`.
    reference_dose_gy : np.ndarray, optional
        A dose to reproduce (dose-grid shape, Gy), e.g. a knowledge-based prediction for an order
        with ``goals: predicted``: every optimization then mimics it, voxel by voxel and by its
        DVHs, beside the order's own terms (:func:`rtgrid.engines.conversion.mimic.mimic_dose`,
        the machinery of device conversion; CPU). The order's goals are still judged and adapted.

    Returns
    -------
    FinalPlan
    """
    if correction_rounds < 0:
        raise ValueError(f"correction_rounds must be >= 0, got {correction_rounds}")
    positions = [np.stack([g.iy, g.ix], axis=1) for g in bixels]
    planned = planning_masks(order, masks, body)  # what the optimizer aims at; goals judge ``masks``
    target = masks[order.prescription.target]
    reference = None if reference_dose_gy is None else np.asarray(reference_dose_gy, dtype=np.float64).ravel()
    optimization_s: list[float] = []
    full_dose_s: list[float] = []
    clock = time.perf_counter()
    beams = full_kernel_beams(dose_grid, body, bixels, machine)
    full_dose_s.append(time.perf_counter() - clock)  # counted with the first dose, which probes far scatter

    def optimize_and_score(matrix: sp.csr_matrix, start: np.ndarray | None,
                           objectives: MedicalOrder = order) -> tuple[FluenceResult, np.ndarray, np.ndarray]:
        iterations = max_iter if start is None else min(max_iter, CORRECTION_MAX_ITER)
        if reference is None:
            fluence = optimize_fluence(matrix, planned, objectives, bixel_grids=positions, solver=solver, device=device,
                                       max_iter=iterations, smoothness=smoothness, initial_weights=start)
        else:
            fluence = mimic_dose(matrix, reference, planned, objectives, bixel_positions=positions,
                                 smoothness=smoothness, max_iter=iterations, initial_weights=start)
        optimization_s.append(fluence.time_s)
        clock = time.perf_counter()
        weights, dose = full_kernel_dose(beams, fluence.weights, order, target)
        full_dose_s.append(time.perf_counter() - clock)
        return fluence, weights, dose

    fluence, weights, dose = optimize_and_score(dij, None)
    for _ in range(correction_rounds):
        ratio = far_scatter_ratio(dij @ weights.astype(np.float32), dose)
        fluence, weights, dose = optimize_and_score(with_far_scatter(dij, ratio), weights)
    voxel_cc = dose_grid.voxel_volume_mm3 / 1000.0
    goals = tuple(evaluate_goals(order, dose, masks, voxel_cc))

    def rank(goals: tuple[GoalResult, ...], dose: np.ndarray) -> tuple:
        # A plan the release check would fail never beats one it passes: goal rounds that push
        # infeasible organ goals can buy them with a hot spot (pt_201: 91 Gy, 130 %, in round 3).
        return (not judge_standard_plan(order, list(goals), dose, body).released, *plan_rank(order, goals))

    best = (rank(goals, dose), fluence, weights, dose, goals)
    objectives, rounds = order, 0
    while rounds < goal_rounds and unmet_with_margin(order, goals):
        rounds += 1
        objectives = adapted_objectives(objectives, order, goals)
        ratio = far_scatter_ratio(dij @ weights.astype(np.float32), dose)
        fluence, weights, dose = optimize_and_score(with_far_scatter(dij, ratio), weights, objectives)
        goals = tuple(evaluate_goals(order, dose, masks, voxel_cc))
        if rank(goals, dose) < best[0]:
            best = (rank(goals, dose), fluence, weights, dose, goals)
    _, fluence, weights, dose, goals = best
    # the beams' ray traces and the full-kernel doses before the last one probed the far scatter:
    # they belong to the optimization
    return FinalPlan(weights, dose, fluence, correction_rounds, sum(optimization_s) + sum(full_dose_s[:-1]),
                     full_dose_s[-1], rounds, goals)


THIN_TARGET_INTERIOR = 0.1
"""A target whose dose-grid mask has fewer interior voxels (all six neighbours in it) than this
share is thin: the grid holds hardly more than its edge."""
THIN_TARGET_RING_VOXELS = 2
"""Width of the ring a thin target is planned with, in dose voxels (8 mm on a 4 mm grid). On pt_202
one voxel took PTV70 D95 on the CT grid from 63.5-65.0 to 66.3 Gy, two to 70.0 Gy (clinical 70.4 Gy)."""


def planning_masks(order: MedicalOrder, masks: Mapping[str, np.ndarray], body: np.ndarray) -> dict[str, np.ndarray]:
    """The masks the optimizer aims at: a thin first-level target gains a ring of :data:`THIN_TARGET_RING_VOXELS`.

    A department reads the dose interpolated from the dose grid onto its CT, where a target's edge
    voxels draw on the dose voxels around the target's dose-grid mask. For a target thicker than
    a few dose voxels that changes D95 by tenths of a Gy; for a thin one it is most of the target:
    OpenKBP pt_202's PTV70 (5.3 cm3, about 1 cm wide over 6 cm) keeps 63 voxels of the 4 mm grid,
    none of them interior, and a plan with D95 = 70 Gy on them gave D95 63.5 Gy on the CT grid.
    The ring (in the body, outside every organ with a hard upper bound) is planned at the first
    level's dose as if it were target; the goals, the normalization and the report still use the
    target's own mask.

    Parameters
    ----------
    order : MedicalOrder
    masks : Mapping[str, np.ndarray]
        Boolean masks on the dose grid.
    body : np.ndarray
        The outline on the dose grid.

    Returns
    -------
    dict[str, np.ndarray]
        ``masks`` with a thin first level's target replaced by target + ring (and, with a goal
        margin, each hard-limited organ by organ + one voxel).
    """
    planned = dict(masks)
    body = np.asarray(body, dtype=bool)
    targets = np.logical_or.reduce([np.asarray(masks[t], dtype=bool) for t in order.targets])
    protected = np.zeros_like(body)
    for c in order.constraints:
        organ = np.asarray(masks[c.structure], dtype=bool)
        # an outline holding every target (BODY Dmax <= 60 Gy) is no organ to keep the ring out of
        if c.hard and not c.is_lower_bound and c.structure not in order.targets and not organ[targets].all():
            protected |= organ
    if order.goal_margin_gy > 0:
        # The same sampling keeps a serial organ's edge voxels on the CT out of its dose-grid mask:
        # pt_207's cord had 43.3 Gy at most on the 4 mm grid and D0.1cc 47.0 Gy on the CT. With a
        # goal margin, the organs with hard upper bounds are planned with one dose voxel more (a
        # planning organ-at-risk volume), outside the targets.
        for name in {c.structure for c in order.constraints if c.hard and not c.is_lower_bound}:
            organ = np.asarray(masks[name], dtype=bool)
            if name not in order.targets and not organ[targets].all():
                planned[name] = organ | (ndimage.binary_dilation(organ) & body & ~targets)
    # Only the first level: its D95 is the normalization, met exactly on the dose grid with no room
    # left; lower levels' coverage has the goal margin. (A ring around pt_204's thin PTV63, 112
    # voxels beside the PTV70, drove PTV70 D1 from 75 to 78.4 Gy.)
    target = np.asarray(masks[order.prescription.target], dtype=bool)
    if np.count_nonzero(ndimage.binary_erosion(target)) < THIN_TARGET_INTERIOR * np.count_nonzero(target):
        ring = ndimage.binary_dilation(target, np.ones((3, 3, 3), dtype=bool), THIN_TARGET_RING_VOXELS)
        planned[order.prescription.target] = target | (ring & body & ~protected)
    return planned


def full_kernel_beams(dose_grid: Volume, body: np.ndarray, bixels: Sequence[BixelGrid], machine: MachineModel, *,
                      workers: int | None = None) -> tuple[FullKernelBeam, ...]:
    """The plan's beams ready for :func:`full_kernel_dose`, each projected and ray-traced once.

    Parameters
    ----------
    dose_grid : Volume
        Relative electron density on the dose grid.
    body : np.ndarray
        Voxels that get dose.
    bixels : sequence of BixelGrid
        Per beam, in the weights' order.
    machine : MachineModel
    workers : int, optional
        Threads over the beams' ray traces and of each beam's dose (``None``:
        ``RTGRID_ENGINE_THREADS`` or this process's CPUs); the dose is bitwise the same for every count.
    """
    threads = engine_threads(workers)
    # Beams are traced side by side, one thread each: a beam's projection and integration are
    # serial, and its trace split into slabs kept two threads busy only 1.8x of the time.
    return tuple(ordered_map(lambda grid: FullKernelBeam(dose_grid, body, grid.beam, grid, machine, workers=threads,
                                                         trace_workers=1), bixels, threads))


def full_kernel_dose(beams: Sequence[FullKernelBeam], weights: np.ndarray, order: MedicalOrder,
                     target_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plan's final dose with the full pencil-beam kernel, normalized again to the prescription.

    The influence matrix drops far scatter beyond its lateral cutoff (a few % of the dose, more in
    a concavity such as TG-119's core) to stay sparse: good enough to optimize on, not to report,
    score or compare device plans with.

    Parameters
    ----------
    beams : sequence of FullKernelBeam
        From :func:`full_kernel_beams`, in the weights' order.
    weights : np.ndarray
        Optimized bixel weights (all beams).
    order : MedicalOrder
        Its prescription sets the normalization.
    target_mask : np.ndarray
        The prescription's target on the dose grid.

    Returns
    -------
    tuple of np.ndarray
        The renormalized weights and the dose (float32 Gy, all fractions, dose-grid shape).
    """
    offsets = np.cumsum([0] + [beam.bixels.n_bixels for beam in beams])
    dose = np.zeros(np.shape(target_mask), dtype=np.float64)
    for b, beam in enumerate(beams):
        dose += beam.dose(weights[offsets[b]:offsets[b + 1]])
    rx = order.prescription
    factor = rx.dose_gy / dose_at_volume(dose[np.asarray(target_mask, dtype=bool)], rx.normalization_volume_pct)
    return np.asarray(weights) * factor, (dose * factor).astype(np.float32)
