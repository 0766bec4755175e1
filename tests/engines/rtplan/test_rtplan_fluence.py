"""Fluence maps of RT Plans: analytic apertures and sweeps, brute-force time sampling, and a
commercial planning system's sliding-window plan."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from rtgrid.engines.dicomrt.rtplan import (
    ControlPoint,
    PlanBeam,
    RtPlanError,
    beam_fluence_map,
    plan_fluence_maps,
    read_rtplan,
    step_and_shoot_control_points,
)
from rtgrid.engines.dose.machine import load_machine

BOUNDARIES = load_machine().leaf_boundaries_mm  # 60 pairs: 10 mm outside, 5 mm within +-100 mm
N_PAIRS = len(BOUNDARIES) - 1


def aperture(half_x: tuple[float, float], half_y: tuple[float, float]) -> np.ndarray:
    """Leaves open to [x1, x2] on the pairs inside [y1, y2], closed at x = 0 elsewhere."""
    b = np.asarray(BOUNDARIES)
    centres = 0.5 * (b[:-1] + b[1:])
    inside = (centres > half_y[0]) & (centres < half_y[1])
    return np.stack([np.where(inside, half_x[0], 0.0), np.where(inside, half_x[1], 0.0)])


def instantaneous_open(cp_a: ControlPoint, cp_b: ControlPoint, t: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The open aperture at fraction t between two control points, on pixel centres (reference)."""
    leaves = (1 - t) * cp_a.leaf_positions_mm + t * cp_b.leaf_positions_mm
    jx = (1 - t) * np.array(cp_a.jaw_x_mm) + t * np.array(cp_b.jaw_x_mm)
    jy = (1 - t) * np.array(cp_a.jaw_y_mm) + t * np.array(cp_b.jaw_y_mm)
    pair = np.clip(np.searchsorted(BOUNDARIES, y, side="right") - 1, 0, N_PAIRS - 1)
    lo = np.maximum(leaves[0, pair], jx[0])[:, None]
    hi = np.minimum(leaves[1, pair], jx[1])[:, None]
    return (x[None, :] > lo) & (x[None, :] < hi) & (y[:, None] > jy[0]) & (y[:, None] < jy[1])


def test_static_10x10_aperture_is_one_inside_zero_outside_with_edges_at_the_right_mm() -> None:
    leaves = aperture((-50.0, 50.0), (-50.0, 50.0))
    points = tuple(ControlPoint(leaves, (-50.0, 50.0), (-50.0, 50.0), w) for w in (0.0, 1.0))
    for resolution in (1.0, 0.5):
        fluence = beam_fluence_map(PlanBeam("10x10", 1, 0, 0, 0, (0, 0, 0), points, 100.0), BOUNDARIES, resolution)
        relative = fluence.fluence_mu / 100.0
        inside = (np.abs(fluence.x_mm) < 50)[None, :] & (np.abs(fluence.y_mm) < 50)[:, None]
        assert np.all(relative[inside] == 1.0) and np.all(relative[~inside] == 0.0)
        assert fluence.x_mm[0] == -50 + resolution / 2 and fluence.x_mm[-1] == 50 - resolution / 2
        # Open area = 100 cm2 exactly: the pixel edges fall on the field edges.
        assert relative.sum() * resolution**2 == pytest.approx(10_000.0)


def test_jaws_inside_the_leaves_and_leaves_inside_the_jaws_both_collimate() -> None:
    leaves = aperture((-30.0, 70.0), (-20.0, 80.0))  # leaf pairs on 5 / 10 mm boundaries
    points = tuple(ControlPoint(leaves, (-40.0, 45.0), (-35.0, 60.0), w) for w in (0.0, 1.0))
    fluence = beam_fluence_map(PlanBeam("off-axis", 1, 0, 0, 0, (0, 0, 0), points, 1.0), BOUNDARIES, 1.0)
    x_open = (fluence.x_mm > -30) & (fluence.x_mm < 45)
    y_open = (fluence.y_mm > -20) & (fluence.y_mm < 60)
    np.testing.assert_array_equal(fluence.fluence_mu, (y_open[:, None] & x_open[None, :]).astype(float))


