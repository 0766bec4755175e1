"""B-spline after the rigid step, and contours drawn on the MR carried onto the CT (rigid and deformable)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, read_rtstruct, write_rtstruct
from rtgrid.engines.registration import (
    DeformableSettings,
    RegistrationError,
    map_points_to_fixed,
    map_structures_to_fixed,
    register_deformable,
    register_rigid,
)
from rtgrid.engines.registration.contours import StructureFrameError
from rtgrid.engines.registration.deformable import _affine, bspline_transform, resample_deformed
from rtgrid.engines.registration.rigid import RigidResult
from tests.engines.registration import synth
from tests.engines.registration.conftest import FAST_RIGID

STRUCTURES = ("Bone_Mandible", "Parotid_L", "Brainstem")


def _body_points(ct) -> np.ndarray:
    k, j, i = np.nonzero(ct.volume.voxels > -400)
    return ct.volume.index_to_lps(np.column_stack([i, j, k]).astype(np.float64))


def test_deformable_stays_near_the_truth_and_its_field_is_the_bspline(ct, mr_pair, mr_deformable) -> None:
    """The pair differs only rigidly, so the B-spline must not pull the anatomy away."""
    mr, true_matrix = mr_pair
    result, seconds = mr_deformable
    fixed_points = _body_points(ct)
    moving_points = synth.apply_matrix(np.linalg.inv(true_matrix), fixed_points)
    errors = np.linalg.norm(map_points_to_fixed(moving_points, result) - fixed_points, axis=1)
    print(
        f"\nMR rigid + B-spline: body-point error mean {errors.mean():.3f} mm, p95 {np.percentile(errors, 95):.3f} mm, "
        f"max {errors.max():.3f} mm; B-spline {seconds:.1f} s, {result.iterations} iterations; "
        f"|u| max {np.abs(result.field.vectors_mm).max():.2f} mm"
    )
    assert errors.mean() < 1.5 and np.percentile(errors, 95) < 2.5
    # The sampled field reproduces SimpleITK's composite transform (rigid after B-spline).
    composite = sitk.CompositeTransform([_affine(result.rigid.matrix_fixed_to_moving), bspline_transform(result.bspline)])
    sample = fixed_points[:: max(1, len(fixed_points) // 200)]
    exact = np.array([composite.TransformPoint(tuple(float(v) for v in p)) for p in sample])
    np.testing.assert_allclose(result.fixed_to_moving(sample), exact, atol=0.05)
    # moving_to_fixed inverts fixed_to_moving.
    np.testing.assert_allclose(result.moving_to_fixed(result.fixed_to_moving(sample)), sample, atol=0.01)
    registered = resample_deformed(ct.volume, mr.volume, result)
    assert registered.same_grid(ct.volume) and registered.voxels.max() > 0


def test_deformable_refuses_a_rigid_result_of_other_frames(ct, mr_pair, pet_rigid) -> None:
    with pytest.raises(RegistrationError, match="the rigid result connects frames"):
        register_deformable(ct, mr_pair[0], pet_rigid[0], DeformableSettings(max_iterations=1))
    with pytest.raises(RegistrationError, match="grid_spacing_mm 5 must lie in"):
        DeformableSettings(grid_spacing_mm=5)


def _structures_on_mr(patient, ct, mr, true_matrix) -> list[StructureSpec]:
    """The CT's clinical structures redrawn on the MR's grid through the TRUE transform (nearest voxel)."""
    specs = []
    for name in STRUCTURES:
        ct_mask = ct.volume.with_voxels(patient.masks[name].astype(np.float32))
        on_mr = synth.resample_ct_to_moving(ct_mask, mr.volume, true_matrix, default=0.0).voxels > 0.5
        specs.append(StructureSpec(name, on_mr, "ORGAN", (200, 100, 50), "MANUAL"))
    return specs


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _centroid_mm(ct, mask: np.ndarray) -> np.ndarray:
    return ct.volume.index_to_lps(np.array(np.nonzero(mask))[::-1].mean(axis=1))


@pytest.mark.parametrize("kind", ["rigid", "deformable"])
def test_contours_drawn_on_the_mr_land_on_the_ct_anatomy(patient, ct, mr_pair, mr_rigid, mr_deformable, kind) -> None:
    mr, true_matrix = mr_pair
    rtstruct = write_rtstruct(mr, _structures_on_mr(patient, ct, mr, true_matrix), label="MR_CONTOURS")
    result = mr_rigid[0] if kind == "rigid" else mr_deformable[0]
    truth = RigidResult(
        true_matrix, np.zeros(3), np.zeros(3), 0.0, 0, 0.0, False, "truth", 1.0,
        ct.frame_of_reference_uid, mr.frame_of_reference_uid,
    )
    mapped = {spec.name: spec.mask for spec in map_structures_to_fixed(rtstruct, mr, ct, result)}
    ideal = {spec.name: spec.mask for spec in map_structures_to_fixed(rtstruct, mr, ct, truth)}
    for name in STRUCTURES:
        clinical = patient.masks[name]
        dice, dice_truth = _dice(mapped[name], clinical), _dice(ideal[name], clinical)
        shift = np.linalg.norm(_centroid_mm(ct, mapped[name]) - _centroid_mm(ct, ideal[name]))
        print(f"\n{kind} {name}: Dice {dice:.3f} (through the true transform {dice_truth:.3f}), centroid {shift:.2f} mm")
        # Two resamplings on 3-5 mm voxels bound the Dice; the registration must lose little more.
        assert dice > dice_truth - (0.04 if kind == "rigid" else 0.1)
        assert shift < (1.0 if kind == "rigid" else 2.0)
    # The masks are on the CT grid and the existing writer turns them into CT contours.
    ct_rtstruct = write_rtstruct(ct, map_structures_to_fixed(rtstruct, mr, ct, result))
    back = read_rtstruct(ct_rtstruct, ct.volume, frame_of_reference_uid=ct.frame_of_reference_uid)
    for name in STRUCTURES:
        np.testing.assert_array_equal(back[name], mapped[name])


def test_rigid_points_map_exactly(mr_rigid) -> None:
    result = mr_rigid[0]
    points = np.array([[0.0, 0.0, 0.0], [12.5, -40.0, 150.0]])
    expected = points @ result.matrix_moving_to_fixed[:3, :3].T + result.matrix_moving_to_fixed[:3, 3]
    np.testing.assert_array_equal(map_points_to_fixed(points, result), expected)


def test_contours_of_another_frame_are_refused(patient, ct, mr_pair, pet_pair, mr_rigid) -> None:
    mr, true_matrix = mr_pair
    pet = pet_pair[0]
    rtstruct = write_rtstruct(mr, _structures_on_mr(patient, ct, mr, true_matrix)[:1])
    with pytest.raises(StructureFrameError, match="the registration maps frame"):
        map_structures_to_fixed(rtstruct, pet, ct, mr_rigid[0])
    other = dataclasses.replace(mr, frame_of_reference_uid=pet.frame_of_reference_uid)
    foreign = write_rtstruct(other, _structures_on_mr(patient, ct, mr, true_matrix)[:1])
    with pytest.raises(StructureFrameError, match=r"ROI 'Bone_Mandible' is drawn in Frame of Reference"):
        map_structures_to_fixed(foreign, mr, ct, mr_rigid[0])
    with pytest.raises(RegistrationError, match=r"ROI\(s\) \['Heart'\] are not in the structure set"):
        map_structures_to_fixed(rtstruct, mr, ct, mr_rigid[0], names=["Heart"])


def test_deformable_recovers_a_known_local_deformation(patient, ct) -> None:
    """The MR's anatomy is moved rigidly and pushed 6 mm sideways around the left parotid (sigma 25 mm).

    The rigid step cannot follow the push; the B-spline on a CT region around it (+-60 mm, so that
    it runs in seconds) must bring the error at the region's body voxels well under the rigid one's.
    """
    centre = patient.volume.index_to_lps(np.array(np.nonzero(patient.masks["Parotid_L"]))[::-1].mean(axis=1))
    mr, matrix, truth = synth.synthetic_deformed_mr(ct, centre, np.array([6.0, 0.0, 0.0]), 25.0)
    rigid = register_rigid(ct, mr, FAST_RIGID)
    region = synth.crop(ct, centre, 60.0)
    settings = DeformableSettings(
        grid_spacing_mm=40.0, sampling_fraction=0.2, shrink_factors=(1,), smoothing_sigmas_mm=(0.0,), max_iterations=10, threads=2
    )
    result = register_deformable(region, mr, rigid, settings)
    fixed_points = _body_points(region)
    moving_points = synth.apply_matrix(np.linalg.inv(matrix), fixed_points)
    true_fixed = truth(moving_points)
    rigid_errors = np.linalg.norm(rigid.moving_to_fixed(moving_points) - true_fixed, axis=1)
    errors = np.linalg.norm(result.moving_to_fixed(moving_points) - true_fixed, axis=1)
    print(
        f"\nlocal push: rigid mean {rigid_errors.mean():.2f} p95 {np.percentile(rigid_errors, 95):.2f} max {rigid_errors.max():.2f} mm; "
        f"B-spline mean {errors.mean():.2f} p95 {np.percentile(errors, 95):.2f} max {errors.max():.2f} mm ({result.elapsed_s:.1f} s)"
    )
    assert rigid_errors.max() > 4.0  # the push is there and the rigid step cannot follow it
    assert np.percentile(errors, 95) < 0.5 * np.percentile(rigid_errors, 95)
    assert errors.max() < 2.5 and errors.mean() <= rigid_errors.mean()
    # The seeded sampling makes the B-spline repeat exactly.
    again = register_deformable(region, mr, rigid, settings)
    np.testing.assert_array_equal(again.field.vectors_mm, result.field.vectors_mm)


def test_the_time_budget_stops_the_bspline(patient, ct, mr_pair, mr_rigid) -> None:
    centre = patient.volume.index_to_lps(np.array(np.nonzero(patient.masks["Parotid_L"]))[::-1].mean(axis=1))
    region = synth.crop(ct, centre, 60.0)
    settings = DeformableSettings(
        grid_spacing_mm=30.0, sampling_fraction=0.5, shrink_factors=(1,), smoothing_sigmas_mm=(0.0,),
        max_iterations=1000, time_budget_s=0.3, threads=2,
    )
    result = register_deformable(region, mr_pair[0], mr_rigid[0], settings)
    assert result.stopped_by_budget
    assert result.iterations < 1000 and result.elapsed_s < 0.3 + 10.0
