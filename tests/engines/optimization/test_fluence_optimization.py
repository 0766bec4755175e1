"""Fluence optimization on analytic cases: NNLS reference, hand-computed penalties, a 2-D C-shape."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
import torch

from rtgrid.engines.optimization.dvh import dose_at_volume, evaluate_goals
from rtgrid.engines.optimization.fluence import FluenceOptimizationError, optimize_fluence
from rtgrid.engines.optimization.objectives import (
    PRIORITY_WEIGHTS, build_penalty_terms, dose_objective, smoothness_operator, to_device,
)
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.optimization.quiet_rows import QuietDose, quiet_dose_limits
from rtgrid.engines.optimization.row_blocks import RowBlockMatrix

C_SHAPE_ORDER = """
prescription: {target: PTV, dose_gy: 50, fractions: 25}
constraints:
  - {structure: PTV, type: min_dvh, dose_gy: 50, volume_pct: 95}
  - {structure: Core, type: max_dvh, dose_gy: 10, volume_pct: 10, priority: 1}
  - {structure: Core, type: max_dose, dose_gy: 25}
  - {structure: BODY, type: max_dose, dose_gy: 60, priority: 3}
"""


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These problems are tiny: on a shared 2-core machine, torch's thread pool only adds waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def c_shape_case(n: int = 40, n_beams: int = 7):
    """A 2-D C-shaped target around a core, 1 mm voxels, parallel beamlets 2 mm apart with a
    Gaussian penumbra and exponential depth fall-off: an analytic stand-in for a dose engine."""
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    centre = n / 2
    radius = np.hypot(xx - centre, yy - centre)
    angle = np.arctan2(yy - centre, xx - centre)
    body = radius < centre - 1
    target = (radius > 8) & (radius < 15) & (np.abs(angle) > 0.7)
    core = radius < 5
    columns, grids = [], []
    positions = np.arange(-16.0, 16.01, 2.0)
    for b in range(n_beams):
        theta = 2 * np.pi * b / n_beams
        lateral = -(xx - centre) * np.sin(theta) + (yy - centre) * np.cos(theta)
        depth = (xx - centre) * np.cos(theta) + (yy - centre) * np.sin(theta) + centre
        for p in positions:
            kernel = np.exp(-0.5 * ((lateral - p) / 1.2) ** 2) * np.exp(-0.03 * depth) * body
            kernel[kernel < 1e-3] = 0.0
            columns.append(sp.csc_matrix(kernel.reshape(-1, 1)))
        grids.append((1, len(positions)))
    dij = sp.hstack(columns).tocsr().astype(np.float32)
    return dij, {"PTV": target[None], "Core": core[None], "BODY": body[None]}, grids


@pytest.mark.parametrize("solver", ["lbfgs", "torch"])
def test_uniform_target_objective_is_nonnegative_least_squares(solver):
    # With only the prescription's uniformity term the problem is NNLS: scipy.optimize.nnls is
    # an independent reference. The random matrix makes several unconstrained weights negative.
    rng = np.random.default_rng(11)
    a = rng.random((40, 10)) * (rng.random((40, 10)) < 0.6)
    a[:, 3] *= 4.0
    order = load_order("prescription: {target: T, dose_gy: 2, fractions: 1}", ["T"])
    result = optimize_fluence(sp.csr_matrix(a), {"T": np.arange(40)}, order, solver=solver, max_iter=500)
    expected, _ = scipy.optimize.nnls(a.astype(np.float32).astype(np.float64), np.full(40, 2.0))
    assert np.linalg.lstsq(a, np.full(40, 2.0), rcond=None)[0].min() < 0  # bounds matter here
    assert (result.weights >= 0).all()
    np.testing.assert_allclose(result.weights / result.normalization_factor, expected, atol=2e-3)
    # Normalization: D95 of the target equals the prescription exactly.
    assert dose_at_volume(result.dose_gy.astype(np.float64), 95.0) == pytest.approx(2.0, rel=1e-6)
    assert result.objective_history[-1] <= result.objective_history[0]


@pytest.mark.parametrize("solver", ["lbfgs", "torch"])
def test_voxels_no_bixel_reaches_still_count(solver):
    # The solvers see only the rows that hold entries; voxels of a structure that no bixel reaches
    # still count in its terms, with dose 0. Against NNLS on the whole system (the empty rows do
    # not move its solution) and against the objective of the full dose vector at the start.
    rng = np.random.default_rng(12)
    a = rng.random((44, 10)) * (rng.random((44, 10)) < 0.6)
    a[[17, 41, 43]] = 0.0  # one target voxel (of 40) and two voxels of no structure
    order = load_order("prescription: {target: T, dose_gy: 2, fractions: 1}", ["T"])
    matrix = sp.csr_matrix(a.astype(np.float32))
    target = np.arange(40)
    result = optimize_fluence(matrix, {"T": target}, order, solver=solver, max_iter=500)
    expected, _ = scipy.optimize.nnls(a[target].astype(np.float32).astype(np.float64), np.full(40, 2.0))
    np.testing.assert_allclose(result.weights / result.normalization_factor, expected, atol=2e-3)
    assert result.dose_gy.shape == (44,) and (result.dose_gy[[17, 41, 43]] == 0).all()
    x_ref = 2.0 / float(np.mean(matrix[target] @ np.ones(10, dtype=np.float32)))
    terms = to_device(build_penalty_terms(order, {"T": target}), 2.0, None)
    start, _ = dose_objective((matrix @ np.full(10, x_ref, dtype=np.float32)).astype(np.float64), terms)
    assert result.objective_history[0] == pytest.approx(start, rel=1e-5)


def test_penalties_match_hand_computation():
    order = load_order(
        """
