"""Turn a set of uploaded DICOM image files into one validated ``ImageSeries``.

Bytes in (the master reads from its blob store), a volume with exact LPS geometry out. Every
rejection is a named ``IntakeError`` that says which file(s) and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rtgrid.engines.imaging.dicom_files import DicomFileInfo, InspectedFile, read_dicom
from rtgrid.engines.imaging.errors import (
    InconsistentGeometryError,
    IntakeError,
    InvalidAttributeError,
    InvalidPixelDataError,
    MissingSliceError,
    MixedSeriesError,
    UnsupportedModalityError,
)
from rtgrid.engines.imaging.volume import ImageSeries, SliceRef, Volume

# Modalities that never carry an image volume, named as such in the rejection message.
NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTTREAT", "SR", "KO", "PR", "REG", "SEG", "DOC", "PLAN"}
)
ORIENTATION_TOLERANCE = 1e-4
"""Largest difference between direction cosines of two slices of one series."""
PIXEL_SPACING_TOLERANCE_MM = 1e-4
POSITION_TOLERANCE_MM = 1e-2
"""Slices closer than this along the normal are duplicates; in-plane offsets above it are a shear."""
SLICE_STEP_RELATIVE_TOLERANCE = 1e-2
"""Steps may differ from the median by this fraction (or POSITION_TOLERANCE_MM) before rejection."""
MISSING_SLICE_FACTOR = 1.5
"""A step larger than this times the median step is a missing slice."""


def group_series(infos: Sequence[DicomFileInfo]) -> list[list[DicomFileInfo]]:
    """Group inspected files by (repaired) SeriesInstanceUID.

    Parameters
    ----------
    infos : sequence of DicomFileInfo
        Files as returned by ``inspect_dicom``.

    Returns
    -------
    list of list of DicomFileInfo
        One list per series, in order of each series' first file; files keep their input order.
    """
    groups: dict[str, list[DicomFileInfo]] = {}
    for info in infos:
        groups.setdefault(info.series_instance_uid, []).append(info)
    return list(groups.values())


def load_series(files: Sequence[tuple[str, bytes]], *, expected_modalities: Sequence[str] = ("CT",)) -> ImageSeries:
    """Check, sort and stack the files of one image series into a volume.

    Parameters
    ----------
    files : sequence of (file_name, data)
        The uploaded files of exactly one series, in any order.
    expected_modalities : sequence of str
        Modalities accepted as this image series.

    Returns
    -------
    ImageSeries
        ``volume.voxels[k]`` is the k-th slice along the slice normal (row cosine x column
        cosine), in HU for CT: ``int16`` when every slope and intercept is an integer, else
        ``float32``. ``origin_mm`` is the ImagePositionPatient of slice 0; ``direction`` has
        columns (row cosine, column cosine, normal); ``spacing_mm`` is (column spacing, row
        spacing, slice step). ``slices[k]`` references the file of ``voxels[k]``.

    Raises
    ------
    IntakeError
        No files were given; or any per-file error of ``inspect_dicom``.
    UnsupportedModalityError
        A file's modality is not one of ``expected_modalities``.
    MixedSeriesError
        Files of more than one series (or patient) were given.
    InconsistentGeometryError
        Orientation, pixel spacing, rows/columns or frame of reference differ between slices;
        orientation is not orthonormal; two slices share a position; slices are sheared (gantry
        tilt); or slice steps are irregular.
    MissingSliceError
        A step exceeds 1.5 times the median step; names the two neighbouring files.
    InvalidAttributeError
        A slice lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing.
    InvalidPixelDataError
        A file has no pixel data, several frames or several samples per pixel.
    """
    if not files:
        raise IntakeError("(no files)", "no files were given as the image series")
    return series_from_inspected([read_dicom(data, name) for name, data in files],
                                 expected_modalities=expected_modalities)


def series_from_inspected(
    inspected: Sequence[InspectedFile], *, expected_modalities: Sequence[str] = ("CT",)
) -> ImageSeries:
    """:func:`load_series` on files ``read_dicom`` has checked already (each parsed once, perhaps
    elsewhere); its returns and exceptions."""
    if not inspected:
        raise IntakeError("(no files)", "no files were given as the image series")
    inspected = list(inspected)
    _check_modalities(inspected, tuple(expected_modalities))
    _check_single_series([item.info for item in inspected])
    for item in inspected:
        _check_image_file(item.info)
    _check_same_geometry([item.info for item in inspected])

    row_cosine, column_cosine, normal = _orthonormal_axes(inspected[0].info)
    ordered = sorted(inspected, key=lambda item: (_along(item.info, normal), item.info.file_name))
    positions = np.array([_along(item.info, normal) for item in ordered])
    _check_positions(ordered, positions, normal)
    step_mm, step_notes = _slice_step(ordered, positions)

    voxels = _rescaled_stack(ordered)
    first = ordered[0].info
    row_spacing, column_spacing = first.pixel_spacing_mm  # type: ignore[misc]
    volume = Volume(
        voxels=voxels,
        origin_mm=np.array(first.image_position_mm),
        spacing_mm=np.array([column_spacing, row_spacing, step_mm]),
        direction=np.column_stack([row_cosine, column_cosine, normal]),
    )
    slices = tuple(
        SliceRef(
            sop_class_uid=item.info.sop_class_uid,
            sop_instance_uid=item.info.sop_instance_uid,
            z_index=k,
            position_mm=item.info.image_position_mm,  # type: ignore[arg-type]
        )
        for k, item in enumerate(ordered)
    )
    return ImageSeries(
        volume=volume,
        modality=first.modality,
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        slices=slices,
        patient_id=first.patient_id,
        patient_name=first.patient_name,
        patient_birth_date=first.patient_birth_date,
        patient_sex=first.patient_sex,
        study_id=first.study_id,
        study_date=first.study_date,
        study_time=first.study_time,
        accession_number=first.accession_number,
        referring_physician_name=first.referring_physician_name,
        notes=_summarised_notes([item.info for item in ordered]) + step_notes,
    )


def load_series_dir(path: Path | str, *, expected_modalities: Sequence[str] = ("CT",)) -> ImageSeries:
    """``load_series`` on the files of one folder (not recursive).

    Parameters
    ----------
    path : Path or str
        A folder holding one series: its ``*.dcm`` files if there are any, otherwise every regular
        file whose name does not start with a dot.
    expected_modalities : sequence of str
        As for ``load_series``.

    Returns
    -------
    ImageSeries

    Raises
    ------
    IntakeError
        The folder does not exist or holds no files; or any error of ``load_series``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise IntakeError(str(folder), "is not a folder")
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    dicom_named = [p for p in candidates if p.suffix.lower() == ".dcm"]
    chosen = dicom_named or candidates
    if not chosen:
        raise IntakeError(str(folder), "holds no files")
    return load_series([(p.name, p.read_bytes()) for p in chosen], expected_modalities=expected_modalities)


