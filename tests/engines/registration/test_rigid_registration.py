"""Rigid registration recovers a known transform of synthetic MR and PET made from a real CT.

The goal of issue #15: within 1 mm and 0.5 degrees. The distance is measured at every body voxel of
the CT (where the patient is), not only on the parameters.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from rtgrid.engines.registration import (
    EmptyImageError,
    NoOverlapError,
    RegistrationModalityError,
    RigidSettings,
    fused_overlay_png,
    register_rigid,
    resample_to_fixed,
)
from rtgrid.engines.registration.errors import RegistrationError
from rtgrid.engines.registration.rigid import euler_zyx_deg, rigid_matrix
from tests.engines.registration import synth
from tests.engines.registration.conftest import FAST_RIGID

GOAL_MM = 1.0
GOAL_DEG = 0.5


def _report(name: str, ct, true_matrix, timed) -> tuple[np.ndarray, float]:
    result, seconds = timed
    errors = synth.error_at_body_points_mm(ct.volume, true_matrix, result.matrix_moving_to_fixed)
    angle = synth.rotation_error_deg(true_matrix, result.matrix_moving_to_fixed)
    print(
        f"\n{name}: body-point error mean {errors.mean():.3f} mm, p95 {np.percentile(errors, 95):.3f} mm, "
        f"max {errors.max():.3f} mm; rotation error {angle:.3f} deg; {seconds:.1f} s, {result.iterations} iterations; "
        f"metric {result.final_metric:.4f}"
    )
    return errors, angle


def test_mr_is_recovered_within_1_mm_and_half_a_degree(ct, mr_pair, mr_rigid) -> None:
    mr, true_matrix = mr_pair
    errors, angle = _report("MR", ct, true_matrix, mr_rigid)
    assert errors.max() < GOAL_MM
    assert angle < GOAL_DEG
    result = mr_rigid[0]
    assert not result.stopped_by_budget
    assert result.moving_frame_of_reference_uid == mr.frame_of_reference_uid != ct.frame_of_reference_uid
    # The stored angles and translation are those of the matrix, and the true angles are recovered.
    np.testing.assert_allclose(rigid_matrix(result.rotation_deg, result.translation_mm), result.matrix_moving_to_fixed, atol=1e-9)
    np.testing.assert_allclose(result.rotation_deg, synth.MR_ROTATION_DEG, atol=GOAL_DEG)


def test_pet_is_recovered_within_1_mm_and_half_a_degree(ct, pet_pair, pet_rigid) -> None:
    _, true_matrix = pet_pair
    errors, angle = _report("PET", ct, true_matrix, pet_rigid)
    assert errors.max() < GOAL_MM
    assert angle < GOAL_DEG
    np.testing.assert_allclose(pet_rigid[0].rotation_deg, synth.PET_ROTATION_DEG, atol=GOAL_DEG)


def test_the_matrix_maps_moving_to_fixed(ct, mr_pair, mr_rigid) -> None:
    """A point of the MR frame goes to the same anatomy on the CT: the direction is MOVING -> FIXED."""
    _, true_matrix = mr_pair
    result = mr_rigid[0]
    moving_point = np.array([[10.0, -30.0, 120.0]])
    np.testing.assert_allclose(result.moving_to_fixed(moving_point), synth.apply_matrix(true_matrix, moving_point), atol=GOAL_MM)
    np.testing.assert_allclose(result.fixed_to_moving(result.moving_to_fixed(moving_point)), moving_point, atol=1e-9)
    np.testing.assert_allclose(euler_zyx_deg(rigid_matrix((1.0, -2.0, 3.0), (0, 0, 0))[:3, :3]), (1.0, -2.0, 3.0))


def test_a_run_repeats_with_its_seed(ct, mr_pair, mr_rigid) -> None:
    """Same seed, same samples: a second run lands within 0.1 mm at every body voxel.

    Not bitwise: SimpleITK's threads add partial sums in varying order, and over a hundred
    iterations those last-digit differences grow (3 and 23 micrometres seen on two shared cores).
    Another seed samples other voxels.
    """
    mr, _ = mr_pair
    again = register_rigid(ct, mr, FAST_RIGID)
    drift = synth.error_at_body_points_mm(ct.volume, mr_rigid[0].matrix_moving_to_fixed, again.matrix_moving_to_fixed)
    print(f"\nMR rerun: largest body-point difference {drift.max() * 1000:.2f} micrometres")
    assert drift.max() < 0.1
    short = dataclasses.replace(FAST_RIGID, shrink_factors=(4,), smoothing_sigmas_mm=(4.0,), max_iterations=8)
    first = register_rigid(ct, mr, short)
    other_seed = register_rigid(ct, mr, dataclasses.replace(short, seed=short.seed + 1))
    assert np.abs(first.matrix_moving_to_fixed - other_seed.matrix_moving_to_fixed).max() > 1e-6


def test_the_time_budget_stops_the_optimizer(ct, mr_pair) -> None:
    settings = dataclasses.replace(FAST_RIGID, shrink_factors=(2,), smoothing_sigmas_mm=(2.0,), time_budget_s=0.05)
    result = register_rigid(ct, mr_pair[0], settings)
    assert result.stopped_by_budget
    assert result.iterations < 50


def test_wrong_modalities_are_refused(ct, mr_pair) -> None:
    mr = mr_pair[0]
    with pytest.raises(RegistrationModalityError, match=r"fixed series .* is MR; registration aligns to the planning image \(CT\)"):
        register_rigid(mr, mr, FAST_RIGID)
    with pytest.raises(RegistrationModalityError, match=r"moving series .* is CT; only MR and PT series"):
        register_rigid(ct, ct, FAST_RIGID)
    with pytest.raises(RegistrationModalityError, match=r"moving series .* is RTDOSE"):
        register_rigid(ct, dataclasses.replace(mr, modality="RTDOSE"), FAST_RIGID)


def test_empty_images_are_refused(ct, mr_pair) -> None:
    mr = mr_pair[0]
    flat = dataclasses.replace(mr, volume=mr.volume.with_voxels(np.zeros(mr.volume.shape, dtype=np.float32)))
    with pytest.raises(EmptyImageError, match=r"moving MR series .* holds the single value 0.0 everywhere"):
        register_rigid(ct, flat, FAST_RIGID)
    thin = dataclasses.replace(mr, volume=dataclasses.replace(mr.volume, voxels=mr.volume.voxels[:2]))
    with pytest.raises(EmptyImageError, match=r"has shape \(2, "):
        register_rigid(ct, thin, FAST_RIGID)


def test_images_that_do_not_overlap_are_refused(ct, mr_pair) -> None:
    """An MR in the CT's own frame (scanner coordinates trusted) but a metre away from the patient."""
    mr = mr_pair[0]
    far = dataclasses.replace(
        mr,
        frame_of_reference_uid=ct.frame_of_reference_uid,
        volume=dataclasses.replace(mr.volume, origin_mm=mr.volume.origin_mm + np.array([0.0, 0.0, 1000.0])),
    )
    with pytest.raises(NoOverlapError, match=r"before registration only 0.0% of the CT's body .* lies inside the MR image"):
        register_rigid(ct, far, dataclasses.replace(FAST_RIGID, initialisation="none"))


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(RegistrationError, match="sampling_fraction 0 must lie in"):
        RigidSettings(sampling_fraction=0)
    with pytest.raises(RegistrationError, match="initialisation 'guess' is not one of"):
        RigidSettings(initialisation="guess")
    with pytest.raises(RegistrationError, match="must name the same"):
        RigidSettings(shrink_factors=(4, 2), smoothing_sigmas_mm=(1.0,))


