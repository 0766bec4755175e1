"""From DICOM files to a DICOM registration object: a PET series written as files, taken in with its
SUV scale, registered to the CT and stored as a Spatial Registration; the MR's deformable result
stored as a Deformable Spatial Registration. Both pass dciodvfy and read back to the same mapping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.registration import (
    RegistrationObjectError,
    read_deformable_registration,
    read_spatial_registration,
    write_deformable_registration,
    write_spatial_registration,
)
from rtgrid.engines.imaging.pet_intake import load_pet_series
from rtgrid.engines.registration import PatientMismatchError, register_rigid
from tests.engines.dicomrt.test_registration_objects import dciodvfy_lines
from tests.engines.imaging.modality_files import pet_files
from tests.engines.registration import synth
from tests.engines.registration.conftest import FAST_RIGID


@pytest.fixture(scope="module")
def pet_from_files(ct, pet_pair):
    pet, _ = pet_pair

    def same_patient(ds, k):
        ds.PatientID, ds.PatientName = ct.patient_id, ct.patient_name

    return load_pet_series(pet_files(pet.volume, edit=same_patient))


def test_a_pet_taken_in_from_files_registers_and_is_stored_as_reg(ct, pet_pair, pet_from_files, tmp_path) -> None:
    _, true_matrix = pet_pair
    assert pet_from_files.series.modality == "PT" and pet_from_files.suv_factor > 0
    result = register_rigid(ct, pet_from_files.series, FAST_RIGID)
    errors = synth.error_at_body_points_mm(ct.volume, true_matrix, result.matrix_moving_to_fixed)
    print(f"\nPET from DICOM files: body-point error max {errors.max():.3f} mm, {result.elapsed_s:.1f} s")
    assert errors.max() < 1.0 and synth.rotation_error_deg(true_matrix, result.matrix_moving_to_fixed) < 0.5

    path = tmp_path / "REG.pet.dcm"
    write_spatial_registration(ct, pet_from_files.series, result, description="PET to CT").save_as(path, enforce_file_format=True)
    errors_found = [line for line in dciodvfy_lines(path) if line.startswith("Error")]
    assert not errors_found, "\n".join(errors_found)
    matrices = read_spatial_registration(pydicom.dcmread(path))
    np.testing.assert_allclose(matrices[pet_from_files.series.frame_of_reference_uid], result.matrix_moving_to_fixed, atol=1e-8)


def test_a_deformable_result_is_stored_and_reads_back_to_the_same_mapping(ct, mr_pair, mr_deformable, tmp_path) -> None:
    mr, _ = mr_pair
    result = mr_deformable[0]
    path = tmp_path / "REG.mr-deformable.dcm"
    write_deformable_registration(ct, mr, result).save_as(path, enforce_file_format=True)
    errors_found = [line for line in dciodvfy_lines(path) if line.startswith("Error")]
    assert not errors_found, "\n".join(errors_found)
    [grid] = read_deformable_registration(pydicom.dcmread(path))
    assert grid.source_frame_of_reference_uid == mr.frame_of_reference_uid
    k, j, i = np.nonzero(ct.volume.voxels > -400)
    points = ct.volume.index_to_lps(np.column_stack([i, j, k])[::50].astype(np.float64))
    np.testing.assert_allclose(grid.registered_to_source(points), result.fixed_to_moving(points), atol=1e-3)


def test_series_of_different_patients_are_refused(ct, pet_pair, pet_rigid) -> None:
    pet, _ = pet_pair
    stranger = dataclasses.replace(pet, patient_id="someone-else")
    with pytest.raises(PatientMismatchError, match=r"PT series .* is of PatientID 'someone-else', the planning CT of PatientID 'pt_201'"):
        register_rigid(ct, stranger, FAST_RIGID)
    with pytest.raises(RegistrationObjectError, match="one registration object links one patient's images"):
        write_spatial_registration(ct, stranger, pet_rigid[0])