# --- series-level checks ------------------------------------------------------------------------


def _check_modalities(inspected: list[InspectedFile], expected: tuple[str, ...]) -> None:
    wanted = " or ".join(expected)
    for item in inspected:
        modality = item.info.modality
        if modality in expected:
            continue
        if modality in NON_IMAGE_MODALITIES:
            raise UnsupportedModalityError(
                item.info.file_name, f"modality {modality} is not an image series (expected {wanted})"
            )
        raise UnsupportedModalityError(
            item.info.file_name, f"modality {modality} is not accepted here (expected {wanted})"
        )


def _check_single_series(infos: list[DicomFileInfo]) -> None:
    groups = group_series(infos)
    if len(groups) > 1:
        described = "; ".join(f"{g[0].series_instance_uid} ({len(g)} files, e.g. {g[0].file_name})" for g in groups)
        raise MixedSeriesError.for_files(
            [g[0].file_name for g in groups], f"{len(groups)} series were given as one: {described}"
        )
    patients = {}
    for info in infos:
        patients.setdefault(info.patient_id, info.file_name)
    if len(patients) > 1:
        described = "; ".join(f"PatientID {pid!r} in {name}" for pid, name in patients.items())
        raise MixedSeriesError.for_files(list(patients.values()), f"one series holds several patients: {described}")