def test_sliding_window_sweep_matches_the_analytic_ramp_and_plateau() -> None:
    # One 20 mm gap sweeps from x in [-50, -30] to [50, 70] over the whole meterset.
    start = np.stack([np.full(N_PAIRS, -50.0), np.full(N_PAIRS, -30.0)])
    points = (ControlPoint(start, (-60.0, 80.0), (-10.0, 10.0), 0.0),
              ControlPoint(start + 100.0, (-60.0, 80.0), (-10.0, 10.0), 1.0))
    fluence = beam_fluence_map(PlanBeam("sweep", 1, 0, 0, 0, (0, 0, 0), points, 50.0), BOUNDARIES, 0.5)
    x = fluence.x_mm
    # A point is open from when X2 passes it until X1 does: t in [(x + 30) / 100, (x + 50) / 100].
    expected = np.clip(np.minimum((x + 50) / 100, 1) - np.maximum((x + 30) / 100, 0), 0, None)
    rows = np.abs(fluence.y_mm) < 10
    np.testing.assert_allclose(fluence.fluence_mu[rows] / 50.0, np.broadcast_to(expected, (rows.sum(), x.size)),
                               atol=1e-12)
    assert np.all(fluence.fluence_mu[~rows] == 0)
    plateau = (x > -30) & (x < 50)
    np.testing.assert_allclose(fluence.fluence_mu[rows][:, plateau], 50.0 * 0.2, atol=1e-12)


def test_moving_leaves_and_jaws_match_fine_time_sampling() -> None:
    rng = np.random.default_rng(11)
    points = []
    for w in (0.0, 0.3, 0.3, 0.75, 1.0):
        x1 = rng.uniform(-60, 10, N_PAIRS)
        points.append(ControlPoint(np.stack([x1, x1 + rng.uniform(0, 50, N_PAIRS)]),
                                   (rng.uniform(-70, -40), rng.uniform(30, 60)),
                                   (rng.uniform(-50, -30), rng.uniform(20, 40)), w))
    beam = PlanBeam("random", 1, 0, 0, 0, (0, 0, 0), tuple(points), 80.0, "DYNAMIC")
    fluence = beam_fluence_map(beam, BOUNDARIES, 1.0)
    reference = np.zeros_like(fluence.fluence_mu)
    steps = 2000
    for a, b in zip(points[:-1], points[1:]):
        for t in (np.arange(steps) + 0.5) / steps:  # midpoint rule in meterset
            reference += (b.cumulative_weight - a.cumulative_weight) / steps * instantaneous_open(
                a, b, t, fluence.x_mm, fluence.y_mm)
    # Midpoint sampling errs by at most one step per edge crossing.
    assert np.abs(fluence.fluence_mu / 80.0 - reference).max() < 3.0 / steps
    assert fluence.fluence_mu.max() > 0.3 * 80.0


def test_step_and_shoot_fluence_is_the_mu_weighted_sum_of_its_apertures() -> None:
    apertures = [aperture((-40.0, 40.0), (-40.0, 40.0)), aperture((-20.0, 35.0), (-25.0, 15.0)),
                 aperture((5.0, 30.0), (-40.0, -10.0))]
    jaws_x, jaws_y, mus = [(-40.0, 40.0)] * 3, [(-40.0, 40.0)] * 3, [30.0, 12.5, 7.5]
    points, meterset = step_and_shoot_control_points(apertures, jaws_x, jaws_y, mus)
    fluence = beam_fluence_map(PlanBeam("sns", 1, 0, 0, 0, (0, 0, 0), points, meterset, "DYNAMIC"), BOUNDARIES)
    reference = sum(mu * instantaneous_open(ControlPoint(ap, jx, jy, 0), ControlPoint(ap, jx, jy, 1), 0.0,
                                            fluence.x_mm, fluence.y_mm)
                    for ap, jx, jy, mu in zip(apertures, jaws_x, jaws_y, mus))
    np.testing.assert_allclose(fluence.fluence_mu, reference, atol=1e-12)
    assert meterset == 50.0 and fluence.fluence_mu.max() == 50.0