prescription: {target: T, dose_gy: 10, fractions: 5}
constraints:
  - {structure: O, type: max_dvh, dose_gy: 4, volume_pct: 40}
  - {structure: O, type: max_dose, dose_gy: 7, priority: 3}
  - {structure: O, type: max_mean_dose, dose_gy: 3, priority: 4}
  - {structure: T, type: min_dvh, dose_gy: 10, volume_pct: 100, priority: 5}
""",
        ["T", "O"],
    )
    dose = np.array([9.0, 10.0, 12.0, 2.0, 5.0, 6.0, 8.0, 1.0])
    terms = build_penalty_terms(order, {"T": np.array([0, 1, 2]), "O": np.array([3, 4, 5, 6, 7])})
    value, gradient = dose_objective(dose, to_device(terms, 10.0, None))
    value_torch, gradient_torch = dose_objective(torch.from_numpy(dose), to_device(terms, 10.0, "cpu"))
    w = PRIORITY_WEIGHTS
    uniform = ((0.1**2) + 0 + 0.2**2) / 3
    # O doses 2 5 6 8 1: D40% = 2nd hottest = 6; voxels in (4, 6] are 5 and 6.
    dvh = (0.1**2 + 0.2**2) / 5
    max_dose = 0.1**2 / 5  # only 8 Gy exceeds 7 Gy
    mean = (4.4 / 10 - 0.3) ** 2  # mean 4.4 Gy over 3 Gy
    # T D100% = 9 Gy < 10: voxels in [9, 10) are just 9 Gy.
    min_dvh = 0.1**2 / 3
    expected = w[2] * uniform + w[2] * dvh + w[3] * max_dose + w[4] * mean + w[5] * min_dvh
    assert value == pytest.approx(expected, rel=1e-12)
    assert value_torch == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(gradient_torch.numpy(), gradient, rtol=1e-12)
    # Central differences (away from kinks; D(v) held fixed, as the penalty defines it).
    for i in range(dose.size):
        step = np.zeros_like(dose)
        step[i] = 1e-6
        numeric = (dose_objective(dose + step, to_device(terms, 10.0, None))[0]
                   - dose_objective(dose - step, to_device(terms, 10.0, None))[0]) / 2e-6
        assert gradient[i] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_smoothness_operator_pairs_neighbours_only():
    # Beam 1: full 2 x 3 grid (7 edges); beam 2: an L of 3 bixels given by position (2 edges).
    lap = smoothness_operator([(2, 3), np.array([[0, 0], [0, 1], [1, 0]])], 9)
    assert lap.shape == (9, 9)
    x = np.array([1.0, 2.0, 4.0, 0.0, 3.0, 1.0, 5.0, 7.0, 2.0])
    by_hand = (1 + 4 + 9 + 4) + (1 + 1 + 9) + (2**2 + 3**2)
    assert float(np.sum((lap @ x) ** 2)) == by_hand
    with pytest.raises(ValueError, match="hold 9 bixels but the dose influence matrix has 10 columns"):
        smoothness_operator([(2, 3), np.array([[0, 0], [0, 1], [1, 0]])], 10)


def test_c_shape_plan_meets_goals_and_smoothness_smooths():
    dij, structures, grids = c_shape_case()
    order = load_order(C_SHAPE_ORDER, structures)
    free = optimize_fluence(dij, structures, order, solver="lbfgs", max_iter=300)
    smooth = optimize_fluence(dij, structures, order, bixel_grids=grids, solver="lbfgs", max_iter=300, smoothness=1.0)
    lap = smoothness_operator(grids, dij.shape[1])

    def roughness(w):
        return float(np.sum((lap @ w) ** 2) / np.sum(w**2))

    assert roughness(smooth.weights) < 0.5 * roughness(free.weights)
    goals = {g.goal: g for g in evaluate_goals(order, free.dose_gy, structures, 1e-3)}
    assert goals["PTV D95% >= 50 Gy (prescription)"].met
    assert goals["Core Dmax <= 25 Gy"].met
    # The core's DVH objective works: D10 falls well below the prescription's 50 Gy.
    assert goals["Core D10% <= 10 Gy"].achieved_gy < 15.0
    without_core = load_order(C_SHAPE_ORDER.split("  - {structure: Core")[0], structures)
    careless = optimize_fluence(dij, structures, without_core, solver="lbfgs", max_iter=300)
    core_d10 = dose_at_volume(careless.dose_gy[structures["Core"].reshape(-1)].astype(float), 10)
    assert goals["Core D10% <= 10 Gy"].achieved_gy < core_d10 - 5.0


def test_leaving_out_quiet_rows_changes_no_objective_and_no_gradient_bit():
    # The C-shape's body rows far from the target carry only the body's 60 Gy maximum: along an
    # optimization's fluences, the objective of the dose with those rows left out is the same.
    dij, structures, grids = c_shape_case()
    order = load_order(C_SHAPE_ORDER, structures)
    terms = build_penalty_terms(order, {k: np.flatnonzero(v.reshape(-1)) for k, v in structures.items()})
    device_terms = to_device(terms, 50.0, None)
    products = RowBlockMatrix(dij, workers=2, block_nonzeros=3000)
    quiet = QuietDose(products, quiet_dose_limits(terms, dij.shape[0]), groups=7)
    plan = optimize_fluence(dij, structures, order, bixel_grids=grids, max_iter=300)
    steps = np.linspace(0.0, 1.0, 8)[:, None] * (plan.weights - plan.weights.mean())
    for x in plan.weights.mean() + steps:  # from the flat fluence to the plan's, as a line search
        value, gradient = dose_objective(quiet.dose(x).astype(np.float64), device_terms)
        full_value, full_gradient = dose_objective(products.matvec(x).astype(np.float64), device_terms)
        assert value == full_value and np.array_equal(gradient, full_gradient)
    assert max(quiet.left_out) > 0.3, quiet.left_out  # a test that would notice a change in the bound


def test_torch_solver_agrees_with_lbfgs_b():
    """Stated tolerance: objectives within 10 %, PTV D10 and core D10/Dmean within 1.5 Gy (3 % of
    Rx); with DVH terms the objective is not convex, so the bixel weights themselves may differ."""
    dij, structures, grids = c_shape_case()
    order = load_order(C_SHAPE_ORDER, structures)
    runs = {s: optimize_fluence(dij, structures, order, bixel_grids=grids, solver=s, max_iter=400, device="cpu")
            for s in ("lbfgs", "torch")}
    f_scipy, f_torch = (runs[s].objective_history[-1] for s in ("lbfgs", "torch"))
    assert abs(f_torch - f_scipy) <= 0.10 * f_scipy
    for name, v in (("PTV", 10.0), ("Core", 10.0), ("Core", 50.0)):
        idx = structures[name].reshape(-1)
        a, b = (dose_at_volume(runs[s].dose_gy[idx].astype(float), v) for s in ("lbfgs", "torch"))
        assert abs(a - b) <= 1.5, f"{name} D{v:g}: L-BFGS-B {a:.2f} Gy, torch {b:.2f} Gy"
    assert runs["torch"].device == "cpu" and (runs["torch"].weights >= 0).all()


def test_plan_does_not_depend_on_the_dose_engine_units():
    """Regression: with a dose influence in mGy per unit weight (weights of order 1e4, gradients
    of order 1e-7) L-BFGS-B stopped after one iteration on the flat start ("RELATIVE REDUCTION OF
    F <= FACTR*EPSMCH") and returned the flat fluence, core at ~49 Gy. Scaling the matrix by c and
    the weights by 1/c is the same problem: both plans must spare the core, and agree."""
    dij, structures, grids = c_shape_case()
    order = load_order(
        "prescription: {target: PTV, dose_gy: 50, fractions: 25}\n"
        "constraints: [{structure: Core, type: max_dose, dose_gy: 25, priority: 4}]", structures)
    core, ptv = structures["Core"].reshape(-1), structures["PTV"].reshape(-1)
    flat = dij @ np.ones(dij.shape[1], dtype=np.float32)
    flat_core_dmax = flat[core].max() * 50.0 / dose_at_volume(flat[ptv].astype(float), 95.0)
    assert flat_core_dmax > 45.0  # the plan the one-iteration stop returned

    gy = optimize_fluence(dij, structures, order, bixel_grids=grids, max_iter=300)
    mgy = optimize_fluence(dij * np.float32(1e-3), structures, order, bixel_grids=grids, max_iter=300)
    assert mgy.iterations > 50, mgy.message
    assert mgy.dose_gy[core].max() < 32.0
    assert abs(float(mgy.dose_gy[core].max()) - float(gy.dose_gy[core].max())) < 0.5
    np.testing.assert_allclose(mgy.weights * 1e-3, gy.weights, rtol=0, atol=0.02 * gy.weights.max())


def test_bad_inputs_are_named():
    dij, structures, _ = c_shape_case(n=20, n_beams=3)
    order = load_order(C_SHAPE_ORDER, structures)
    with pytest.raises(FluenceOptimizationError, match="solver must be one of"):
        optimize_fluence(dij, structures, order, solver="adam")
    with pytest.raises(FluenceOptimizationError, match="the order names 'Core' but no such structure"):
        optimize_fluence(dij, {k: v for k, v in structures.items() if k != "Core"}, order)
    with pytest.raises(FluenceOptimizationError, match="mask of BODY has 399 voxels, the dose influence matrix 400 rows"):
        optimize_fluence(dij, {**structures, "BODY": np.ones(399, dtype=bool)}, order)
    with pytest.raises(FluenceOptimizationError, match="no bixel of the dose influence matrix reaches the target PTV"):
        optimize_fluence(sp.csr_matrix(dij.shape, dtype=np.float32), structures, order)


@pytest.mark.parametrize("solver", ["lbfgs", "torch"])
def test_a_warm_start_resumes_from_the_solution(solver):
    # Started from its own solution, the optimizer has little left to do: it stops early, with an
    # objective no worse, and the same plan (the normalization is scale-free).
    dij, structures, grids = c_shape_case()
    order = load_order(C_SHAPE_ORDER, structures)
    cold = optimize_fluence(dij, structures, order, bixel_grids=grids, solver=solver, max_iter=300)
    warm = optimize_fluence(dij, structures, order, bixel_grids=grids, solver=solver, max_iter=300,
                            initial_weights=cold.weights / cold.normalization_factor)
    assert warm.iterations < cold.iterations / 2, (warm.iterations, cold.iterations)
    assert warm.objective_history[-1] <= cold.objective_history[-1] * (1 + 1e-3)
    np.testing.assert_allclose(warm.dose_gy, cold.dose_gy, atol=0.02 * 50.0)
    with pytest.raises(FluenceOptimizationError, match="3 initial weights"):
        optimize_fluence(dij, structures, order, initial_weights=np.ones(3))
