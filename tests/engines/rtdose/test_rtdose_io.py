"""RT Dose writer and reader: dciodvfy, SimpleITK, a commercial planning system's dose, pydicom's test file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from scipy import ndimage

from rtgrid.engines.dicomrt.rtdose import RT_DOSE_STORAGE, RtDoseError, read_rtdose, write_rtdose
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.phantom import write_phantom_case

BLOB_CENTRE_MM = np.array([12.4, -7.9, 4.3])
BLOB_SIGMA_MM = 18.0
BLOB_PEAK_GY = 62.0


def gaussian_dose(grid: Volume) -> np.ndarray:
    """An analytic blob evaluated at the grid's voxel centres, shape (nz, ny, nx)."""
    nz, ny, nx = grid.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    xyz = grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))
    return BLOB_PEAK_GY * np.exp(-np.sum((xyz - BLOB_CENTRE_MM) ** 2, axis=-1) / (2 * BLOB_SIGMA_MM**2))


def dciodvfy_lines(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing in CI: install dicom3tools (apt-get install -y dicom3tools)")
        pytest.skip("needs dciodvfy from dicom3tools (apt-get install -y dicom3tools)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return (run.stdout + run.stderr).splitlines()


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> ImageSeries:
    case = write_phantom_case(tmp_path_factory.mktemp("phantom"), shape=(16, 64, 64), spacing_mm=(3.0, 3.0, 5.0))
    return load_series_dir(case.ct_dir)


@pytest.fixture(scope="module")
def grid(series) -> Volume:
    # A 3 mm grid whose voxel centres fall between the CT's (offsets are not multiples of its spacing).
    origin = series.volume.origin_mm + np.array([1.3, -0.7, 2.1])
    return Volume(np.zeros((24, 61, 62), dtype=np.float32), origin, (3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def plan_uid() -> str:
    return generate_uid()


@pytest.fixture(scope="module")
def written(series, grid, plan_uid, tmp_path_factory) -> Path:
    ds = write_rtdose(gaussian_dose(grid), grid, series, referenced_rtplan_uid=plan_uid, comment="analytic blob")
    path = tmp_path_factory.mktemp("rtdose") / "rtdose.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dciodvfy_finds_no_error(written) -> None:
    lines = dciodvfy_lines(written)
    assert "RTDose" in lines  # dciodvfy recognised and walked the IOD (it aborts on 32-bit pixels)
    assert [line for line in lines if line.startswith("Error")] == []


def test_plan_dose_without_plan_reference_is_refused(written, series, grid, tmp_path) -> None:
    # What dciodvfy says about a PLAN dose without its plan: the reason the writer refuses one.
    ds = pydicom.dcmread(written)
    del ds.ReferencedRTPlanSequence
    ds.save_as(tmp_path / "no_plan.dcm", enforce_file_format=True)
    errors = [line for line in dciodvfy_lines(tmp_path / "no_plan.dcm") if line.startswith("Error")]
    assert any("ReferencedRTPlanSequence" in line for line in errors), errors
    with pytest.raises(RtDoseError, match="referenced_rtplan_uid"):
        write_rtdose(gaussian_dose(grid), grid, series)
    with pytest.raises(RtDoseError, match="not supported"):
        write_rtdose(
            gaussian_dose(grid), grid, series, referenced_rtplan_uid=generate_uid(), dose_summation_type="BEAM"
        )
    with pytest.raises(RtDoseError, match="not a valid DICOM UID"):
        write_rtdose(gaussian_dose(grid), grid, series, referenced_rtplan_uid="1.2.abc")


def test_identity_units_and_raw_geometry(written, series, grid, plan_uid) -> None:
    ds = pydicom.dcmread(written)
    assert ds.SOPClassUID == RT_DOSE_STORAGE and ds.Modality == "RTDOSE" and ds.Manufacturer == "rtgrid"
    assert ds.PatientID == series.patient_id and str(ds.PatientName) == series.patient_name
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert ds.SeriesInstanceUID != series.series_instance_uid
    assert ds.SOPInstanceUID not in {s.sop_instance_uid for s in series.slices}
    assert (ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan_uid
    assert (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == grid.shape
    assert ds.FrameIncrementPointer == 0x3004000C
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], grid.origin_mm, atol=1e-6)
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0], atol=1e-9)
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [3.0, 3.0])
    np.testing.assert_allclose([float(v) for v in ds.GridFrameOffsetVector], 3.0 * np.arange(grid.shape[0]))
    scaling = float(ds.DoseGridScaling)
    peak = gaussian_dose(grid).max()
    assert scaling * 65535 >= peak and scaling / 2 <= 1e-5 * peak  # no overflow; rounding <= 1e-5 of max
    raw = np.frombuffer(ds.PixelData, dtype="<u2").reshape(grid.shape)
    assert raw.max() == 65535


def test_round_trip_keeps_dose_and_geometry(written, grid) -> None:
    ds = pydicom.dcmread(written)
    dose, volume = read_rtdose(ds)
    expected = gaussian_dose(grid)
    assert dose.dtype == np.float32 and dose.shape == grid.shape
    assert np.abs(dose - expected).max() <= float(ds.DoseGridScaling) / 2 + 1e-6 * expected.max()
    assert np.abs(dose - expected).max() <= 1e-5 * expected.max()
    np.testing.assert_allclose(volume.origin_mm, grid.origin_mm, atol=1e-6)
    np.testing.assert_allclose(volume.spacing_mm, grid.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(volume.direction, grid.direction, atol=1e-9)
    assert volume.voxels is dose


def test_simpleitk_sees_the_same_grid(written, grid) -> None:
    ds = pydicom.dcmread(written)
    image = sitk.ReadImage(str(written))
    assert image.GetSize() == grid.shape[::-1]
    np.testing.assert_allclose(image.GetOrigin(), grid.origin_mm, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), grid.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), grid.direction, atol=1e-9)
    # SimpleITK returns stored values; scaled, they are our dose voxel for voxel.
    stored = sitk.GetArrayFromImage(image).astype(np.float64)
    dose, _ = read_rtdose(ds)
    np.testing.assert_allclose(stored * float(ds.DoseGridScaling), dose, rtol=1e-6, atol=1e-9)


