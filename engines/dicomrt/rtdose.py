"""DICOM RT Dose: write a dose grid as a multi-frame RT Dose IOD, read any grid-based RT Dose back.

The written object is a complete RT Dose IOD (Patient, General Study, RT Series, Frame of
Reference, General Equipment, General Image, Image Plane, Image Pixel, Multi-frame, RT Dose,
SOP Common) on its own dose grid (usually coarser than the CT), filed under the CT's patient,
study and Frame of Reference.

Pixels are unsigned 16-bit with one Dose Grid Scaling for the whole grid: the largest dose maps
to 65535, so rounding costs at most half a step, ``max / 131070`` (7.6e-6 of the maximum). 16 bits
rather than 32: every planning system reads both, and dicom3tools' ``dciodvfy`` (our external
validator) aborts on 32-bit pixel data.

Geometry: voxel ``(i, j, k)`` of the grid lies at ``ImagePositionPatient + i * di * row_cosine +
j * dj * column_cosine + GridFrameOffsetVector[k] * normal``, with ``normal = row_cosine x
column_cosine`` and relative offsets (first value 0).
"""

from __future__ import annotations


import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import RE_VALID_UID

from rtgrid.engines.dicomrt.common import new_rt_dataset
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import ImageSeries, Volume

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
GRID_FRAME_OFFSET_VECTOR_TAG = Tag(0x3004, 0x000C)
PIXEL_MAX = np.iinfo(np.uint16).max
WRITABLE_SUMMATION_TYPES = frozenset({"PLAN"})
"""Summation types this writer can reference completely: PLAN needs only the RT Plan's UID.
BEAM / FRACTION / ... would also need fraction-group and beam numbers, which no caller has yet."""
SUMMATION_TYPES_NEEDING_PLAN = frozenset(
    {"PLAN", "MULTI_PLAN", "FRACTION", "BEAM", "BRACHY", "FRACTION_SESSION", "BEAM_SESSION", "BRACHY_SESSION",
     "CONTROL_POINT"}
)
"""Dose Summation Types for which the IOD requires a Referenced RT Plan Sequence (type 1C)."""
POSITION_TOLERANCE_MM = 0.01
"""Frame offsets may deviate this much from a uniform step (the same tolerance as CT intake)."""
_DIRECTION_TOLERANCE = 1e-6
_COSINE_TOLERANCE = 1e-3


class RtDoseError(EngineError, ValueError):
    """An RT Dose cannot be written or read as asked; the message names the attribute and the value."""