def test_a_non_positive_resolution_is_refused() -> None:
    leaves = aperture((-5.0, 5.0), (-5.0, 5.0))
    points = tuple(ControlPoint(leaves, (-5.0, 5.0), (-5.0, 5.0), w) for w in (0.0, 1.0))
    with pytest.raises(RtPlanError, match="resolution_mm"):
        beam_fluence_map(PlanBeam("b", 1, 0, 0, 0, (0, 0, 0), points, 1.0), BOUNDARIES, 0.0)


def open_area_mm2(cp: ControlPoint) -> float:
    """Area of the aperture at a control point: leaf gaps clipped by the jaws, times pair widths."""
    b = np.asarray(BOUNDARIES)
    widths = np.clip(np.minimum(b[1:], cp.jaw_y_mm[1]) - np.maximum(b[:-1], cp.jaw_y_mm[0]), 0, None)
    gaps = np.clip(np.minimum(cp.leaf_positions_mm[1], cp.jaw_x_mm[1])
                   - np.maximum(cp.leaf_positions_mm[0], cp.jaw_x_mm[0]), 0, None)
    return float((gaps * widths).sum())


@pytest.fixture(scope="module")
def commercial(dicompyler_dir) -> pydicom.Dataset:
    return pydicom.dcmread(dicompyler_dir / "rtplan.dcm")


def test_commercial_dynamic_plan_fluence_is_consistent_with_its_meterset(commercial, tmp_path) -> None:
    plan = read_rtplan(commercial)
    maps = plan_fluence_maps(commercial, resolution_mm=1.0)
    assert list(maps) == ["3 RAO", "4 AP", "5 LAO", "6 LPO"]
    tiles = []
    for beam in plan.beams:
        fluence = maps[beam.name]
        f = fluence.fluence_mu
        assert fluence.meterset_mu == beam.meterset_mu
        assert f.min() >= 0 and 0.5 * beam.meterset_mu < f.max() <= beam.meterset_mu + 1e-9
        # Zero outside the (static) jaws; in beams "4 AP" and "6 LPO" open X1 leaves reach beyond jaw X1.
        (jx1, jx2), (jy1, jy2) = beam.control_points[0].jaw_x_mm, beam.control_points[0].jaw_y_mm
        beyond = sum(int(np.sum((cp.leaf_positions_mm[1] > cp.leaf_positions_mm[0]) & (cp.leaf_positions_mm[0] < jx1)))
                     for cp in beam.control_points)
        assert (beyond > 50) == (beam.name in ("4 AP", "6 LPO"))
        wide = beam_fluence_map(beam, plan.leaf_boundaries_mm, 1.0, extent_mm=(jx1 - 20, jx2 + 20, jy1 - 20, jy2 + 20))
        outside = (((wide.x_mm < jx1) | (wide.x_mm > jx2))[None, :]
                   | ((wide.y_mm < jy1) | (wide.y_mm > jy2))[:, None])
        assert outside.sum() > 0.3 * outside.size and np.all(wide.fluence_mu[outside] == 0)
        # Same pixel lattice: the default map is the wide map's block over the jaw opening.
        cols, rows = np.searchsorted(wide.x_mm, fluence.x_mm), np.searchsorted(wide.y_mm, fluence.y_mm)
        np.testing.assert_array_equal(wide.x_mm[cols], fluence.x_mm)
        np.testing.assert_array_equal(wide.fluence_mu[np.ix_(rows, cols)], f)
        # Integral of fluence = MU x meterset-weighted mean open area (trapezoid over control points).
        weights = np.array([cp.cumulative_weight for cp in beam.control_points])
        areas = np.array([open_area_mm2(cp) for cp in beam.control_points])
        expected = beam.meterset_mu * np.sum(np.diff(weights) * 0.5 * (areas[1:] + areas[:-1]))
        assert f.sum() * fluence.resolution_mm**2 == pytest.approx(expected, rel=0.005)
        tiles.append(np.pad(f / f.max(), 4))
    # A sanity picture, beam's eye view with +Y_b up, for a human look.
    height = max(t.shape[0] for t in tiles)
    canvas = np.hstack([np.pad(t, ((0, height - t.shape[0]), (0, 0))) for t in tiles])
    path = tmp_path / "commercial_fluence.png"
    Image.fromarray((255 * canvas[::-1]).astype(np.uint8)).resize((canvas.shape[1] * 3, height * 3)).save(path)
    assert path.stat().st_size > 1000
