"""The digital thorax phantom: anatomy in the right places, realistic HU, exact margins, files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING_MM,
    LABEL_NAMES,
    make_phantom,
    read_ground_truth,
    write_phantom_case,
)

SHAPE = (40, 160, 160)
SPACING_MM = (2.4, 2.4, 4.0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, SPACING_MM, seed=0)


def _centroid_mm(phantom, name):
    kji = np.argwhere(phantom.labels[name]).mean(axis=0)
    return phantom.ct.index_to_lps(kji[::-1])


def test_default_phantom_geometry():
    default = make_phantom()
    assert default.ct.shape == DEFAULT_SHAPE
    np.testing.assert_array_equal(default.ct.spacing_mm, DEFAULT_SPACING_MM)
    np.testing.assert_array_equal(default.ct.direction, np.eye(3))
    assert default.ct.voxels.dtype == np.int16
    assert set(default.labels) == set(LABEL_NAMES)
    assert all(m.dtype == np.bool_ and m.shape == DEFAULT_SHAPE for m in default.labels.values())
    body_centre = _centroid_mm(default, "BODY")
    assert abs(body_centre[0]) < 2.0 and abs(body_centre[1]) < 2.0


def test_same_seed_same_phantom_other_seed_other_noise_only():
    a, b, c = (make_phantom((8, 64, 64), (3.0, 3.0, 5.0), seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.ct.voxels, b.ct.voxels)
    assert not np.array_equal(a.ct.voxels, c.ct.voxels)
    assert all(np.array_equal(a.labels[n], c.labels[n]) for n in LABEL_NAMES)


def test_organs_sit_where_anatomy_puts_them_in_lps(phantom):
    left, right = _centroid_mm(phantom, "Lung_L"), _centroid_mm(phantom, "Lung_R")
    assert left[0] > 30.0 and right[0] < -30.0  # LPS: +x is the patient's left
    heart, cord = _centroid_mm(phantom, "Heart"), _centroid_mm(phantom, "SpinalCord")
    assert heart[0] > 0 and heart[1] < 0  # to the left and anterior
    assert cord[1] > 40.0 and abs(cord[0]) < 1.0  # posterior midline
    gtv = _centroid_mm(phantom, "GTV")
    assert gtv[0] < -30.0  # right lung
    assert _centroid_mm(phantom, "AirCavity")[2] > heart[2]  # trachea above the heart


def test_couch_is_below_the_patient_and_outside_body(phantom):
    body, couch = phantom.labels["BODY"], phantom.labels["Couch"]
    assert not (body & couch).any()
    body_back = phantom.ct.index_to_lps(np.array([0, np.argwhere(body)[:, 1].max(), 0]))[1]
    couch_front = phantom.ct.index_to_lps(np.array([0, np.argwhere(couch)[:, 1].min(), 0]))[1]
    assert 2.0 <= couch_front - body_back <= 10.0  # a few mm posterior of the skin
    couch_hu = phantom.ct.voxels[couch]
    assert -400 < np.percentile(couch_hu, 5) and np.percentile(couch_hu, 95) < 300
    outside = ~body & ~couch
    assert abs(np.median(phantom.ct.voxels[outside]) + 1000) <= 2


def test_tissue_hu_are_realistic(phantom):
    ct, labels = phantom.ct.voxels, phantom.labels
    assert abs(np.median(ct[labels["Lung_L"] | labels["Lung_R"]]) + 820) <= 10
    assert abs(np.median(ct[labels["AirCavity"]]) + 1000) <= 10
    assert abs(np.median(ct[labels["Heart"]]) - 40) <= 15
    bone = ct[labels["Bones"]]
    assert 400 <= np.median(bone) <= 1000 and np.percentile(bone, 95) <= 1050
    assert 5 <= np.std(ct[labels["Heart"]]) <= 20  # mild noise
    soft = ct[labels["BODY"]]
    fat_fraction = np.mean((soft > -130) & (soft < -70))
    assert fat_fraction > 0.05


def test_skin_then_fat_under_the_anterior_surface(phantom):
    column = phantom.ct.voxels[20, :, SHAPE[2] // 2].astype(float)
    body = phantom.labels["BODY"][20, :, SHAPE[2] // 2]
    first = int(np.argmax(body))  # anterior skin: rows run anterior to posterior
    assert column[first] > -40  # skin is soft tissue
    assert np.median(column[first + 2 : first + 6]) < -60  # subcutaneous fat below it


def test_body_holds_the_internal_air_and_is_solid(phantom):
    body = phantom.labels["BODY"]
    for name in ("Lung_L", "Lung_R", "AirCavity", "Heart", "GTV", "SpinalCord"):
        assert not (phantom.labels[name] & ~body).any(), name
    filled = np.stack([ndimage.binary_fill_holes(s) for s in body])
    assert np.array_equal(filled, body)


@pytest.mark.parametrize("coarse", [False, True])
def test_structures_do_not_overlap(phantom, coarse):
    if coarse:
        phantom = make_phantom((8, 48, 48), (4.0, 4.0, 5.0), seed=0)
    names = ["Lung_L", "Lung_R", "Heart", "SpinalCord", "Bones", "AirCavity", "GTV"]
    for i, first in enumerate(names):
        assert phantom.labels[first].any(), first
        for second in names[i + 1 :]:
            assert not (phantom.labels[first] & phantom.labels[second]).any(), (first, second)


def test_gtv_is_inside_the_right_lung(phantom):
    gtv = phantom.labels["GTV"]
    shell = ndimage.binary_dilation(gtv, iterations=1) & ~gtv
    assert phantom.labels["Lung_R"][shell].all()


def test_ptv_is_gtv_plus_5_mm_by_brute_force_distances(phantom):
    gtv, ptv = phantom.labels["GTV"], phantom.labels["PTV"]
    spacing_kji = phantom.ct.spacing_mm[::-1]
    gtv_points = np.argwhere(gtv) * spacing_kji
    lo = np.maximum(np.argwhere(ptv).min(axis=0) - 3, 0)
    hi = np.argwhere(ptv).max(axis=0) + 4
    box = np.argwhere(np.ones(hi - lo, dtype=bool)) + lo
    distance, _ = cKDTree(gtv_points).query(box * spacing_kji)
    expected = distance <= 5.0
    actual = ptv[tuple(box.T)]
    assert np.array_equal(actual, expected & phantom.labels["BODY"][tuple(box.T)])
    assert gtv.sum() < ptv.sum()


def test_write_phantom_case_reads_back(tmp_path):
    shape, spacing = (6, 48, 48), (4.0, 4.0, 5.0)
    case = write_phantom_case(tmp_path, shape=shape, spacing_mm=spacing, seed=3)
    reference = make_phantom(shape, spacing, seed=3)
    series = load_series_dir(case.ct_dir)
    assert np.array_equal(series.volume.voxels, reference.ct.voxels)
    assert series.volume.same_grid(reference.ct, tol_mm=1e-6)
    assert series.patient_id == case.patient_id == "RTGRID-PHANTOM-3"
    assert len(case.ct_files) == 6 and case.ground_truth_path.exists()
    truth = read_ground_truth(case.ground_truth_path)
    assert set(truth) == set(LABEL_NAMES)
    for name, volume in truth.items():
        assert volume.same_grid(series.volume, tol_mm=1e-6)
        assert np.array_equal(volume.voxels, reference.labels[name]), name


def test_too_small_grid_is_refused():
    with pytest.raises(ValueError, match="too small"):
        make_phantom((2, 64, 64), (1.0, 1.0, 1.0))
