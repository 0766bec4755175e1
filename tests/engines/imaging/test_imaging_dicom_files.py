"""Per-file intake checks on real files: repairs, RT objects, truncation, garbage, bad pixel data."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

from rtgrid.engines.imaging.dicom_files import inspect_dicom, read_dicom, stored_pixels_offset
from rtgrid.engines.imaging.errors import (
    IntakeError,
    InvalidPixelDataError,
    MissingSliceError,
    NotDicomError,
    TruncatedFileError,
    UnsupportedTransferSyntaxError,
)


def test_error_names_file_and_reason_and_survives_pickling():
    error = MissingSliceError.for_files(["a.dcm", "b.dcm"], "gap of 6 mm")
    assert str(error) == "a.dcm, b.dcm: gap of 6 mm"
    assert error.file_names == ("a.dcm", "b.dcm") and error.reason == "gap of 6 mm"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is MissingSliceError and copy.file_names == error.file_names and str(copy) == str(error)
    assert isinstance(NotDicomError("x", "y"), ValueError)


def test_real_file_with_empty_uids_is_repaired_from_file_meta(real_ct_files):
    name, data = real_ct_files[0]
    raw = pydicom.dcmread(io.BytesIO(data))
    assert raw.SOPInstanceUID == "" and raw.SeriesInstanceUID == ""  # the quirk this test is about
    info = inspect_dicom(data, name)
    assert info.modality == "CT"
    assert info.sop_class_uid == raw.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert info.sop_instance_uid == raw.file_meta.MediaStorageSOPInstanceUID
    assert info.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    assert info.image_position_mm == tuple(float(v) for v in raw.ImagePositionPatient)
    assert info.pixel_spacing_mm == (0.9765625, 0.9765625) and (info.rows, info.columns) == (512, 512)
    assert (info.rescale_slope, info.rescale_intercept) == (1.0, -1024.0)
    assert info.frame_of_reference_uid == raw.FrameOfReferenceUID
    assert UID(info.series_instance_uid).is_valid and UID(info.study_instance_uid).is_valid
    notes = " | ".join(info.notes)
    assert "SOPInstanceUID empty in dataset; taken from file meta" in notes
    assert "SOPClassUID empty in dataset; taken from file meta" in notes
    assert "SeriesInstanceUID empty in dataset; derived deterministically" in notes
    assert "StudyInstanceUID empty in dataset; derived deterministically" in notes


def test_derived_series_uid_is_shared_stable_and_attribute_driven(real_ct_files, edit):
    infos = [inspect_dicom(data, name) for name, data in real_ct_files]
    assert len({i.series_instance_uid for i in infos}) == 1
    assert len({i.study_instance_uid for i in infos}) == 1
    assert len({i.sop_instance_uid for i in infos}) == len(infos)
    again = inspect_dicom(real_ct_files[3][1], "renamed.dcm")
    assert again.series_instance_uid == infos[3].series_instance_uid

    def other_description(ds):
        ds.SeriesDescription = "CT Lung 1.0"

    changed = inspect_dicom(edit(real_ct_files[3][1], other_description), "other.dcm")
    assert changed.series_instance_uid != infos[3].series_instance_uid
    assert changed.study_instance_uid == infos[3].study_instance_uid


@pytest.mark.parametrize(
    ("source", "modality"),
    [
        ("dicompyler:rtss.dcm", "RTSTRUCT"),
        ("dicompyler:rtplan.dcm", "RTPLAN"),
        ("dicompyler:rtdose.dcm", "RTDOSE"),
        ("pydicom:rtstruct.dcm", "RTSTRUCT"),
        ("pydicom:rtplan.dcm", "RTPLAN"),
        ("pydicom:rtdose.dcm", "RTDOSE"),
    ],
)
def test_rt_objects_inspect_fine(source, modality, request):
    origin, name = source.split(":")
    if origin == "dicompyler":
        path = request.getfixturevalue("dicompyler_dir") / name
    else:
        path = get_testdata_file(name)
    data = open(path, "rb").read()
    info = inspect_dicom(data, name)
    reference = pydicom.dcmread(path, force=True)
    assert info.modality == modality
    assert info.sop_instance_uid == reference.SOPInstanceUID
    assert info.sop_class_uid == reference.SOPClassUID
    assert info.has_pixel_data == ("PixelData" in reference)
    if modality == "RTDOSE":
        assert info.number_of_frames == int(reference.NumberOfFrames) > 1
        assert info.image_position_mm == tuple(float(v) for v in reference.ImagePositionPatient)


def test_raw_dataset_without_file_meta_is_read_with_a_note():
    info = inspect_dicom(open(get_testdata_file("rtstruct.dcm"), "rb").read(), "rtstruct.dcm")
    assert any("no file meta header" in note for note in info.notes)


@pytest.mark.parametrize("keep", [0, 60, 131, 132, 200, 700, 3000, -40000, -9, -1])
def test_truncated_real_file_is_rejected(real_ct_files, keep):
    name, data = real_ct_files[5]
    cut = data[: keep if keep >= 0 else len(data) + keep]
    with pytest.raises(TruncatedFileError) as caught:
        inspect_dicom(cut, name)
    assert caught.value.file_name == name


def test_truncated_uncompressed_pixel_data_is_rejected():
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    with pytest.raises(TruncatedFileError, match="PixelData"):
        inspect_dicom(data[:-300], "CT_small.dcm")
    with pytest.raises(TruncatedFileError, match=r"PixelData \(7FE0,0010\) declares 8192 bytes"):
        inspect_dicom(open(get_testdata_file("MR_truncated.dcm"), "rb").read(), "MR_truncated.dcm")


@pytest.mark.parametrize(
    "garbage",
    [
        np.random.default_rng(3).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
        b"\x89PNG\r\n\x1a\n" + bytes(500),
        b"%PDF-1.7\n" + b"x" * 300,
        b"hello",
    ],
)
def test_garbage_is_not_dicom(garbage):
    with pytest.raises(NotDicomError) as caught:
        inspect_dicom(garbage, "upload.bin")
    assert str(caught.value).startswith("upload.bin: not a DICOM file")


def test_corrupt_codestream_is_invalid_pixel_data(real_ct_files, edit):
    name, data = real_ct_files[0]

    def scramble(ds):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        noise = np.random.default_rng(5).integers(0, 256, len(frame) - 200, dtype=np.uint8).tobytes()
        ds.PixelData = encapsulate([frame[:200] + noise])

    with pytest.raises(InvalidPixelDataError, match="cannot be decoded"):
        inspect_dicom(edit(data, scramble), name)


def test_pixel_data_shorter_than_rows_times_columns_is_invalid(edit):
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()

    def more_rows(ds):
        ds.Rows = 256

    with pytest.raises(InvalidPixelDataError):
        inspect_dicom(edit(data, more_rows), "CT_small.dcm")


@pytest.mark.parametrize(
    ("syntax", "message"),
    [
        ("1.2.840.10008.1.2.4.100", "no pixel data decoder exists for MPEG2"),
        ("1.2.3.4.5", "not a known DICOM transfer syntax"),
    ],
)
def test_undecodable_transfer_syntax_is_unsupported(real_ct_files, edit, syntax, message):
    def relabel(ds):
        ds.file_meta.TransferSyntaxUID = syntax

    with pytest.raises(UnsupportedTransferSyntaxError, match=message):
        inspect_dicom(edit(real_ct_files[0][1], relabel), "video.dcm")


def test_read_dicom_decodes_once_to_the_pydicom_values(real_ct_files):
    name, data = real_ct_files[2]
    inspected = read_dicom(data, name)
    assert inspected.pixels.shape == (512, 512)
    assert np.array_equal(inspected.pixels, pydicom.dcmread(io.BytesIO(data)).pixel_array)


def test_natively_stored_pixels_are_found_where_they_lie():
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    item = read_dicom(data, "CT_small.dcm")
    offset = stored_pixels_offset(item, data)
    assert offset is not None and offset == pydicom.dcmread(io.BytesIO(data))["PixelData"].file_tell
    stored = np.frombuffer(data, dtype=item.pixels.dtype, count=item.pixels.size, offset=offset)
    assert np.array_equal(stored.reshape(item.pixels.shape), item.pixels)


def test_pixels_not_stored_as_decoded_have_no_offset(real_ct_files):
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stored = np.frombuffer(dataset.PixelData, dtype="<i2").copy()
    stored[:10] = 0x7000  # bits above BitsStored set: pydicom's decoded values leave them out
    dataset.BitsStored, dataset.HighBit, dataset.PixelData = 12, 11, stored.tobytes()
    unused_bits = io.BytesIO()
    dataset.save_as(unused_bits, enforce_file_format=True)
    cases = {
        "JPEG 2000": real_ct_files[0][1],
        "big endian": open(get_testdata_file("MR_small_bigendian.dcm"), "rb").read(),
        "RLE": open(get_testdata_file("MR_small_RLE.dcm"), "rb").read(),
        "unused high bits": unused_bits.getvalue(),
        "no pixel data": open(get_testdata_file("rtplan.dcm"), "rb").read(),
    }
    for what, data in cases.items():
        item = read_dicom(data, what)
        assert stored_pixels_offset(item, data) is None, what
    assert read_dicom(unused_bits.getvalue(), "x").pixels.ravel()[0] == 0


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged values it reads
def test_corrupted_bytes_only_ever_raise_intake_errors():
    """Random byte flips and cuts in real files: accepted, or refused with a named IntakeError."""
    sources = [open(get_testdata_file(n), "rb").read() for n in ("CT_small.dcm", "rtplan.dcm", "rtstruct.dcm")]
    rng = np.random.default_rng(11)
    refused = 0
    for trial in range(450):
        damaged = bytearray(sources[trial % len(sources)])
        for _ in range(int(rng.integers(1, 6))):
            damaged[int(rng.integers(0, min(len(damaged), 1000)))] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        try:
            inspect_dicom(bytes(damaged), f"damaged_{trial}.dcm")
        except IntakeError as error:
            assert error.file_name == f"damaged_{trial}.dcm"
            refused += 1
    assert refused > 150
