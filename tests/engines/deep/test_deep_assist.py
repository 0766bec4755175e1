import numpy as np
import pytest

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.assist import AssistInputError, interpolate_slices, refine_with_model, region_grow
from rtgrid.engines.segmentation.metrics import compare_masks


def _sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    z, y, x = np.indices(shape, dtype=float)
    return ((x - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2 + ((z - centre[2]) * spacing[2]) ** 2 <= radius**2


def test_sphere_drawn_every_fourth_slice_is_completed():
    truth = _sphere((48, 64, 64), (32.2, 31.7, 23.3), 18.0)
    drawn = {z: truth[z] for z in range(0, 48, 4)}
    completed = interpolate_slices(drawn, truth.shape)
    for z, mask in drawn.items():
        assert np.array_equal(completed[z], mask)
    assert compare_masks(truth, completed, (1, 1, 1)).dsc >= 0.95


def test_interpolation_with_anisotropic_pixels_and_errors():
    spacing = (0.5, 1.0, 2.0)
    truth = _sphere((21, 40, 60), (30, 20, 10), 16.0, spacing)
    completed = interpolate_slices({z: truth[z] for z in range(1, 21, 3)}, truth.shape, spacing)
    assert compare_masks(truth[1:20], completed[1:20], spacing).dsc >= 0.95
    with pytest.raises(AssistInputError, match="outside 0..20"):
        interpolate_slices({21: truth[0]}, truth.shape)
    with pytest.raises(AssistInputError, match="no drawn slice"):
        interpolate_slices({}, truth.shape)


def test_region_grow_from_seed_in_lps_with_radius_limit():
    spacing = (0.8, 0.8, 2.5)
    origin = (-30.0, 12.0, 100.0)
    shape = (24, 80, 80)
    ball = _sphere(shape, (40, 40, 12), 15.0, spacing)  # 15 mm radius
    hu = np.full(shape, -50.0, np.float32)
    hu[ball] = 60.0
    hu[:, :, :5] = 60.0  # same HU but not connected to the ball
    ct = Volume(hu, origin, spacing)
    seed_mm = ct.index_to_lps(np.array([40.0, 40.0, 12.0]))
    grown = region_grow(ct, seed_mm, (20, 100), max_radius_mm=50.0)
    assert np.array_equal(grown, ball)
    limited = region_grow(ct, seed_mm, (20, 100), max_radius_mm=8.0)
    assert np.array_equal(limited, ball & _sphere(shape, (40, 40, 12), 8.0, spacing))
    with pytest.raises(AssistInputError, match="-50 HU"):
        region_grow(ct, ct.index_to_lps(np.array([70.0, 70.0, 2.0])), (20, 100), 10.0)
    boxed = region_grow(ct, None, (20, 100), 0.0, box_mm=(ct.index_to_lps(np.array([20.0, 20.0, 2.0])), ct.index_to_lps(np.array([60.0, 60.0, 22.0]))))
    assert np.array_equal(boxed, ball)


def test_refine_keeps_user_core_and_takes_model_border_in_band():
    truth = _sphere((30, 60, 60), (30, 30, 15), 12.0)
    rough = _sphere((30, 60, 60), (31, 30, 15), 9.0)  # drawn too small and off-centre
    predicted = truth.copy()
    predicted[:, :, :3] = True  # a model false positive far away from the user's mask
    refined = refine_with_model(rough, predicted, (1, 1, 1), band_mm=6.0)
    assert compare_masks(truth, refined, (1, 1, 1)).dsc > compare_masks(truth, rough, (1, 1, 1)).dsc
    assert compare_masks(truth, refined, (1, 1, 1)).dsc > 0.97
    assert not refined[:, :, :3].any()
