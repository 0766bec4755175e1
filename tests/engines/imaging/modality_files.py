"""Write small MR and PET series as DICOM Part 10 bytes (in memory), with tags a test can change."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rtgrid.engines.imaging.volume import Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
Files = list[tuple[str, bytes]]
Edit = Callable[[Dataset, int], None]


def small_volume(shape=(6, 20, 24), spacing=(2.0, 2.0, 3.0), seed: int = 3, high: float = 4000.0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.uniform(0.0, high, size=shape).astype(np.float32), [-20.0, -25.0, 40.0], spacing)


def _base(volume: Volume, k: int, modality: str, sop_class: str, uids: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID, ds.PatientName = "REG-TEST", "Test^Registration"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.StudyDate, ds.StudyTime = "20240312", "091500"
    ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
    position = volume.index_to_lps(np.array([0.0, 0.0, float(k)]))
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*volume.direction[:, 0], *volume.direction[:, 1])]
    ds.PixelSpacing = [f"{volume.spacing_mm[1]:.4f}", f"{volume.spacing_mm[0]:.4f}"]
    ds.SliceThickness = f"{volume.spacing_mm[2]:.4f}"
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _bytes(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def mr_files(volume: Volume, *, echoes: tuple[int, ...] = (1,), edit: Edit | None = None) -> Files:
    """One single-frame MR file per slice and echo (uint16 signal, no rescale)."""
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    files = []
    for echo in echoes:
        for k in range(volume.shape[0]):
            ds = _base(volume, k, "MR", MR_IMAGE_STORAGE, uids)
            ds.EchoNumbers = echo
            ds.EchoTime, ds.RepetitionTime = f"{10.0 * echo:.1f}", "500"
            ds.MagneticFieldStrength, ds.ScanningSequence, ds.SequenceName = "1.5", "SE", "t1_se"
            ds.PixelData = np.clip(volume.voxels[k] * echo, 0, 65535).astype("<u2").tobytes()
            if edit is not None:
                edit(ds, k)
            files.append((f"MR_e{echo}_{k:03d}.dcm", _bytes(ds)))
    return files


def enhanced_mr_file(volume: Volume) -> Files:
    """One Enhanced MR Image Storage file holding every slice as a frame."""
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    ds = _base(volume, 0, "MR", ENHANCED_MR_IMAGE_STORAGE, uids)
    ds.NumberOfFrames = volume.shape[0]
    ds.PixelData = np.clip(volume.voxels, 0, 65535).astype("<u2").tobytes()
    return [("MR_enhanced.dcm", _bytes(ds))]


PET_TAGS = {
    "weight_kg": "72.5",
    "dose_bq": "370000000",
    "half_life_s": "6586.2",
    "injection": "20240312093000.00",
    "series_time": "103000",
}


def pet_files(volume_bqml: Volume, *, edit: Edit | None = None, injection_as_time: bool = False) -> Files:
    """One PET file per slice: activity (Bq/mL) stored as uint16 with a per-slice RescaleSlope, BQML, START."""
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    files = []
    for k in range(volume_bqml.shape[0]):
        ds = _base(volume_bqml, k, "PT", PET_IMAGE_STORAGE, uids)
        ds.SeriesDate, ds.SeriesTime = "20240312", PET_TAGS["series_time"]
        start = dt.datetime.strptime("20240312" + PET_TAGS["series_time"], "%Y%m%d%H%M%S")
        ds.AcquisitionDate, ds.AcquisitionTime = "20240312", (start + dt.timedelta(seconds=2 * k)).strftime("%H%M%S")
        ds.Units, ds.DecayCorrection, ds.CorrectedImage = "BQML", "START", ["DECY", "ATTN", "SCAT"]
        ds.PatientWeight = PET_TAGS["weight_kg"]
        radio = Dataset()
        radio.Radiopharmaceutical = "Fluorodeoxyglucose F^18^"
        radio.RadionuclideTotalDose = PET_TAGS["dose_bq"]
        radio.RadionuclideHalfLife = PET_TAGS["half_life_s"]
        if injection_as_time:
            radio.RadiopharmaceuticalStartTime = PET_TAGS["injection"][8:]
        else:
            radio.RadiopharmaceuticalStartDateTime = PET_TAGS["injection"]
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
        plane = volume_bqml.voxels[k].astype(np.float64)
        slope = max(float(plane.max()), 1.0) / 32000.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.rint(plane / float(f"{slope:.10g}")).astype("<u2").tobytes()
        if edit is not None:
            edit(ds, k)
        files.append((f"PT_{k:03d}.dcm", _bytes(ds)))
    return files
