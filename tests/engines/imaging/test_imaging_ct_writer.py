"""CT series writer: validated by dciodvfy (dicom3tools), and round-tripped through intake."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.errors import SeriesWriteError
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import Volume


def _dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing in CI: install dicom3tools (apt-get install -y dicom3tools)")
        pytest.skip("needs dciodvfy from dicom3tools (apt-get install -y dicom3tools)")
    return path


def test_written_slices_pass_dciodvfy(small_volume, tmp_path):
    tool = _dciodvfy()
    paths = write_ct_series(
        small_volume, tmp_path, patient_id="P-1", patient_name="Doe^Jane", study_description="s", series_description="x"
    )
    for path in (paths[0], paths[-1]):
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert "CTImage" in report  # dciodvfy recognised the IOD it validated
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], report


def test_round_trip_keeps_voxels_geometry_and_identity(small_volume, tmp_path):
    paths = write_ct_series(
        small_volume, tmp_path, patient_id="P-2", patient_name="Roe^Richard", uid_prefix="1.2.826.0.1.3680043.10.999."
    )
    assert [p.name for p in paths] == [f"CT_{k:04d}.dcm" for k in range(6)]
    series = load_series_dir(tmp_path)
    assert np.array_equal(series.volume.voxels, small_volume.voxels)
    np.testing.assert_allclose(series.volume.origin_mm, small_volume.origin_mm, atol=1e-6)
    np.testing.assert_allclose(series.volume.spacing_mm, small_volume.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(series.volume.direction, small_volume.direction, atol=1e-9)
    assert (series.patient_id, series.patient_name) == ("P-2", "Roe^Richard")
    assert series.series_instance_uid.startswith("1.2.826.0.1.3680043.10.999.")
    assert series.notes == ()
    first = pydicom.dcmread(paths[0])
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.SOPClassUID == CTImageStorage and first.Modality == "CT"
    assert (first.BitsAllocated, first.PixelRepresentation, float(first.RescaleSlope)) == (16, 1, 1.0)


def test_every_call_writes_fresh_uids(small_volume, tmp_path):
    first = pydicom.dcmread(write_ct_series(small_volume, tmp_path / "a", patient_id="P", patient_name="A")[0])
    second = pydicom.dcmread(write_ct_series(small_volume, tmp_path / "b", patient_id="P", patient_name="A")[0])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert first[keyword].value != second[keyword].value


def test_float_hu_is_rounded_to_whole_hu(tmp_path):
    voxels = np.array([[[-1000.4, 12.6], [40.5, 2999.49]]] * 2, dtype=np.float32)
    write_ct_series(Volume(voxels, [0, 0, 0], [1, 1, 2]), tmp_path, patient_id="P", patient_name="F")
    assert np.array_equal(load_series_dir(tmp_path).volume.voxels[0], [[-1000, 13], [40, 2999]])


def test_unwritable_volumes_are_named_errors(tmp_path):
    flipped = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(SeriesWriteError, match="left-handed"):
        write_ct_series(
            Volume(np.zeros((2, 2, 2)), [0, 0, 0], [1, 1, 1], flipped), tmp_path, patient_id="P", patient_name="X"
        )
    with pytest.raises(SeriesWriteError, match=r"HU range \[40000.0, 40000.0\] does not fit int16"):
        write_ct_series(
            Volume(np.full((2, 2, 2), 40000.0), [0, 0, 0], [1, 1, 1]), tmp_path, patient_id="P", patient_name="X"
        )
