"""Dose mimicking: optimize a device's fluence to reproduce a reference (standard-plan) dose.

The objective adds, to the medical order's own penalties (:mod:`rtgrid.engines.optimization.objectives`,
evaluated by the same :func:`dose_objective`), two kinds of goals taken from the reference plan:

- a voxel-wise quadratic penalty to the reference dose ``r``::

      mimic_weight * sum_i w_i (d_i - r_i)^2 / (Rx^2 sum_i w_i)
      w_i = 1 + target_boost [i in target] + isodose_boost * sum_L exp(-(r_i - L)^2 / (2 (0.05 Rx)^2))

  over every voxel the beams reach, weighted more in the target and near the isodose levels ``L``
  (:data:`ISODOSE_LEVELS_PCT` of the prescription), so their surfaces keep their places;
- the reference DVHs as goals: for every other structure of the order, ``D(v) <= D_ref(v)`` at
  :data:`DVH_GOAL_VOLUMES_PCT`, and for the target ``D98 >= D98_ref`` and ``D2 <= D2_ref``, as
  Wu-Mohan DVH terms of priority ``dvh_goal_priority``.

Plus the bixel smoothness term of the fluence optimizer. Minimised with scipy's L-BFGS-B on
non-negative weights, then normalised like :func:`rtgrid.engines.optimization.fluence.optimize_fluence`
(target ``D(normalization volume) = Rx``), and returned as its :class:`FluenceResult`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from rtgrid.engines.errors import EngineError
from rtgrid.engines.optimization.dvh import dose_at_volume
from rtgrid.engines.optimization.fluence import DEFAULT_FTOL, DEFAULT_SMOOTHNESS, LBFGS_MEMORY, FluenceResult
from rtgrid.engines.optimization.objectives import build_penalty_terms, dose_objective, smoothness_operator, to_device
from rtgrid.engines.optimization.order import Constraint, MedicalOrder
from rtgrid.engines.optimization.row_blocks import RowBlockMatrix
from rtgrid.engines.parallel import blas_threads

ISODOSE_LEVELS_PCT = (30.0, 50.0, 80.0, 95.0)
DVH_GOAL_VOLUMES_PCT = (5.0, 25.0, 50.0)
DEFAULT_MIMIC_WEIGHT = 100.0
"""Weight of the voxel-wise term: that of a priority-1 goal (see ``PRIORITY_WEIGHTS``)."""
DEFAULT_TARGET_BOOST = 4.0
DEFAULT_ISODOSE_BOOST = 2.0
ISODOSE_WIDTH_FRACTION = 0.05


class DoseMimickingError(EngineError, ValueError):
    """Inputs of dose mimicking that do not fit together (sizes, missing structures)."""


def reference_dvh_goals(reference_dose_gy: np.ndarray, masks: Mapping[str, np.ndarray], order: MedicalOrder,
                        priority: int = 3) -> tuple[Constraint, ...]:
    """The reference plan's DVHs as order constraints (see the module docstring)."""
    flat = np.asarray(reference_dose_gy, dtype=np.float64).ravel()
    rx = order.prescription
    goals = []
    for name in order.structures:
        doses = flat[np.asarray(masks[name]).reshape(-1)] if np.asarray(masks[name]).dtype == bool else flat[masks[name]]
        if doses.size == 0:
            continue
        if name in order.targets:
            goals.append(Constraint(name, "min_dvh", dose_at_volume(doses, 98.0), 98.0, priority))
            goals.append(Constraint(name, "max_dvh", dose_at_volume(doses, 2.0), 2.0, priority))
            continue
        for v in DVH_GOAL_VOLUMES_PCT:
            level = dose_at_volume(doses, v)
            if level > 0.01 * rx.dose_gy:
                goals.append(Constraint(name, "max_dvh", level, v, priority))
    return tuple(goals)