def test_oblique_grid_round_trips(series, tmp_path) -> None:
    angle = np.radians(25.0)
    tilt = np.radians(10.0)
    rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    grid = Volume(np.zeros((10, 20, 22), np.float32), (-30.123456, 20.5, -12.25), (2.5, 3.5, 4.0), rz @ rx)
    ds = write_rtdose(gaussian_dose(grid), grid, series, referenced_rtplan_uid=generate_uid())
    path = tmp_path / "oblique.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert [line for line in dciodvfy_lines(path) if line.startswith("Error")] == []
    _, volume = read_rtdose(pydicom.dcmread(path))
    corners = np.array([[0, 0, 0], [21, 19, 9], [21, 0, 9]], dtype=np.float64)
    np.testing.assert_allclose(volume.index_to_lps(corners), grid.index_to_lps(corners), atol=1e-6)
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetOrigin(), grid.origin_mm, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), grid.spacing_mm, atol=1e-6)


def test_decreasing_frame_offsets_read_as_the_same_points(written) -> None:
    # Another system could store the frames top-down: same dose at the same LPS points.
    ds = pydicom.dcmread(written)
    dose, volume = read_rtdose(ds)
    nz = dose.shape[0]
    flipped = pydicom.dcmread(written)
    flipped.ImagePositionPatient = [f"{v:.6f}" for v in volume.index_to_lps(np.array([0.0, 0.0, nz - 1.0]))]
    flipped.GridFrameOffsetVector = [f"{-3.0 * k:g}" for k in range(nz)]
    flipped.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).astype("<u2").tobytes()
    flipped_dose, flipped_volume = read_rtdose(flipped)
    assert flipped_volume.direction[2, 2] == pytest.approx(-1.0)
    ijk = np.array([[5, 7, 3], [40, 30, 20]], dtype=np.float64)
    points = volume.index_to_lps(ijk)
    back = np.rint(flipped_volume.lps_to_index(points)).astype(int)
    for (i, j, k), (fi, fj, fk) in zip(ijk.astype(int), back):
        assert flipped_dose[fk, fj, fi] == dose[k, j, i]


