"""Series intake: the real JPEG 2000 series against SimpleITK, and every validation error."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from rtgrid.engines.imaging.dicom_files import inspect_dicom
from rtgrid.engines.imaging.errors import (
    InconsistentGeometryError,
    InvalidPixelDataError,
    MissingSliceError,
    MixedSeriesError,
    NotDicomError,
    TruncatedFileError,
    UnsupportedModalityError,
)
from rtgrid.engines.imaging.intake import group_series, load_series, load_series_dir


def test_real_series_matches_simpleitk(totalseg_dir, real_ct_files):
    series = load_series(real_ct_files)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(totalseg_dir / "ct_dicom"))
    reader.SetFileNames(names)
    reference = reader.Execute()

    volume = series.volume
    assert volume.voxels.dtype == np.int16
    assert np.array_equal(volume.voxels, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(volume.origin_mm, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.spacing_mm, reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.direction.ravel(), reference.GetDirection(), atol=1e-6)
    # slices[k] is the file SimpleITK put at k, identified by the file meta's instance UID
    sitk_uids = [pydicom.dcmread(n, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for n in names]
    assert [s.sop_instance_uid for s in series.slices] == sitk_uids
    assert [s.z_index for s in series.slices] == list(range(20))
    assert series.slices[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert series.series_instance_uid == inspect_dicom(real_ct_files[0][1], "x").series_instance_uid
    assert any("SOPInstanceUID empty in dataset; taken from file meta (20 of 20 files)" in n for n in series.notes)
    assert series.study_date == "20221208"


def test_load_series_dir_reads_the_real_folder(totalseg_dir):
    series = load_series_dir(totalseg_dir / "ct_dicom")
    assert series.volume.shape == (20, 512, 512)
    assert series.volume.spacing_mm[2] == pytest.approx(2.0)


def test_shuffled_files_with_reversed_instance_numbers_sort_along_the_normal(small_series, small_volume, edit):
    shuffled = list(small_series)
    random.Random(4).shuffle(shuffled)

    def reverse_number(ds):
        ds.InstanceNumber = 100 - int(ds.InstanceNumber)

    files = [(name, edit(data, reverse_number)) for name, data in shuffled]
    series = load_series(files)
    assert np.array_equal(series.volume.voxels, small_volume.voxels)
    assert series.volume.same_grid(small_volume, tol_mm=1e-6)
    assert [s.position_mm[2] for s in series.slices] == sorted(s.position_mm[2] for s in series.slices)


def test_group_series_splits_by_series_uid(small_series, other_small_series):
    infos = [inspect_dicom(d, n) for n, d in small_series[:3] + other_small_series[:2] + small_series[3:]]
    groups = group_series(infos)
    assert [len(g) for g in groups] == [len(small_series), 2]
    assert all(i.file_name.startswith("a_") for i in groups[0])


def test_rtdose_sent_as_ct_is_an_unsupported_modality():
    data = open(get_testdata_file("rtdose.dcm"), "rb").read()
    with pytest.raises(UnsupportedModalityError) as caught:
        load_series([("dose.dcm", data)])
    assert str(caught.value) == "dose.dcm: modality RTDOSE is not an image series (expected CT)"


def test_mr_when_ct_is_expected_is_refused_but_accepted_when_asked():
    data = open(get_testdata_file("MR_small.dcm"), "rb").read()
    with pytest.raises(UnsupportedModalityError, match="modality MR is not accepted here"):
        load_series([("mr.dcm", data)])
    series = load_series([("mr.dcm", data)], expected_modalities=("MR",))
    assert series.volume.shape == (1, 64, 64) and series.modality == "MR"


def test_two_series_mixed_names_a_file_of_each(small_series, other_small_series):
    with pytest.raises(MixedSeriesError) as caught:
        load_series(small_series[:3] + other_small_series[3:])
    assert caught.value.file_names == (small_series[0][0], other_small_series[3][0])
    assert "2 series were given as one" in caught.value.reason


def test_missing_middle_slice_names_its_neighbours(small_series):
    files = small_series[:2] + small_series[3:]
    with pytest.raises(MissingSliceError) as caught:
        load_series(files)
    assert caught.value.file_names == (small_series[1][0], small_series[3][0])
    assert "gap of 5.000 mm" in caught.value.reason and "median step 2.500 mm" in caught.value.reason


def test_missing_slice_in_the_real_series(real_ct_files):
    with pytest.raises(MissingSliceError) as caught:
        load_series(real_ct_files[:9] + real_ct_files[10:])
    # the files are named in descending z; neighbours are reported in ascending order along the normal
    assert caught.value.file_names == (real_ct_files[10][0], real_ct_files[8][0])
    assert "between the slices at -786.500 mm and -782.500 mm" in caught.value.reason


def _edited_one(files, edit, index, change):
    out = list(files)
    out[index] = (files[index][0], edit(files[index][1], change))
    return out


def test_different_orientation_is_inconsistent(small_series, edit):
    def tilt(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.996194698, 0.087155743]

    with pytest.raises(InconsistentGeometryError, match="ImageOrientationPatient .* differs"):
        load_series(_edited_one(small_series, edit, 4, tilt))


def test_different_pixel_spacing_is_inconsistent(small_series, edit):
    def respace(ds):
        ds.PixelSpacing = [0.95, 0.8]

    with pytest.raises(InconsistentGeometryError, match="PixelSpacing") as caught:
        load_series(_edited_one(small_series, edit, 2, respace))
    assert small_series[2][0] in caught.value.file_names


def test_different_rows_and_columns_are_inconsistent(small_series, edit):
    def crop(ds):
        pixels = ds.pixel_array[:20, :16].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()

    with pytest.raises(InconsistentGeometryError, match="20 x 16 pixels"):
        load_series(_edited_one(small_series, edit, 3, crop))


def test_duplicate_position_is_inconsistent(small_series, edit):
    def new_instance(ds):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    files = small_series + [("a_copy.dcm", edit(small_series[2][1], new_instance))]
    with pytest.raises(InconsistentGeometryError, match="duplicate slice position") as caught:
        load_series(files)
    assert set(caught.value.file_names) == {small_series[2][0], "a_copy.dcm"}


def test_gantry_tilt_is_rejected(small_series, small_volume, edit):
    column_cosine = small_volume.direction[:, 1]
    files = []
    for k, (name, data) in enumerate(small_series):

        def shear(ds, k=k):
            ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient) + k * 0.5 * column_cosine]

        files.append((name, edit(data, shear)))
    with pytest.raises(InconsistentGeometryError, match="gantry tilt"):
        load_series(files)


def test_irregular_step_is_inconsistent(small_series, small_volume, edit):
    def nudge(ds):
        ds.ImagePositionPatient = [
            float(v) for v in np.array(ds.ImagePositionPatient) + 0.4 * small_volume.direction[:, 2]
        ]

    with pytest.raises(InconsistentGeometryError, match="irregular slice step"):
        load_series(_edited_one(small_series, edit, 3, nudge))


def test_multi_frame_image_is_refused_as_a_slice():
    data = open(get_testdata_file("rtdose.dcm"), "rb").read()
    with pytest.raises(InvalidPixelDataError, match="multi-frame image with 15 frames"):
        load_series([("dose.dcm", data)], expected_modalities=("RTDOSE",))


def test_file_level_errors_propagate_with_the_file_name(real_ct_files):
    name, data = real_ct_files[7]
    with pytest.raises(TruncatedFileError) as caught:
        load_series(real_ct_files[:7] + [(name, data[:-5000])] + real_ct_files[8:])
    assert caught.value.file_name == name
    with pytest.raises(NotDicomError) as caught:
        load_series(real_ct_files[:3] + [("notes.txt", b"patient notes, not an image")])
    assert caught.value.file_name == "notes.txt"


def test_integer_rescale_beyond_int16_gives_exact_float32(small_series, small_volume, edit):
    """One slice whose integer slope takes it past int16 (the last, so the earlier ones were
    already rescaled as int16) turns the whole volume into float32, every value exact."""
    names = sorted(name for name, _ in small_series)
    intercept = float(pydicom.dcmread(pydicom.filebase.DicomBytesIO(small_series[0][1])).RescaleIntercept)
    stored = small_volume.voxels.astype(np.float64) - intercept

    def steep(ds):
        ds.RescaleSlope = "30"

    last = max(names, key=lambda n: float(pydicom.dcmread(pydicom.filebase.DicomBytesIO(dict(small_series)[n]))
                                          .ImagePositionPatient[2]))
    series = load_series([(name, edit(data, steep) if name == last else data) for name, data in small_series])
    assert series.volume.voxels.dtype == np.float32
    expected = small_volume.voxels.astype(np.float64)
    expected[-1] = stored[-1] * 30 + intercept
    assert np.abs(expected[-1]).max() > np.iinfo(np.int16).max
    np.testing.assert_array_equal(series.volume.voxels, expected.astype(np.float32))


def test_float_slope_gives_float32_hu(small_series, small_volume, edit):
    def halve(ds):
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1.25"

    series = load_series([(name, edit(data, halve)) for name, data in small_series])
    assert series.volume.voxels.dtype == np.float32
    np.testing.assert_allclose(series.volume.voxels, small_volume.voxels * 0.5 - 1.25)
