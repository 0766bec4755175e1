"""Classical auto-contouring: quality on the phantom and a real CT, and exact sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.phantom import make_phantom
from rtgrid.engines.segmentation.classical import (
    HALO_SLICES,
    STRUCTURE_NAMES,
    SlabPlanError,
    contour_slab,
    contour_volume,
    merge_slabs,
    plan_slabs,
)

PHANTOM_SHAPE = (48, 192, 192)
PHANTOM_SPACING_MM = (2.0, 2.0, 4.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def sharded(volume: Volume, n_parts: int) -> dict[str, np.ndarray]:
    results = [
        contour_slab(volume.voxels[s.halo_start : s.halo_stop], volume.spacing_mm, volume.direction, s)
        for s in plan_slabs(volume.shape[0], n_parts)
    ]
    return merge_slabs(results, volume)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PHANTOM_SHAPE, PHANTOM_SPACING_MM, seed=3)


@pytest.fixture(scope="module")
def phantom_masks(phantom):
    return contour_volume(phantom.ct)


@pytest.fixture(scope="module")
def real_ct(totalseg_dir):
    return load_series_dir(totalseg_dir / "ct_dicom").volume


@pytest.fixture(scope="module")
def real_masks(real_ct):
    return contour_volume(real_ct)


@pytest.fixture(scope="module")
def real_reference(totalseg_dir, real_ct):
    """TotalSegmentator labels, moved onto the DICOM grid after checking both grids coincide."""
    image = sitk.ReadImage(str(totalseg_dir / "example_seg_dicom.nii.gz"))
    labels = sitk.GetArrayFromImage(image)  # (k, j, i) of the NIfTI grid
    names = {int(k): v for k, v in json.loads((totalseg_dir / "labels_total_v2.json").read_text()).items()}
    return on_grid(labels, image, real_ct), names


def on_grid(array: np.ndarray, image: sitk.Image, volume: Volume) -> np.ndarray:
    """Reorder ``array`` (on ``image``'s grid) onto ``volume``'s grid; fail unless voxel centres coincide."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    # volume index = A @ image index + b; on the same grid A is a signed permutation, b integral.
    a = (volume.direction.T @ direction @ np.diag(spacing)) / volume.spacing_mm[:, None]
    b = volume.lps_to_index(origin)
    assert np.allclose(a, np.round(a), atol=1e-4) and np.allclose(b, np.round(b), atol=1e-3)
    a, b = np.round(a).astype(int), np.round(b).astype(int)
    assert sorted(np.abs(a).sum(axis=0).tolist()) == [1, 1, 1]
    out = np.zeros(volume.shape, dtype=array.dtype)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in image.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    target = ijk @ a.T + b
    assert target.min() >= 0 and np.all(target.max(axis=0) < np.array(volume.shape[::-1]))
    out[target[:, 2], target[:, 1], target[:, 0]] = array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    assert out.size == array.size
    return out


@settings(max_examples=60, deadline=None)
@given(nz=st.integers(1, 300), n_parts=st.integers(1, 40), halo=st.integers(0, 5))
def test_plan_slabs_tiles_the_volume(nz: int, n_parts: int, halo: int) -> None:
    slabs = plan_slabs(nz, n_parts, halo)
    assert len(slabs) == min(nz, n_parts)
    assert slabs[0].z_start == 0 and slabs[-1].z_stop == nz
    for before, after in zip(slabs, slabs[1:]):
        assert before.z_stop == after.z_start
    for slab in slabs:
        assert slab.z_start < slab.z_stop
        assert slab.halo_start == max(0, slab.z_start - halo) and slab.halo_stop == min(nz, slab.z_stop + halo)


def test_plan_slabs_rejects_nonsense() -> None:
    with pytest.raises(SlabPlanError):
        plan_slabs(0, 2)
    with pytest.raises(SlabPlanError):
        plan_slabs(10, 0)


def test_phantom_quality(phantom, phantom_masks) -> None:
    scores = {name: dice(phantom_masks[name], phantom.labels[name]) for name in STRUCTURE_NAMES}
    for name in ("BODY", "Lung_L", "Lung_R"):
        assert scores[name] >= 0.97, scores
    assert scores["Bones"] >= 0.9, scores
    assert scores["AirCavity"] >= 0.8, scores
    assert not (phantom_masks["BODY"] & phantom.labels["Couch"]).any()


def test_laterality_follows_direction_not_array_index(phantom, phantom_masks) -> None:
    """The same patient stored with the columns reversed (direction x = -1) keeps its left lung."""
    ct = phantom.ct
    nx = ct.shape[2]
    flip = np.diag([-1.0, 1.0, 1.0])
    origin = ct.index_to_lps(np.array([nx - 1, 0, 0]))
    mirrored = Volume(np.ascontiguousarray(ct.voxels[:, :, ::-1]), origin, ct.spacing_mm, ct.direction @ flip)
    masks = contour_volume(mirrored)
    for name in ("Lung_L", "Lung_R"):
        assert np.array_equal(masks[name][:, :, ::-1], phantom_masks[name]), name
    # And the left lung is on the patient's left: larger LPS x than the right lung.
    x_of = lambda m: phantom.ct.index_to_lps(np.array([np.nonzero(m)[2].mean(), 0, 0]))[0]  # noqa: E731
    assert x_of(phantom_masks["Lung_L"]) > x_of(phantom_masks["Lung_R"])


@pytest.mark.parametrize("n_parts", [2, 3, 7, PHANTOM_SHAPE[0]])
def test_sharded_equals_unsharded_on_phantom(phantom, phantom_masks, n_parts: int) -> None:
    masks = sharded(phantom.ct, n_parts)
    for name in STRUCTURE_NAMES:
        assert np.array_equal(masks[name], phantom_masks[name]), (name, n_parts)


@pytest.mark.parametrize("n_parts", [2, 3, 20])
def test_sharded_equals_unsharded_on_real_ct(real_ct, real_masks, n_parts: int) -> None:
    masks = sharded(real_ct, n_parts)
    for name in STRUCTURE_NAMES:
        assert np.array_equal(masks[name], real_masks[name]), (name, n_parts)


def test_real_ct_against_totalsegmentator(real_masks, real_reference) -> None:
    labels, names = real_reference
    lobes = np.isin(labels, [k for k, v in names.items() if v.startswith("lung_")])
    bone_ids = [
        k for k, v in names.items()
        if v.startswith(("vertebrae_", "rib_", "humerus", "scapula", "clavicula", "femur", "hip_"))
        or v in ("sacrum", "skull", "sternum")
    ]
    bones = np.isin(labels, bone_ids)
    # This 20-slice series lies below the lungs (T11-T12): the reference has no lobes, so neither may we.
    lungs = real_masks["Lung_L"] | real_masks["Lung_R"]
    assert not lobes.any()
    assert np.count_nonzero(lungs) == 0
    bone_dice = dice(real_masks["Bones"], bones)
    assert bone_dice >= 0.70, bone_dice
    # Every labelled organ lies inside BODY, and BODY keeps the arms (humeri) that lie apart.
    assert np.count_nonzero((labels > 0) & ~real_masks["BODY"]) == 0
    humeri = np.isin(labels, [k for k, v in names.items() if v.startswith("humerus")])
    assert humeri.any() and np.all(real_masks["BODY"][humeri])


def test_contour_slab_rejects_a_wrong_piece(phantom) -> None:
    slab = plan_slabs(PHANTOM_SHAPE[0], 4)[1]
    wrong = phantom.ct.voxels[slab.z_start : slab.z_stop + HALO_SLICES + 1]
    with pytest.raises(SlabPlanError, match="slab 1"):
        contour_slab(wrong, phantom.ct.spacing_mm, phantom.ct.direction, slab)


def test_merge_rejects_missing_slabs(phantom) -> None:
    ct = phantom.ct
    slabs = plan_slabs(ct.shape[0], 3)
    results = [contour_slab(ct.voxels[s.halo_start : s.halo_stop], ct.spacing_mm, ct.direction, s) for s in slabs]
    with pytest.raises(SlabPlanError, match="missing"):
        merge_slabs([results[0], results[2]], ct)