def _check_image_file(info: DicomFileInfo) -> None:
    name = info.file_name
    if not info.has_pixel_data:
        raise InvalidPixelDataError(name, f"{info.modality} file has no PixelData")
    if info.number_of_frames != 1:
        raise InvalidPixelDataError(
            name, f"multi-frame image with {info.number_of_frames} frames; intake expects one slice per file"
        )
    if info.samples_per_pixel != 1 or info.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidPixelDataError(
            name,
            f"{info.samples_per_pixel} samples per pixel, {info.photometric_interpretation}: "
            "intake expects one MONOCHROME sample per pixel",
        )
    for keyword, value in (
        ("ImagePositionPatient", info.image_position_mm),
        ("ImageOrientationPatient", info.image_orientation),
        ("PixelSpacing", info.pixel_spacing_mm),
    ):
        if value is None:
            raise InvalidAttributeError(name, f"{keyword} is missing; the slice cannot be placed in the volume")
    if min(info.pixel_spacing_mm) <= 0:  # type: ignore[arg-type]
        raise InvalidAttributeError(name, f"PixelSpacing {info.pixel_spacing_mm} must be positive")


def _check_same_geometry(infos: list[DicomFileInfo]) -> None:
    reference = infos[0]
    for info in infos[1:]:
        pair = [reference.file_name, info.file_name]
        if not np.allclose(info.image_orientation, reference.image_orientation, atol=ORIENTATION_TOLERANCE, rtol=0):
            raise InconsistentGeometryError.for_files(
                pair,
                f"ImageOrientationPatient {list(info.image_orientation)} in {info.file_name} differs from "
                f"{list(reference.image_orientation)} in {reference.file_name} (non-parallel slices)",
            )
        if not np.allclose(info.pixel_spacing_mm, reference.pixel_spacing_mm, atol=PIXEL_SPACING_TOLERANCE_MM, rtol=0):
            raise InconsistentGeometryError.for_files(
                pair,
                f"PixelSpacing {list(info.pixel_spacing_mm)} mm in {info.file_name} differs from "
                f"{list(reference.pixel_spacing_mm)} mm in {reference.file_name}",
            )
        if (info.rows, info.columns) != (reference.rows, reference.columns):
            raise InconsistentGeometryError.for_files(
                pair,
                f"{info.rows} x {info.columns} pixels (rows x columns) in {info.file_name} differ from "
                f"{reference.rows} x {reference.columns} in {reference.file_name}",
            )
        if info.frame_of_reference_uid != reference.frame_of_reference_uid:
            raise InconsistentGeometryError.for_files(
                pair,
                f"FrameOfReferenceUID {info.frame_of_reference_uid} in {info.file_name} differs from "
                f"{reference.frame_of_reference_uid} in {reference.file_name}",
            )


