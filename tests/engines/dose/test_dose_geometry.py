"""IEC 61217 -> DICOM LPS (head-first supine) beam geometry and bixel grids, checked analytically."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.dose.beams import (
    Beam,
    BixelGridError,
    PatientPositionError,
    beam_axes,
    default_isocenter,
    equispaced_gantry_angles,
    make_bixel_grid,
    project_to_iso_plane,
)
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.imaging.volume import Volume

ISO = np.array([10.0, -20.0, 30.0])


def test_gantry_0_source_is_anterior_and_beam_runs_to_posterior() -> None:
    axes = beam_axes(Beam(0.0, 0.0, 0.0, ISO))
    # LPS: +y is posterior, so the source above a supine patient sits at -y
    np.testing.assert_allclose(axes.source_mm, ISO + [0.0, -1000.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(axes.beam_dir, [0.0, 1.0, 0.0], atol=1e-12)
    # BEV at collimator 0: X_b towards the patient's left (+x), Y_b towards the gantry (head, +z)
    np.testing.assert_allclose(axes.x_bev, [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(axes.y_bev, [0.0, 0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize(("gantry", "source_dir"), [(90.0, [1, 0, 0]), (180.0, [0, 1, 0]), (270.0, [-1, 0, 0])])
def test_gantry_rotation_moves_the_source_clockwise_seen_from_the_foot(gantry: float, source_dir) -> None:
    axes = beam_axes(Beam(gantry, 0.0, 0.0, ISO))
    # gantry 90 is a left lateral beam for HFS (source at the patient's left, +x in LPS)
    np.testing.assert_allclose(axes.source_mm, ISO + 1000.0 * np.asarray(source_dir, float), atol=1e-9)


@pytest.mark.parametrize(("gantry", "couch", "collimator"), [(30.0, 0.0, 0.0), (45.0, 90.0, 15.0), (300.0, 270.0, 90.0)])
def test_frame_is_orthonormal_right_handed_and_hits_the_isocenter(gantry, couch, collimator) -> None:
    axes = beam_axes(Beam(gantry, couch, collimator, ISO))
    basis = np.stack([axes.x_bev, axes.y_bev, -axes.beam_dir], axis=1)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
    assert np.linalg.det(basis) == pytest.approx(1.0)
    x, y, z = project_to_iso_plane(ISO[None], axes, 1000.0)
    assert (x[0], y[0], z[0]) == pytest.approx((0.0, 0.0, 1000.0), abs=1e-9)


def test_couch_90_turns_a_lateral_beam_into_a_superior_inferior_one() -> None:
    axes = beam_axes(Beam(90.0, 90.0, 0.0, ISO))
    assert abs(axes.beam_dir[2]) == pytest.approx(1.0)


def test_collimator_rotates_the_bev_axes_about_the_beam_axis() -> None:
    a0 = beam_axes(Beam(0.0, 0.0, 0.0, ISO))
    a90 = beam_axes(Beam(0.0, 0.0, 90.0, ISO))
    np.testing.assert_allclose(a90.beam_dir, a0.beam_dir, atol=1e-12)
    np.testing.assert_allclose(a90.x_bev, a0.y_bev, atol=1e-12)  # counter-clockwise seen from the source


def test_other_patient_positions_are_refused() -> None:
    with pytest.raises(PatientPositionError, match="HFP"):
        beam_axes(Beam(0.0, 0.0, 0.0, ISO, patient_position="HFP"))


def _cube_target() -> tuple[Volume, np.ndarray]:
    grid = Volume(np.zeros((20, 20, 20), np.float32), (-28.5, -28.5, -28.5), (3.0, 3.0, 3.0))
    mask = np.zeros(grid.shape, bool)
    mask[5:15, 5:15, 5:15] = True  # voxel centres at -13.5 ... 13.5 mm: a 30 mm cube around 0
    return grid, mask


@pytest.mark.parametrize(("margin", "per_side"), [(0.0, 6), (5.0, 8)])
def test_bixels_cover_the_projected_target_plus_margin(margin: float, per_side: int) -> None:
    grid, mask = _cube_target()
    beam = Beam(0.0, 0.0, 0.0, default_isocenter(mask, grid))
    np.testing.assert_allclose(beam.isocenter_mm, 0.0, atol=1e-9)
    bixels = make_bixel_grid(beam, mask, grid, load_machine(), bixel_mm=5.0, margin_mm=margin)
    # projected front face reaches 15 * 1000 / 986.5 = 15.2 mm: centres +-2.5, 7.5, 12.5 (+17.5 with 5 mm margin)
    assert bixels.n_bixels == per_side**2
    assert np.abs(bixels.positions_mm).max() == pytest.approx(5.0 * per_side / 2 - 2.5)


def test_field_beyond_the_machine_is_refused() -> None:
    grid = Volume(np.zeros((5, 5, 150), np.float32), (-447.0, -6.0, -6.0), (6.0, 3.0, 3.0))
    mask = np.ones(grid.shape, bool)  # 900 mm long target
    with pytest.raises(BixelGridError, match="maximum field"):
        make_bixel_grid(Beam(0.0, 0.0, 0.0, np.zeros(3)), mask, grid, load_machine())


def test_equispaced_gantry_angles() -> None:
    assert equispaced_gantry_angles(9) == [0.0, 40.0, 80.0, 120.0, 160.0, 200.0, 240.0, 280.0, 320.0]
