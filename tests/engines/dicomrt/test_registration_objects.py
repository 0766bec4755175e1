"""Spatial Registration and Deformable Spatial Registration objects: dciodvfy, and the read-back mapping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.registration import (
    DEFORMABLE_SPATIAL_REGISTRATION_STORAGE,
    SPATIAL_REGISTRATION_STORAGE,
    RegistrationObjectError,
    read_deformable_registration,
    read_spatial_registration,
    write_deformable_registration,
    write_spatial_registration,
)
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.registration.deformable import BSplineGrid, DeformableResult, DisplacementField
from rtgrid.engines.registration.rigid import RigidResult, rigid_matrix
from tests.engines.registration.synth import series_of


def dciodvfy_lines(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing in CI: install dicom3tools (apt-get install -y dicom3tools)")
        pytest.skip("needs dciodvfy from dicom3tools (apt-get install -y dicom3tools)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return (run.stdout + run.stderr).splitlines()


@pytest.fixture(scope="module")
def pair():
    ct = series_of(Volume(np.zeros((6, 16, 16), np.float32), [-40.0, -40.0, 0.0], [5.0, 5.0, 3.0]), "CT")
    mr = series_of(Volume(np.zeros((5, 12, 12), np.float32), [-30.0, -30.0, 2.0], [6.0, 6.0, 4.0]), "MR")
    return ct, mr


@pytest.fixture(scope="module")
def rigid(pair) -> RigidResult:
    ct, mr = pair
    matrix = rigid_matrix((3.0, -2.5, 4.0), (6.0, -8.0, 5.0))
    return RigidResult(
        matrix, np.array([3.0, -2.5, 4.0]), matrix[:3, 3], -0.6, 10, 1.0, False, "test", 1.0,
        ct.frame_of_reference_uid, mr.frame_of_reference_uid,
    )


@pytest.fixture(scope="module")
def deformable(pair, rigid) -> DeformableResult:
    ct = pair[0]
    grid = Volume(np.zeros((4, 6, 7), np.float32), ct.volume.origin_mm, [12.0, 12.0, 5.0])
    ijk = np.stack(np.meshgrid(np.arange(7), np.arange(6), np.arange(4), indexing="ij"), -1).transpose(2, 1, 0, 3)
    xyz = grid.index_to_lps(ijk.astype(float))
    vectors = np.stack([np.sin(xyz[..., 1] / 30.0), 0.5 * np.cos(xyz[..., 0] / 25.0), 0.01 * xyz[..., 2]], -1)
    field = DisplacementField(vectors.astype(np.float32), grid.with_voxels(np.linalg.norm(vectors, axis=-1).astype(np.float32)))
    bspline = BSplineGrid((1, 1, 1), ct.volume.origin_mm, np.ones(3), np.eye(3), np.zeros((3, 4, 4, 4)))
    return DeformableResult(rigid, bspline, field, -0.7, 5, 1.0, False, "test")


def test_spatial_registration_is_dciodvfy_clean_and_reads_back(pair, rigid, tmp_path) -> None:
    ct, mr = pair
    ds = write_spatial_registration(ct, mr, rigid, description="MR to CT")
    path = tmp_path / "REG.rigid.dcm"
    ds.save_as(path, enforce_file_format=True)
    lines = dciodvfy_lines(path)
    assert any("SpatialRegistration" in line or "Spatial Registration" in line for line in lines), lines[:5]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)

    again = pydicom.dcmread(path)
    assert again.SOPClassUID == SPATIAL_REGISTRATION_STORAGE and again.Modality == "REG"
    assert again.FrameOfReferenceUID == ct.frame_of_reference_uid
    matrices = read_spatial_registration(again)
    np.testing.assert_array_equal(matrices[ct.frame_of_reference_uid], np.eye(4))
    # The moving frame's matrix maps MR points to the CT frame (what RigidResult holds), to DS precision.
    np.testing.assert_allclose(matrices[mr.frame_of_reference_uid], rigid.matrix_moving_to_fixed, atol=1e-9)


def test_deformable_registration_is_dciodvfy_clean_and_maps_like_the_result(pair, deformable, tmp_path) -> None:
    ct, mr = pair
    ds = write_deformable_registration(ct, mr, deformable)
    path = tmp_path / "REG.deformable.dcm"
    ds.save_as(path, enforce_file_format=True)
    lines = dciodvfy_lines(path)
    assert any("Deformable" in line for line in lines), lines[:5]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)

    again = pydicom.dcmread(path)
    assert again.SOPClassUID == DEFORMABLE_SPATIAL_REGISTRATION_STORAGE
    [grid] = read_deformable_registration(again)
    assert grid.source_frame_of_reference_uid == mr.frame_of_reference_uid
    # As the standard applies it (pre matrix, grid offsets, post matrix), a CT point reaches the MR
    # point the result maps it to.
    points = ct.volume.index_to_lps(np.array([[3.0, 4.0, 1.0], [10.5, 7.25, 4.0], [15.0, 15.0, 5.0]]))
    np.testing.assert_allclose(grid.registered_to_source(points), deformable.fixed_to_moving(points), atol=1e-6)


def test_a_result_of_other_frames_and_a_bad_label_are_refused(pair, rigid) -> None:
    ct, mr = pair
    with pytest.raises(RegistrationObjectError, match="the result maps frame"):
        write_spatial_registration(mr, ct, rigid)
    with pytest.raises(RegistrationObjectError, match="Content Label 'mr to ct' must be"):
        write_spatial_registration(ct, mr, rigid, label="mr to ct")
    with pytest.raises(RegistrationObjectError, match="not the expected registration object"):
        read_deformable_registration(write_spatial_registration(ct, mr, rigid))