def test_fused_overlay_is_a_png_of_the_registered_image(ct, pet_pair, pet_rigid, tmp_path) -> None:
    pet, _ = pet_pair
    registered = resample_to_fixed(ct.volume, pet.volume, pet_rigid[0].matrix_moving_to_fixed)
    assert registered.same_grid(ct.volume)
    # The registered PET's hottest voxel lies at a hot spot placed in the CT frame.
    hottest = ct.volume.index_to_lps(np.array(np.unravel_index(np.argmax(registered.voxels), ct.volume.shape)[::-1], float))
    png = fused_overlay_png(ct.volume, registered, title="PET on CT", moving_label="PET", point_mm=hottest)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    (tmp_path / "fused.png").write_bytes(png)
    with pytest.raises(RegistrationError, match="not on the CT's grid"):
        fused_overlay_png(ct.volume, pet.volume)


def test_results_and_errors_survive_pickling(ct, mr_pair, mr_rigid, mr_deformable) -> None:
    """The grid ships results and errors between processes (Ray pickles them)."""
    rigid = pickle.loads(pickle.dumps(mr_rigid[0]))
    np.testing.assert_array_equal(rigid.matrix_moving_to_fixed, mr_rigid[0].matrix_moving_to_fixed)
    deformable = pickle.loads(pickle.dumps(mr_deformable[0]))
    points = np.array([[0.0, 10.0, 150.0]])
    np.testing.assert_array_equal(deformable.fixed_to_moving(points), mr_deformable[0].fixed_to_moving(points))
    error = pickle.loads(pickle.dumps(NoOverlapError("before registration only 0.0% ...")))
    assert isinstance(error, NoOverlapError) and str(error) == "before registration only 0.0% ..."