def write_rtdose(
    dose_gy: np.ndarray,
    grid: Volume,
    series: ImageSeries,
    *,
    referenced_rtplan_uid: str | None = None,
    dose_summation_type: str = "PLAN",
    comment: str = "",
) -> Dataset:
    """Build an RT Dose on ``grid`` that files under ``series``' patient, study and Frame of Reference.

    Parameters
    ----------
    dose_gy : np.ndarray
        Physical dose in Gy, shape ``grid.shape`` = ``(nz, ny, nx)``, finite and >= 0.
    grid : Volume
        The dose grid: its origin, spacing and direction are written, its voxels are ignored.
        The direction must be orthonormal and right-handed (slice axis = row x column cosine),
        as for every grid rtgrid builds from a CT.
    series : ImageSeries
        The CT the dose was computed on; the grid must lie in its Frame of Reference.
    referenced_rtplan_uid : str, optional
        SOP Instance UID of the RT Plan this dose belongs to. Required for ``"PLAN"`` (the IOD
        makes the Referenced RT Plan Sequence type 1C; ``dciodvfy`` reports its absence as an
        error). When the plan is written later, generate its UID first and pass it here.
    dose_summation_type : str
        ``"PLAN"``: the dose of all fractions of the plan.
    comment : str
        Dose Comment (at most 64 characters).

    Returns
    -------
    pydicom.Dataset
        With file meta (explicit VR little endian); save with ``ds.save_as(path, enforce_file_format=True)``.

    Raises
    ------
    RtDoseError
        Dose not on the grid, negative or not finite; a grid direction that is not orthonormal and
        right-handed; an unsupported summation type or a missing / malformed plan UID; a series
        without study or Frame of Reference UID; a comment over 64 characters.
    """
    dose = _checked_dose(dose_gy, grid)
    _check_direction(grid.direction)
    _check_summation(dose_summation_type, referenced_rtplan_uid)
    for uid_name in ("study_instance_uid", "frame_of_reference_uid"):
        if not getattr(series, uid_name):
            raise RtDoseError(f"series has an empty {uid_name}; the RT Dose could not be filed under it")
    if len(comment) > 64:
        raise RtDoseError(f"dose comment has {len(comment)} characters; Dose Comment (LO) allows 64")

    scaling_text = _dose_grid_scaling(float(dose.max()))
    pixels = np.rint(dose / float(scaling_text)).astype("<u2")
    nz, ny, nx = grid.shape
    di, dj, dk = (float(v) for v in grid.spacing_mm)
    ds = new_rt_dataset(series, RT_DOSE_STORAGE, "RTDOSE")
    # Frame of Reference: the CT's, so viewers overlay the dose without registration.
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Image.
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    # Image Plane.
    ds.ImagePositionPatient = [_decimal(v) for v in grid.origin_mm]
    ds.ImageOrientationPatient = [_decimal(v) for v in (*grid.direction[:, 0], *grid.direction[:, 1])]
    ds.PixelSpacing = [_decimal(dj), _decimal(di)]  # row spacing, then column spacing
    ds.SliceThickness = _decimal(dk)
    # Image Pixel (with the RT Dose module's specialisations).
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    # Multi-frame.
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = GRID_FRAME_OFFSET_VECTOR_TAG
    # RT Dose.
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    if comment:
        ds.DoseComment = comment
    ds.DoseSummationType = dose_summation_type
    if referenced_rtplan_uid is not None:
        plan = Dataset()
        plan.ReferencedSOPClassUID = RT_PLAN_STORAGE
        plan.ReferencedSOPInstanceUID = referenced_rtplan_uid
        ds.ReferencedRTPlanSequence = DicomSequence([plan])
    ds.GridFrameOffsetVector = [_decimal(k * dk) for k in range(nz)]
    ds.DoseGridScaling = scaling_text
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def read_rtdose(ds: Dataset, *, allow_relative: bool = False) -> tuple[np.ndarray, Volume]:
    """Read the dose grid of any grid-based RT Dose (ours or another system's).

    Parameters
    ----------
    ds : pydicom.Dataset
        An RT Dose with pixel data (compressed transfer syntaxes need pydicom's decoders).
    allow_relative : bool
        Accept Dose Units ``RELATIVE``; the values are then relative dose, not Gy.

    Returns
    -------
    dose_gy : np.ndarray
        ``float32``, shape ``(nz, ny, nx)`` = (frames, rows, columns): stored value x Dose Grid Scaling.
    volume : Volume
        The grid's geometry with ``dose_gy`` as voxels. Frame offsets that decrease give a slice
        axis opposite to the normal (``direction[:, 2] = -row x column cosine``).

    Raises
    ------
    RtDoseError
        Not an RT Dose, no pixel data, units other than GY (unless ``allow_relative``), missing
        or malformed geometry (orientation, spacing, frame offsets, scaling), or frame offsets
        that are not evenly spaced.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class != RT_DOSE_STORAGE and ds.get("Modality", "") != "RTDOSE":
        raise RtDoseError(
            f"dataset is not an RT Dose (SOP Class UID {sop_class!r}, Modality {ds.get('Modality', '')!r})"
        )
    if "PixelData" not in ds:
        raise RtDoseError("RT Dose has no Pixel Data: it holds no dose grid (DVH or dose points only?)")
    units = str(ds.get("DoseUnits", "") or "")
    if units != "GY" and not (units == "RELATIVE" and allow_relative):
        raise RtDoseError(
            f"Dose Units is {units!r}; only 'GY' gives Gy (pass allow_relative=True to read 'RELATIVE' dose)"
        )
    row_cosine, column_cosine = _cosines(ds)
    normal = np.cross(row_cosine, column_cosine)
    spacing = _numbers(ds, "PixelSpacing", 2)
    if np.any(spacing <= 0):
        raise RtDoseError(f"Pixel Spacing {spacing.tolist()} mm must be positive")
    dj, di = spacing
    origin = _numbers(ds, "ImagePositionPatient", 3)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    offsets = _frame_offsets(ds, frames, origin, row_cosine, column_cosine)
    if frames > 1:
        steps = np.diff(offsets)
        step = float((offsets[-1] - offsets[0]) / (frames - 1))
        if step == 0 or np.any(np.abs(steps - step) > POSITION_TOLERANCE_MM):
            raise RtDoseError(
                f"Grid Frame Offset Vector steps range {steps.min():.4f} to {steps.max():.4f} mm; "
                "a regular grid needs one step"
            )
    else:
        thickness = float(ds.get("SliceThickness", 0) or 0)
        # One plane: the slice step never enters a position; keep a positive, meaningful number.
        step = thickness if thickness > 0 else float(min(di, dj))
    if "DoseGridScaling" not in ds:
        raise RtDoseError("RT Dose has pixel data but no Dose Grid Scaling (type 1C)")
    scaling = float(ds.DoseGridScaling)
    if not scaling > 0:
        raise RtDoseError(f"Dose Grid Scaling {scaling} must be positive")

    stored = np.asarray(ds.pixel_array)
    expected = (frames, int(ds.Rows), int(ds.Columns))
    stored = stored.reshape(expected) if stored.size == np.prod(expected) else stored
    if stored.shape != expected:
        raise RtDoseError(f"pixel data has shape {stored.shape}, but frames x rows x columns is {expected}")
    dose = (stored.astype(np.float64) * scaling).astype(np.float32)
    direction = np.column_stack([row_cosine, column_cosine, np.sign(step) * normal])
    origin_first = origin + offsets[0] * normal
    volume = Volume(dose, origin_first, (di, dj, abs(step)), direction)
    return dose, volume


def _checked_dose(dose_gy: np.ndarray, grid: Volume) -> np.ndarray:
    dose = np.asarray(dose_gy)
    if dose.shape != grid.shape:
        raise RtDoseError(f"dose shape {dose.shape} is not the grid's shape {grid.shape}")
    if dose.dtype == np.bool_ or not np.issubdtype(dose.dtype, np.number):
        raise RtDoseError(f"dose must be numeric Gy, got dtype {dose.dtype}")
    dose = dose.astype(np.float64)
    if not np.all(np.isfinite(dose)):
        raise RtDoseError(f"dose holds {int(np.count_nonzero(~np.isfinite(dose)))} NaN or infinite values")
    if dose.min() < 0:
        index = np.unravel_index(int(np.argmin(dose)), dose.shape)
        raise RtDoseError(
            f"dose is negative ({dose.min():.6g} Gy at voxel (k, j, i) = {tuple(int(v) for v in index)}); "
            "a PHYSICAL dose is >= 0"
        )
    return dose


def _check_direction(direction: np.ndarray) -> None:
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
        raise RtDoseError(f"grid direction {direction.tolist()} is not orthonormal")
    if not np.allclose(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2], atol=_DIRECTION_TOLERANCE):
        raise RtDoseError(
            f"grid direction {direction.tolist()} is left-handed: its slice axis must be row cosine x column cosine"
        )


def _check_summation(summation_type: str, plan_uid: str | None) -> None:
    if summation_type not in WRITABLE_SUMMATION_TYPES:
        raise RtDoseError(
            f"Dose Summation Type {summation_type!r} is not supported; "
            f"this writer writes {sorted(WRITABLE_SUMMATION_TYPES)}"
        )
    if summation_type in SUMMATION_TYPES_NEEDING_PLAN and plan_uid is None:
        raise RtDoseError(
            f"Dose Summation Type {summation_type!r} requires the RT Plan's SOP Instance UID (Referenced RT Plan "
            "Sequence is type 1C); pass referenced_rtplan_uid (generate it before writing the RT Plan)"
        )
    if plan_uid is not None and (len(plan_uid) > 64 or not RE_VALID_UID.match(plan_uid)):
        raise RtDoseError(f"referenced_rtplan_uid {plan_uid!r} is not a valid DICOM UID")


def _dose_grid_scaling(max_gy: float) -> str:
    """Dose Grid Scaling as a DS of <= 16 characters, never below ``max / 65535`` (no overflow)."""
    if max_gy == 0:
        return "1"
    # 10 significant digits; the 2e-9 nudge makes the rounded value >= max / 65535.
    return f"{max_gy / PIXEL_MAX * (1 + 2e-9):.9e}"


def _decimal(value: float) -> str:
    """A Decimal String of at most 16 characters keeping sub-micrometre precision."""
    value = float(value)
    if value == 0:
        return "0"
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
        if len(text) <= 16 and text not in ("-0", ""):
            return text
    raise RtDoseError(f"{value} cannot be written as a 16-character DICOM decimal string")


def _numbers(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64) if value is not None else np.array([])
    except (TypeError, ValueError) as exc:
        raise RtDoseError(f"{keyword} {value!r} is not a list of numbers") from exc
    if numbers.size != count or not np.all(np.isfinite(numbers)):
        raise RtDoseError(f"{keyword} must hold {count} finite numbers, got {value!r}")
    return numbers


def _cosines(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    cosines = _numbers(ds, "ImageOrientationPatient", 6)
    row_cosine, column_cosine = cosines[:3], cosines[3:]
    if (
        abs(np.linalg.norm(row_cosine) - 1) > _COSINE_TOLERANCE
        or abs(np.linalg.norm(column_cosine) - 1) > _COSINE_TOLERANCE
        or abs(row_cosine @ column_cosine) > _COSINE_TOLERANCE
    ):
        raise RtDoseError(f"Image Orientation Patient {cosines.tolist()} is not two orthogonal unit vectors")
    return row_cosine, column_cosine


def _frame_offsets(
    ds: Dataset, frames: int, origin: np.ndarray, row_cosine: np.ndarray, column_cosine: np.ndarray
) -> np.ndarray:
    """Offsets (mm) of every frame from ImagePositionPatient along the normal."""
    if "GridFrameOffsetVector" not in ds or ds.GridFrameOffsetVector in (None, ""):
        if frames > 1:
            raise RtDoseError(f"RT Dose has {frames} frames but no Grid Frame Offset Vector")
        return np.zeros(1)
    if frames > 1 and ds.get("FrameIncrementPointer") != GRID_FRAME_OFFSET_VECTOR_TAG:
        raise RtDoseError(
            f"Frame Increment Pointer is {ds.get('FrameIncrementPointer')!r}, not Grid Frame Offset Vector (3004,000C)"
        )
    offsets = _numbers(ds, "GridFrameOffsetVector", frames)
    if offsets[0] != 0:
        # Absolute form: the planes' z coordinates, defined only for axial [1,0,0,0,1,0] orientation.
        if not (np.allclose(row_cosine, (1, 0, 0), atol=_COSINE_TOLERANCE)
                and np.allclose(column_cosine, (0, 1, 0), atol=_COSINE_TOLERANCE)):
            raise RtDoseError(
                f"Grid Frame Offset Vector starts at {offsets[0]} (absolute z positions), which the standard "
                "allows only for Image Orientation Patient [1, 0, 0, 0, 1, 0]"
            )
        if abs(offsets[0] - origin[2]) > POSITION_TOLERANCE_MM:
            raise RtDoseError(
                f"Grid Frame Offset Vector starts at z = {offsets[0]} mm, but Image Position Patient is at "
                f"z = {origin[2]} mm"
            )
        offsets = offsets - origin[2]
    return offsets
