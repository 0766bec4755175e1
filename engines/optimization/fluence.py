"""Fluence map optimization: bixel weights that best meet a medical order.

The objective (see :mod:`.objectives`) is the order's penalties on the dose ``d = Dij x`` plus a
smoothness term ``s * ||L x||^2 / (n_pairs * x_ref^2)`` between neighbouring bixels of each beam.
``x_ref`` is the uniform fluence that gives the prescription as mean target dose. The solvers work
on the scaled weights ``u = x / x_ref`` (order 1, whatever the dose engine's units): L-BFGS-B's
first step on bounded variables is at most the gradient itself, so with raw weights of order 1e3
and gradients of order 1e-6 it moved the fluence by a few parts per million, the objective by less
than its ``ftol`` test, and stopped after one iteration on the flat start. Fluence is
non-negative. Two solvers minimize the same objective:

- ``"lbfgs"``: scipy's L-BFGS-B, on the CPU;
- ``"torch"``: a projected L-BFGS (two-loop recursion on the free bixels, projected Armijo
  backtracking) in torch, on CUDA when present, else on the CPU.

After optimization the plan is scaled so that the target's D(normalization volume) equals the
prescription (D95 = Rx by default).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from rtgrid.engines.errors import EngineError
from rtgrid.engines.parallel import blas_threads

from .dvh import dose_at_volume
from .objectives import DeviceTerms, build_penalty_terms, dose_objective, smoothness_operator, to_device
from .order import MedicalOrder
from .quiet_rows import QuietDose, quiet_dose_limits
from .row_blocks import RowBlockMatrix

SOLVERS = ("lbfgs", "torch")
DEFAULT_SMOOTHNESS = 0.02
#: Convergence: stop when (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= FTOL (scipy's L-BFGS-B test).
DEFAULT_FTOL = 1e-10
LBFGS_MEMORY = 20
_ARMIJO = 1e-4


class FluenceOptimizationError(EngineError, ValueError):
    """Inputs that cannot be optimized: missing or empty structures, sizes that do not match."""


@dataclass(frozen=True)
class FluenceResult:
    """Outcome of a fluence optimization.

    Attributes
    ----------
    weights : np.ndarray
        Bixel weights (float64, >= 0), in the dose influence matrix's units, normalized.
    dose_gy : np.ndarray
        Dose (float32, Gy) of every dose-grid voxel in C order: ``Dij @ weights``.
    normalization_factor : float
        Factor applied to the optimized weights so that target D(v) = Rx.
    iterations : int
    objective_history : tuple of float
        Objective at the start, then after each iteration (before normalization).
    time_s : float
        Wall time of the whole call.
    solver : str
    device : str
    message : str
        The solver's stopping reason.
    """

    weights: np.ndarray
    dose_gy: np.ndarray
    normalization_factor: float
    iterations: int
    objective_history: tuple[float, ...]
    time_s: float
    solver: str
    device: str
    message: str


def optimize_fluence(
    dij: sp.spmatrix,
    structures: Mapping[str, np.ndarray],
    order: MedicalOrder,
    *,
    bixel_grids: Sequence[tuple[int, int] | np.ndarray] | None = None,
    solver: str = "lbfgs",
    max_iter: int = 300,
    smoothness: float = DEFAULT_SMOOTHNESS,
    ftol: float = DEFAULT_FTOL,
    device: str | None = None,
    initial_weights: np.ndarray | None = None,
) -> FluenceResult:
    """Optimize non-negative bixel weights against a medical order.

    Parameters
    ----------
    dij : scipy.sparse matrix
        Dose influence, ``(n_voxels, n_bixels)``, Gy per unit weight, rows in C order of the
        dose grid.
    structures : Mapping[str, np.ndarray]
        Every structure of the order: a boolean mask on the dose grid (any shape with
        ``n_voxels`` elements) or int indices of its voxels.
    order : MedicalOrder
    bixel_grids : sequence, optional
        Per beam, in column order: the bixel grid shape ``(rows, cols)`` or the ``(n, 2)``
        ``(row, col)`` positions of its bixels (see :func:`.objectives.smoothness_operator`).
        Without it there is no smoothness term.
    solver : {"lbfgs", "torch"}
    max_iter : int
        Iteration limit.
    smoothness : float
        Weight ``s`` of the smoothness term (0 turns it off).
    ftol : float
        Relative objective decrease under which the solvers stop.
    device : str, optional
        Torch device for ``solver="torch"``; default ``"cuda"`` when available, else ``"cpu"``.
    initial_weights : np.ndarray, optional
        Start from these weights (e.g. an earlier solution) instead of the flat fluence.

    Returns
    -------
    FluenceResult

    Raises
    ------
    FluenceOptimizationError
        Unknown solver, structures missing, empty or outside the grid, no bixel reaching the
        target, or bixel grids that do not match the matrix.
    """
    start = time.perf_counter()
    if solver not in SOLVERS:
        raise FluenceOptimizationError(f"solver must be one of {SOLVERS}, got {solver!r}")
    dij = sp.csr_matrix(dij, dtype=np.float32)
    n_voxels, n_bixels = dij.shape
    indices = {name: _voxel_indices(structures, name, n_voxels) for name in order.structures}

    rx = order.prescription
    reached, row_of_voxel = _rows_with_entries(dij)
    # the solvers see only the rows bixels reach: their dose vectors, gradients and their casts
    # shrink with them (TG-119, 3 mm: 0.27 M of 3.0 M); terms are made on the voxels first, as
    # they count voxels and set structures apart
    terms = [replace(t, voxels=row_of_voxel[t.voxels]) for t in build_penalty_terms(order, indices)]

    target_dose_per_unit = float(np.mean(dij[indices[rx.target]] @ np.ones(n_bixels, dtype=np.float32)))
    if target_dose_per_unit <= 0:
        raise FluenceOptimizationError(f"no bixel of the dose influence matrix reaches the target {rx.target}")
    x_ref = rx.dose_gy / target_dose_per_unit
    if initial_weights is None:
        u0 = np.ones(n_bixels)  # the flat fluence that gives Rx as mean target dose, in units of x_ref
    else:
        u0 = np.clip(np.asarray(initial_weights, dtype=np.float64).ravel(), 0.0, None) / x_ref
        if u0.size != n_bixels:
            raise FluenceOptimizationError(f"{u0.size} initial weights for {n_bixels} bixels")

    roughness = None
    if bixel_grids is not None and smoothness > 0:
        try:
            lap = smoothness_operator(bixel_grids, n_bixels)
        except ValueError as exc:
            raise FluenceOptimizationError(str(exc)) from exc
        if lap.shape[0]:
            # s ||L x||^2 / (n_pairs x_ref^2) = s ||L u||^2 / n_pairs
            roughness = (lap, smoothness / lap.shape[0])

    if solver == "lbfgs":
        u, iterations, history, message = _solve_scipy(reached, x_ref, terms, rx.dose_gy, roughness, u0, max_iter, ftol)
        used_device = "cpu"
    else:
        import torch  # imported here so the CPU solver does not load it

        used_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        u, iterations, history, message = _solve_torch(
            reached, x_ref, terms, rx.dose_gy, roughness, u0, max_iter, ftol, used_device
        )

    weights = np.clip(u, 0.0, None) * x_ref
    dose = (dij @ weights.astype(np.float32)).astype(np.float32)
    coverage = dose_at_volume(dose[indices[rx.target]].astype(np.float64), rx.normalization_volume_pct)
    if coverage <= 0:
        raise FluenceOptimizationError(f"the optimized plan gives no dose to D{rx.normalization_volume_pct:g}% of {rx.target}")
    factor = rx.dose_gy / coverage
    return FluenceResult(
        weights=weights * factor,
        dose_gy=(dose * np.float32(factor)).astype(np.float32),
        normalization_factor=float(factor),
        iterations=iterations,
        objective_history=tuple(history),
        time_s=time.perf_counter() - start,
        solver=solver,
        device=used_device,
        message=message,
    )


def _rows_with_entries(dij: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """The rows of ``dij`` that hold entries, then one empty row (on the same data and indices);
    and for every voxel its row there, the empty one (dose 0) for voxels no bixel reaches."""
    reached = np.flatnonzero(np.diff(dij.indptr))
    indptr = np.concatenate([dij.indptr[reached], [dij.nnz, dij.nnz]]).astype(dij.indptr.dtype)
    rows = sp.csr_matrix((dij.data, dij.indices, indptr), shape=(reached.size + 1, dij.shape[1]))
    row_of_voxel = np.full(dij.shape[0], reached.size, dtype=np.int64)
    row_of_voxel[reached] = np.arange(reached.size)
    return rows, row_of_voxel


def _voxel_indices(structures: Mapping[str, np.ndarray], name: str, n_voxels: int) -> np.ndarray:
    if name not in structures:
        raise FluenceOptimizationError(f"the order names {name!r} but no such structure was given; given: {sorted(structures)}")
    mask = np.asarray(structures[name])
    if mask.dtype == bool:
        if mask.size != n_voxels:
            raise FluenceOptimizationError(
                f"mask of {name} has {mask.size} voxels, the dose influence matrix {n_voxels} rows"
            )
        idx = np.flatnonzero(mask.reshape(-1))
    else:
        idx = np.unique(mask.astype(np.int64).reshape(-1))
        if idx.size and (idx[0] < 0 or idx[-1] >= n_voxels):
            raise FluenceOptimizationError(f"voxel indices of {name} fall outside the {n_voxels} rows of the dose influence matrix")
    if idx.size == 0:
        raise FluenceOptimizationError(f"structure {name} holds no voxel of the dose grid")
    return idx


def _solve_scipy(dij, x_ref, terms, rx_gy, roughness, u0, max_iter, ftol):
    """L-BFGS-B on the scaled weights ``u`` (``x = x_ref u``)."""
    products = RowBlockMatrix(dij)  # on every core the engine may use
    numpy_terms = to_device(terms, rx_gy, None)
    quiet = QuietDose(products, quiet_dose_limits(terms, dij.shape[0]))  # rows that cannot count left out

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        value, dose_grad = dose_objective(quiet.dose(x_ref * u).astype(np.float64), numpy_terms)
        grad = x_ref * products.rmatvec(dose_grad)
        if roughness is not None:
            lap, weight = roughness
            r = lap @ u
            value += weight * float(r @ r)
            grad += 2.0 * weight * (lap.T @ r)
        return value, grad

    with blas_threads(1):  # the products run on the engine's threads
        # The start's objective first: a start already at the optimum (a warm start) may end in a
        # failed first line search (scipy >= 1.15 says ABNORMAL) and leave no iterate of its own.
        history: list[float] = [fun(u0)[0]]
        result = scipy.optimize.minimize(
            fun, u0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * u0.size,
            callback=lambda intermediate_result: history.append(float(intermediate_result.fun)),
            options={"maxiter": max_iter, "ftol": ftol, "gtol": 1e-12, "maxcor": LBFGS_MEMORY},
        )
    return result.x, int(result.nit), history, str(result.message)


def _torch_csr(matrix: sp.csr_matrix, device: str):
    import torch

    matrix = sp.csr_matrix(matrix)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
            check_invariants=False,  # scipy's csr already satisfies them; checking costs a pass
        ).to(device)


def _solve_torch(dij, x_ref, terms, rx_gy, roughness, u0, max_iter, ftol, device):
    """Projected L-BFGS in torch on the scaled weights ``u`` (``x = x_ref u``)."""
    import torch

    a = _torch_csr(dij, device)
    a_t = _torch_csr(dij.T.tocsr(), device)
    dev_terms: DeviceTerms = to_device(terms, rx_gy, device)
    lap = lap_t = None
    if roughness is not None:
        lap, lap_t = _torch_csr(roughness[0], device), _torch_csr(roughness[0].T.tocsr(), device)
        lap_weight = roughness[1]

    def fun(u):
        value, dose_grad = dose_objective(a @ (x_ref * u), dev_terms)
        grad = x_ref * (a_t @ dose_grad)
        if lap is not None:
            r = lap @ u
            value += lap_weight * float(r @ r)
            grad = grad + 2.0 * lap_weight * (lap_t @ r)
        return value, grad

    u = torch.as_tensor(u0, dtype=torch.float32, device=device)
    f, g = fun(u)
    memory: list = []
    history: list[float] = [f]  # the start's objective first, as the scipy solver's
    message = f"reached max_iter = {max_iter}"
    iterations = 0
    for iterations in range(1, max_iter + 1):
        free = ~((u <= 0) & (g > 0))
        g_free = torch.where(free, g, torch.zeros_like(g))
        direction = -_two_loop(g_free, memory, u) * free
        slope = float(direction @ g_free)
        if slope >= 0:  # not a descent direction on the free bixels: restart from steepest descent
            memory.clear()
            direction = -_two_loop(g_free, memory, u)
            slope = float(direction @ g_free)
        step = 1.0
        while True:
            u_new = torch.clamp(u + step * direction, min=0.0)
            f_new, g_new = fun(u_new)
            if f_new <= f + _ARMIJO * float(g @ (u_new - u)) or step < 1e-12:
                break
            step *= 0.5
        s, y = u_new - u, g_new - g
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):
            memory.append((s, y, 1.0 / sy))
            del memory[:-LBFGS_MEMORY]
        decrease = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        u, f, g = u_new, f_new, g_new
        history.append(f)
        if step < 1e-12:
            message = "line search found no decrease"
            break
        if decrease <= ftol:
            message = f"relative reduction of f <= ftol = {ftol:g}"
            break
    return u.double().cpu().numpy(), iterations, history, message


def _two_loop(g, memory, x):
    """L-BFGS inverse-Hessian product ``H g``; without memory, a step of 10 % of ``|x|``."""
    if not memory:
        return g * (0.1 * float(x.norm()) / max(float(g.norm()), 1e-30))
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(memory):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    s, y, _ = memory[-1]
    r = q * (float(s @ y) / float(y @ y))
    for (s, y, rho), alpha in zip(memory, reversed(alphas)):
        beta = rho * float(y @ r)
        r += (alpha - beta) * s
    return r