def _orthonormal_axes(info: DicomFileInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cosines = np.array(info.image_orientation, dtype=np.float64)
    row_cosine, column_cosine = cosines[:3], cosines[3:]
    lengths = (np.linalg.norm(row_cosine), np.linalg.norm(column_cosine))
    if abs(lengths[0] - 1) > 1e-3 or abs(lengths[1] - 1) > 1e-3 or abs(row_cosine @ column_cosine) > 1e-3:
        raise InconsistentGeometryError(
            info.file_name,
            f"ImageOrientationPatient {list(info.image_orientation)} is not two orthogonal unit vectors",
        )
    return row_cosine, column_cosine, np.cross(row_cosine, column_cosine)


def _along(info: DicomFileInfo, normal: np.ndarray) -> float:
    return float(np.asarray(info.image_position_mm) @ normal)


def _check_positions(ordered: list[InspectedFile], positions: np.ndarray, normal: np.ndarray) -> None:
    first = ordered[0].info
    origin = np.asarray(first.image_position_mm)
    for k in range(1, len(ordered)):
        info, previous = ordered[k].info, ordered[k - 1].info
        if positions[k] - positions[k - 1] < POSITION_TOLERANCE_MM:
            raise InconsistentGeometryError.for_files(
                [previous.file_name, info.file_name],
                f"duplicate slice position {positions[k]:.3f} mm along the slice normal "
                f"(ImagePositionPatient {list(previous.image_position_mm)} and {list(info.image_position_mm)})",
            )
        in_plane = np.asarray(info.image_position_mm) - origin - (positions[k] - positions[0]) * normal
        shear_mm = float(np.linalg.norm(in_plane))
        if shear_mm > POSITION_TOLERANCE_MM:
            angle = np.degrees(np.arctan2(shear_mm, positions[k] - positions[0]))
            raise InconsistentGeometryError.for_files(
                [first.file_name, info.file_name],
                f"slice positions drift {shear_mm:.3f} mm sideways over {positions[k] - positions[0]:.3f} mm "
                f"along the slice normal ({angle:.2f} degree gantry tilt or sheared stack); resample to an "
                "orthogonal grid before upload",
            )


def _slice_step(ordered: list[InspectedFile], positions: np.ndarray) -> tuple[float, tuple[str, ...]]:
    if len(ordered) == 1:
        info = ordered[0].info
        spacing = _positive_float(ordered[0].dataset.get("SpacingBetweenSlices"))
        if spacing is not None:
            return spacing, ("single slice; slice step taken from SpacingBetweenSlices",)
        if info.slice_thickness_mm is not None and info.slice_thickness_mm > 0:
            return info.slice_thickness_mm, ("single slice; slice step taken from SliceThickness",)
        return 1.0, ("single slice without SliceThickness; slice step set to 1 mm",)
    steps = np.diff(positions)
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        before, after = ordered[k].info, ordered[k + 1].info
        if step > MISSING_SLICE_FACTOR * median:
            raise MissingSliceError.for_files(
                [before.file_name, after.file_name],
                f"gap of {step:.3f} mm between the slices at {positions[k]:.3f} mm and {positions[k + 1]:.3f} mm "
                f"along the slice normal (ImagePositionPatient {list(before.image_position_mm)} and "
                f"{list(after.image_position_mm)}); median step {median:.3f} mm, so about "
                f"{max(1, round(step / median) - 1)} slice(s) are missing",
            )
        if abs(step - median) > max(POSITION_TOLERANCE_MM, SLICE_STEP_RELATIVE_TOLERANCE * median):
            raise InconsistentGeometryError.for_files(
                [before.file_name, after.file_name],
                f"irregular slice step {step:.3f} mm between {before.file_name} and {after.file_name} "
                f"(median {median:.3f} mm); a volume needs one slice step",
            )
    return float((positions[-1] - positions[0]) / (len(positions) - 1)), ()


def _rescaled_stack(ordered: list[InspectedFile]) -> np.ndarray:
    """The slices' stored values times RescaleSlope plus RescaleIntercept, stacked: ``int16`` when
    every slope and intercept is an integer and every value fits, else ``float32``.

    Slice by slice into the one output array: whole-volume int32 temporaries of a 512 x 512 x 300
    CT cost seconds in fresh pages, a slice's stay in the cache."""
    slopes = [item.info.rescale_slope for item in ordered]
    intercepts = [item.info.rescale_intercept for item in ordered]
    shape = (len(ordered), *ordered[0].pixels.shape)  # type: ignore[union-attr]
    if all(float(v).is_integer() for v in (*slopes, *intercepts)):
        limits = np.iinfo(np.int16)
        out = np.empty(shape, dtype=np.int16)
        work = np.empty(shape[1:], dtype=np.int32)
        for k, item in enumerate(ordered):
            np.multiply(item.pixels, int(slopes[k]), out=work, dtype=np.int32, casting="unsafe")
            work += int(intercepts[k])
            if work.min() < limits.min or work.max() > limits.max:
                break
            out[k] = work
        else:
            return out
        out = np.empty(shape, dtype=np.float32)
        for k, item in enumerate(ordered):
            out[k] = item.pixels.astype(np.int32) * int(slopes[k]) + int(intercepts[k])  # type: ignore[union-attr]
        return out
    out = np.empty(shape, dtype=np.float32)
    for k, item in enumerate(ordered):
        out[k] = item.pixels * slopes[k] + intercepts[k]
    return out


def _summarised_notes(infos: list[DicomFileInfo]) -> tuple[str, ...]:
    counts = Counter(note for info in infos for note in info.notes)
    return tuple(f"{note} ({count} of {len(infos)} files)" for note, count in counts.items())


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
