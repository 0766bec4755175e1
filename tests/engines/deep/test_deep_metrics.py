"""Metrics against SimpleITK's independent filters, on real masks from the TotalSegmentator example."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from rtgrid.engines.segmentation.metrics import compare_label_maps, compare_masks


@pytest.fixture(scope="module")
def liver_pair(totalseg_dir):
    image = sitk.ReadImage(str(totalseg_dir / "example_seg_dicom.nii.gz"))
    labels = sitk.GetArrayFromImage(image)
    # One empty slice above and below, so both implementations see the organ's caps as surface.
    reference = np.pad(labels == 5, ((1, 1), (0, 0), (0, 0)))
    test = ndimage.binary_erosion(np.roll(reference, (0, 4, -3), axis=(0, 1, 2)), iterations=1)
    return reference, test, image.GetSpacing()


def _sitk(mask, spacing):
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing)
    return image


def _sitk_surface_distances(from_mask, to_mask, spacing):
    """Reference: ITK face-connected label contours and an exact (Maurer) distance map."""
    from_surface = sitk.GetArrayFromImage(sitk.LabelContour(_sitk(from_mask, spacing), fullyConnected=False)).astype(bool)
    to_contour = sitk.LabelContour(_sitk(to_mask, spacing), fullyConnected=False) > 0
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(to_contour, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    return sitk.GetArrayFromImage(distance)[from_surface]


def test_overlap_and_distances_match_simpleitk(liver_pair):
    reference, test, spacing = liver_pair
    ours = compare_masks(reference, test, spacing, "liver")
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(_sitk(reference, spacing), _sitk(test, spacing))
    assert ours.dsc == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-12)
    assert ours.ji == pytest.approx(overlap.GetJaccardCoefficient(), abs=1e-12)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_sitk(reference, spacing), _sitk(test, spacing))
    assert ours.hd_mm == pytest.approx(hausdorff.GetHausdorffDistance(), abs=1e-4)
    d_ref = _sitk_surface_distances(reference, test, spacing)
    d_test = _sitk_surface_distances(test, reference, spacing)
    assert ours.asd_mm == pytest.approx((d_ref.sum() + d_test.sum()) / (d_ref.size + d_test.size), abs=1e-4)
    assert ours.hd95_mm == pytest.approx(max(np.percentile(d_ref, 95), np.percentile(d_test, 95)), abs=1e-4)
    assert 0.8 < ours.dsc < 0.95 and ours.hd_mm > ours.hd95_mm > ours.asd_mm > 0


def test_analytic_shifted_box():
    """Two 10x10x10-voxel boxes, one shifted by 2 voxels along i, spacing (0.5, 1, 2) mm."""
    reference = np.zeros((20, 20, 20), bool)
    reference[5:15, 5:15, 5:15] = True
    test = np.roll(reference, 2, axis=2)
    metrics = compare_masks(reference, test, (0.5, 1.0, 2.0))
    assert metrics.dsc == pytest.approx(0.8)
    assert metrics.ji == pytest.approx(8 / 12)
    assert metrics.hd_mm == pytest.approx(1.0)  # 2 voxels x 0.5 mm
    assert metrics.reference_volume_ml == pytest.approx(1000 * 1.0 / 1000)


def test_empty_masks_and_json():
    empty = np.zeros((4, 8, 8), bool)
    full = empty.copy()
    full[1:3, 2:6, 2:6] = True
    reference = full.astype(np.uint8)
    case = compare_label_maps(reference, np.zeros_like(reference), (1, 1, 1), {1: "organ", 2: "absent"}, "c1")
    organ, absent = case.structures
    assert organ.dsc == 0 and math.isinf(organ.hd_mm)
    assert absent.dsc == 1 and absent.hd_mm == 0
    data = json.loads(case.to_json())
    assert data["structures"][0]["hd_mm"] is None
    assert data["mean"]["dsc"] == 0.0  # only structures present in the reference count
