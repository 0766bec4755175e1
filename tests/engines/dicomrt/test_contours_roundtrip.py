"""Mask <-> planar contour conversion: exact round trips, holes, and analytic rasterization."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rtgrid.engines.dicomrt.contours import (
    Contour,
    ContourGeometryError,
    contours_to_mask,
    mask_to_contours,
)
from rtgrid.engines.imaging.volume import Volume


def grid(shape, direction=np.eye(3), spacing=(0.8, 1.1, 2.5), origin=(-30.0, 12.0, 7.0)) -> Volume:
    return Volume(np.zeros(shape, dtype=np.int16), origin, spacing, direction)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([1.0, -1.0, 1.0]), np.diag([-1.0, 1.0, -1.0])])
def test_random_masks_round_trip_exactly(direction) -> None:
    rng = np.random.default_rng(7)
    volume = grid((5, 40, 50), direction)
    for mask in (rng.random(volume.shape) > 0.5, ndimage.gaussian_filter(rng.random(volume.shape), 2) > 0.5):
        assert np.array_equal(contours_to_mask(mask_to_contours(mask, volume), volume), mask)


def test_annulus_keeps_its_hole() -> None:
    volume = grid((3, 41, 41))
    jj, ii = np.mgrid[:41, :41]
    r2 = (ii - 20) ** 2 + (jj - 20) ** 2
    annulus = np.zeros(volume.shape, dtype=bool)
    annulus[1] = (r2 <= 15**2) & (r2 > 7**2)
    # An island inside the hole: even-odd fills it again.
    annulus[1] |= r2 <= 2**2
    contours = mask_to_contours(annulus, volume)
    assert [c.z_index for c in contours] == [1, 1, 1]
    back = contours_to_mask(contours, volume)
    assert np.array_equal(back, annulus)
    assert not back[1, 20, 26] and back[1, 20, 20]


def test_contour_lies_half_a_voxel_around_a_single_voxel() -> None:
    volume = grid((2, 9, 9), np.diag([1.0, -1.0, 1.0]))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1, 3, 5] = True
    (contour,) = mask_to_contours(mask, volume)
    centre = volume.index_to_lps(np.array([5.0, 3.0, 1.0]))
    assert np.allclose(contour.points_mm.mean(axis=0), centre)
    offsets = np.abs(contour.points_mm - centre)
    assert np.allclose(np.sort(offsets[:, :2].max(axis=1)), np.sort([0.4, 0.4, 0.55, 0.55]))
    assert np.allclose(contour.points_mm[:, 2], centre[2])


def test_square_polygon_marks_pixel_centres_inside() -> None:
    """A square from i = 1.5 to 6.5 and j = 2.2 to 4.9 covers columns 2..6 and rows 3..4."""
    volume = grid((1, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    square = np.array([[1.5, 2.2, 0], [6.5, 2.2, 0], [6.5, 4.9, 0], [1.5, 4.9, 0]], dtype=float)
    mask = contours_to_mask([Contour(square, 0)], volume)
    expected = np.zeros((1, 10, 10), dtype=bool)
    expected[0, 3:5, 2:7] = True
    assert np.array_equal(mask, expected)
    # The same square twice cancels under even-odd.
    assert not contours_to_mask([Contour(square, 0), Contour(square[::-1], 0)], volume).any()


def test_errors_name_the_problem() -> None:
    volume = grid((2, 5, 5))
    with pytest.raises(ContourGeometryError, match="z_index 4"):
        contours_to_mask([Contour(np.zeros((3, 3)), 4)], volume)
    with pytest.raises(ContourGeometryError, match="2 vertices"):
        contours_to_mask([Contour(np.zeros((2, 3)), 0)], volume)
    with pytest.raises(ContourGeometryError, match="does not match"):
        mask_to_contours(np.zeros((1, 5, 5), dtype=bool), volume)
