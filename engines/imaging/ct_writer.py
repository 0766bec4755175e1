"""Write a ``Volume`` of HU as a CT Image Storage series (one Part 10 file per slice)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from rtgrid.engines.imaging.errors import SeriesWriteError
from rtgrid.engines.imaging.volume import Volume

MANUFACTURER = "rtgrid"
IMPLEMENTATION_VERSION_NAME = "RTGRID_0_1"
SERIES_NUMBER = 1
_INT16 = np.iinfo(np.int16)
_DIRECTION_TOLERANCE = 1e-6


def write_ct_series(
    volume: Volume,
    out_dir: Path,
    *,
    patient_id: str,
    patient_name: str,
    study_description: str = "",
    series_description: str = "",
    uid_prefix: str | None = None,
) -> list[Path]:
    """Write ``volume`` (HU) as a CT Image Storage series, explicit VR little endian.

    Pixels are stored as signed 16-bit integers with RescaleSlope 1 and RescaleIntercept 0, so
    stored value == HU; float voxels are rounded to the nearest HU. Study, Series, Frame of
    Reference and SOP Instance UIDs are fresh for every call.

    Parameters
    ----------
    volume : Volume
        HU voxels ``[k, j, i]`` with an orthonormal, right-handed ``direction`` (slice axis =
        row cosine x column cosine, as DICOM readers reconstruct it).
    out_dir : Path
        Folder to write into (created if missing); files are named ``CT_0000.dcm`` ... by slice.
    patient_id, patient_name : str
        Patient identity (DICOM PN format for the name, e.g. ``"Doe^Jane"``).
    study_description, series_description : str
        Free text shown by PACS and planning systems.
    uid_prefix : str, optional
        Organisation root for generated UIDs, ending with a dot; pydicom's root when ``None``.

    Returns
    -------
    list of Path
        The written files, slice ``k`` at index ``k``.

    Raises
    ------
    SeriesWriteError
        The direction is not orthonormal and right-handed, or a voxel does not fit int16 HU.
    """
    _check_direction(volume.direction)
    hu = _int16_hu(volume.voxels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid, series_uid, frame_uid = (generate_uid(prefix=uid_prefix) for _ in range(3))
    row_cosine, column_cosine = volume.direction[:, 0], volume.direction[:, 1]
    nz, ny, nx = volume.shape
    di, dj, dk = (float(v) for v in volume.spacing_mm)

    paths = []
    for k in range(nz):
        position = volume.index_to_lps(np.array([0.0, 0.0, float(k)]))
        ds = _common_attributes(
            patient_id=patient_id,
            patient_name=patient_name,
            study_description=study_description,
            series_description=series_description,
            date=date,
            time=time,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
        )
        sop_instance_uid = generate_uid(prefix=uid_prefix)
        ds.SOPInstanceUID = sop_instance_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosine, *column_cosine)]
        ds.PixelSpacing = [_ds(dj), _ds(di)]  # row spacing, column spacing
        ds.SliceThickness = _ds(dk)
        ds.SpacingBetweenSlices = _ds(dk)
        ds.SliceLocation = _ds(float(position @ volume.direction[:, 2]))
        ds.Rows, ds.Columns = ny, nx
        slice_hu = hu[k]
        ds.SmallestImagePixelValue = int(slice_hu.min())
        ds.LargestImagePixelValue = int(slice_hu.max())
        ds.PixelData = np.ascontiguousarray(slice_hu, dtype="<i2").tobytes()
        ds.file_meta = _file_meta(sop_instance_uid)
        path = out_dir / f"CT_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _common_attributes(
    *,
    patient_id: str,
    patient_name: str,
    study_description: str,
    series_description: str,
    date: str,
    time: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
) -> Dataset:
    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # General Image / CT Image
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionNumber = 1
    ds.KVP = ""
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = series_description
    ds.PatientPosition = "HFS"
    ds.Laterality = ""  # type 2C: dciodvfy cannot evaluate the paired-body-part condition
    # Frame of Reference
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    # VOI LUT: a soft-tissue window for viewers
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _check_direction(direction: np.ndarray) -> None:
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
        raise SeriesWriteError(f"direction {direction.tolist()} is not orthonormal")
    if not np.allclose(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2], atol=_DIRECTION_TOLERANCE):
        raise SeriesWriteError(
            f"direction {direction.tolist()} is left-handed: its slice axis must be row cosine x column cosine"
        )


def _int16_hu(voxels: np.ndarray) -> np.ndarray:
    if voxels.dtype == np.bool_ or not np.issubdtype(voxels.dtype, np.number):
        raise SeriesWriteError(f"voxels must be numeric HU, got dtype {voxels.dtype}")
    if not np.all(np.isfinite(voxels)):
        raise SeriesWriteError("voxels hold NaN or infinite values; HU must be finite")
    rounded = np.rint(voxels) if np.issubdtype(voxels.dtype, np.floating) else voxels
    low, high = rounded.min(), rounded.max()
    if low < _INT16.min or high > _INT16.max:
        raise SeriesWriteError(f"HU range [{low}, {high}] does not fit int16 [{_INT16.min}, {_INT16.max}]")
    return rounded.astype(np.int16)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters that keeps sub-micrometre precision."""
    value = float(value)
    if value == 0:
        return "0"
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
        if len(text) <= 16:
            return text
    raise SeriesWriteError(f"{value} cannot be written as a 16-character DICOM decimal string")