def test_writer_rejects_bad_input(series, grid) -> None:
    uid = generate_uid()
    dose = gaussian_dose(grid)
    with pytest.raises(RtDoseError, match="negative"):
        write_rtdose(dose - 1.0, grid, series, referenced_rtplan_uid=uid)
    with pytest.raises(RtDoseError, match="shape"):
        write_rtdose(dose[:-1], grid, series, referenced_rtplan_uid=uid)
    left_handed = Volume(grid.voxels, grid.origin_mm, grid.spacing_mm, np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(RtDoseError, match="left-handed"):
        write_rtdose(dose, left_handed, series, referenced_rtplan_uid=uid)
    nan_dose = dose.copy()
    nan_dose[0, 0, 0] = np.nan
    with pytest.raises(RtDoseError, match="NaN"):
        write_rtdose(nan_dose, grid, series, referenced_rtplan_uid=uid)


def test_commercial_tps_dose(dicompyler_dir) -> None:
    ds = pydicom.dcmread(dicompyler_dir / "rtdose.dcm")
    dose, volume = read_rtdose(ds)
    # Geometry straight from the tags.
    offsets = np.array([float(v) for v in ds.GridFrameOffsetVector])
    assert dose.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == (98, 129, 194)
    np.testing.assert_allclose(volume.origin_mm, [float(v) for v in ds.ImagePositionPatient], atol=1e-9)
    np.testing.assert_allclose(volume.spacing_mm[:2], [float(v) for v in ds.PixelSpacing][::-1])
    assert volume.spacing_mm[2] == pytest.approx(offsets[1] - offsets[0]) == pytest.approx(3.0)
    image = sitk.ReadImage(str(dicompyler_dir / "rtdose.dcm"))
    np.testing.assert_allclose(image.GetOrigin(), volume.origin_mm, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing_mm, atol=1e-6)
    # Dose against the plan: 7 x 2 Gy to the breast; the hot spot a few per cent above it.
    plan = pydicom.dcmread(dicompyler_dir / "rtplan.dcm")
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    site = next(r for r in plan.DoseReferenceSequence if r.DoseReferenceStructureType == "SITE")
    prescription = float(site.TargetPrescriptionDose)
    assert prescription == 14.0
    assert 1.0 < dose.max() / prescription < 1.15
    # The plan's calculation point: the planning system's dose there equals ours interpolated there,
    # and one voxel off it does not (the geometry, not just the values, is right).
    point = next(r for r in plan.DoseReferenceSequence if r.DoseReferenceStructureType == "COORDINATES")
    xyz = np.array([float(v) for v in point.DoseReferencePointCoordinates])

    def dose_at(p: np.ndarray) -> float:
        return float(ndimage.map_coordinates(dose, volume.lps_to_index(p)[::-1].reshape(3, 1), order=1)[0])

    planned = float(point.TargetPrescriptionDose)
    assert dose_at(xyz) == pytest.approx(planned, rel=1e-3)
    assert abs(dose_at(xyz + np.array([2.5, 0.0, 0.0])) - planned) > 0.05 * planned


def test_pydicom_test_file_relative_dose() -> None:
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    with pytest.raises(RtDoseError, match="RELATIVE"):
        read_rtdose(ds)
    dose, volume = read_rtdose(ds, allow_relative=True)
    assert dose.shape == (15, 10, 10)
    raw = np.frombuffer(ds.PixelData, dtype="<u4").reshape(15, 10, 10).astype(np.float64)
    np.testing.assert_allclose(dose, raw * float(ds.DoseGridScaling), rtol=1e-6)
    np.testing.assert_allclose(volume.origin_mm, [189.43125, 199.43125, -761.87])
    np.testing.assert_allclose(volume.spacing_mm, [10.0, 10.0, 5.0])


def test_reader_rejects_other_objects() -> None:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with pytest.raises(RtDoseError, match="not an RT Dose"):
        read_rtdose(ct)