def tightened_order(order: MedicalOrder, shortfalls_gy: Sequence[float]) -> MedicalOrder:
    """The order with each constraint's level moved by how far a device plan fell short of it.

    After a QA failure, the next conversion asks more of the goals the device plan missed (an
    upper bound ``D`` becomes ``D - s``, a lower bound ``D + s``), so that mimicking pushes harder
    where the last plan lost; the goals themselves are still judged on the original order.

    Parameters
    ----------
    order : MedicalOrder
    shortfalls_gy : sequence of float
        One per constraint of ``order`` (0 leaves it as it is), Gy.

    Returns
    -------
    MedicalOrder
        Levels never below 0 Gy.
    """
    if len(shortfalls_gy) != len(order.constraints):
        raise DoseMimickingError(f"{len(shortfalls_gy)} shortfalls for {len(order.constraints)} constraints")
    constraints = tuple(
        replace(c, dose_gy=max(c.dose_gy + s if c.is_lower_bound else c.dose_gy - s, 0.0)) if s > 0 else c
        for c, s in zip(order.constraints, shortfalls_gy)
    )
    return replace(order, constraints=constraints)


def mimic_weights(reference_dose_gy: np.ndarray, target_voxels: np.ndarray, rx_gy: float,
                  target_boost: float = DEFAULT_TARGET_BOOST, isodose_boost: float = DEFAULT_ISODOSE_BOOST) -> np.ndarray:
    """Per-voxel weights ``w_i`` of the voxel-wise term (see the module docstring)."""
    r = np.asarray(reference_dose_gy, dtype=np.float64).ravel()
    w = np.ones_like(r)
    w[target_voxels] += target_boost
    sigma = ISODOSE_WIDTH_FRACTION * rx_gy
    for pct in ISODOSE_LEVELS_PCT:
        w += isodose_boost * np.exp(-0.5 * ((r - pct / 100.0 * rx_gy) / sigma) ** 2)
    return w


def mimic_dose(
    dij: sp.spmatrix,
    reference_dose_gy: np.ndarray,
    masks: Mapping[str, np.ndarray],
    order: MedicalOrder,
    *,
    bixel_positions: Sequence[np.ndarray] | None = None,
    mimic_weight: float = DEFAULT_MIMIC_WEIGHT,
    target_boost: float = DEFAULT_TARGET_BOOST,
    isodose_boost: float = DEFAULT_ISODOSE_BOOST,
    dvh_goal_priority: int = 3,
    smoothness: float = DEFAULT_SMOOTHNESS,
    max_iter: int = 300,
    ftol: float = DEFAULT_FTOL,
    initial_weights: np.ndarray | None = None,
) -> FluenceResult:
    """Device fluence that reproduces a reference dose and its DVHs while keeping the order's goals.

    Parameters
    ----------
    dij
        The device's dose influence ``(n_voxels, n_bixels)``, Gy per unit weight.
    reference_dose_gy
        The standard plan's dose on the same grid (any shape with ``n_voxels`` elements).
    masks
        Every structure of the order: boolean masks on the grid or voxel indices.
    order
        The medical order (its terms stay in the objective).
    bixel_positions
        Per beam, ``(n, 2)`` ``(row, col)`` of its bixels (smoothness); none: no smoothness.
    mimic_weight, target_boost, isodose_boost
        Weights of the voxel-wise term (see the module docstring).
    dvh_goal_priority
        Priority (1..5) of the reference-DVH goals.
    smoothness, max_iter, ftol
        As :func:`rtgrid.engines.optimization.fluence.optimize_fluence`.
    initial_weights
        Bixel weights to start from (e.g. the last solution, after the matrix was corrected for
        far scatter); default: uniform weights that give the target the prescription on average.

    Returns
    -------
    FluenceResult
        ``solver`` is ``"mimic-lbfgs"``.

    Raises
    ------
    DoseMimickingError
        Sizes that do not match, a structure of the order without a mask, no bixel reaching the target.
    """
    start = time.perf_counter()
    dij = sp.csr_matrix(dij, dtype=np.float32)
    n_voxels, n_bixels = dij.shape
    reference = np.asarray(reference_dose_gy, dtype=np.float64).ravel()
    if reference.size != n_voxels:
        raise DoseMimickingError(f"reference dose has {reference.size} voxels, the dose influence matrix {n_voxels} rows")
    missing = [name for name in order.structures if name not in masks]
    if missing:
        raise DoseMimickingError(f"no mask for {missing} named by the order; masks given: {sorted(masks)}")
    indices = {}
    for name in order.structures:
        mask = np.asarray(masks[name])
        idx = np.flatnonzero(mask.reshape(-1)) if mask.dtype == bool else np.unique(mask.astype(np.int64))
        if mask.dtype == bool and mask.size != n_voxels:
            raise DoseMimickingError(f"mask of {name} has {mask.size} voxels, the dose influence matrix {n_voxels} rows")
        if idx.size == 0:
            raise DoseMimickingError(f"structure {name} holds no voxel of the dose grid")
        indices[name] = idx
    rx = order.prescription
    extended = replace(order, constraints=order.constraints + reference_dvh_goals(reference, indices, order, dvh_goal_priority))
    terms = to_device(build_penalty_terms(extended, indices), rx.dose_gy, None)

    reached = np.flatnonzero(np.diff(dij.indptr) > 0)
    rows = np.union1d(reached, np.flatnonzero(reference > 0))
    weights = mimic_weights(reference, indices[rx.target], rx.dose_gy, target_boost, isodose_boost)[rows]
    scale = mimic_weight / (rx.dose_gy**2 * weights.sum())
    ref_rows = reference[rows]

    target_dose_per_unit = float(np.mean(dij[indices[rx.target]] @ np.ones(n_bixels, dtype=np.float32)))
    if target_dose_per_unit <= 0:
        raise DoseMimickingError(f"no bixel of the device's dose influence matrix reaches the target {rx.target}")
    x_ref = rx.dose_gy / target_dose_per_unit
    roughness = None
    if bixel_positions is not None and smoothness > 0:
        lap = smoothness_operator(bixel_positions, n_bixels)
        if lap.shape[0]:
            roughness = (lap, smoothness / (lap.shape[0] * x_ref**2))
    products = RowBlockMatrix(dij)  # on every core the engine may use
    if initial_weights is None:
        u0 = np.ones(n_bixels)
    else:
        if np.size(initial_weights) != n_bixels:
            raise DoseMimickingError(f"{np.size(initial_weights)} initial weights for {n_bixels} bixels")
        u0 = np.clip(np.asarray(initial_weights, dtype=np.float64).ravel(), 0.0, None) / x_ref

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        # the variables are weights in units of x_ref (order 1), which keeps L-BFGS-B's first
        # steps in proportion to the weights
        x = u * x_ref
        dose = products.matvec(x).astype(np.float64)
        value, dose_grad = dose_objective(dose, terms)
        diff = dose[rows] - ref_rows
        value += scale * float(np.sum(weights * diff**2))
        dose_grad[rows] += 2.0 * scale * weights * diff
        grad = products.rmatvec(dose_grad)
        if roughness is not None:
            lap, lap_weight = roughness
            r = lap @ x
            value += lap_weight * float(r @ r)
            grad += 2.0 * lap_weight * (lap.T @ r)
        return value, grad * x_ref

    with blas_threads(1):  # the products run on the engine's threads
        history: list[float] = [fun(u0)[0]]  # the start's objective first, as optimize_fluence's
        result = scipy.optimize.minimize(
            fun, u0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * n_bixels,
            callback=lambda intermediate_result: history.append(float(intermediate_result.fun)),
            options={"maxiter": max_iter, "ftol": ftol, "gtol": 1e-12, "maxcor": LBFGS_MEMORY},
        )
    x = np.clip(result.x, 0.0, None) * x_ref
    dose = (dij @ x.astype(np.float32)).astype(np.float32)
    coverage = dose_at_volume(dose[indices[rx.target]].astype(np.float64), rx.normalization_volume_pct)
    if coverage <= 0:
        raise DoseMimickingError(f"the mimicked plan gives no dose to D{rx.normalization_volume_pct:g}% of {rx.target}")
    factor = rx.dose_gy / coverage
    return FluenceResult(
        weights=x * factor,
        dose_gy=(dose * np.float32(factor)).astype(np.float32),
        normalization_factor=float(factor),
        iterations=int(result.nit),
        objective_history=tuple(history),
        time_s=time.perf_counter() - start,
        solver="mimic-lbfgs",
        device="cpu",
        message=str(result.message),
    )
