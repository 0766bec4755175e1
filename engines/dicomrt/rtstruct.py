"""DICOM RT Structure Set: write from masks, read back to masks or raw polygons.

The written object is a complete RT Structure Set IOD (Patient, General Study, RT Series,
General Equipment, Frame of Reference, Structure Set, ROI Contour, RT ROI Observations, SOP Common) that references
the image series it was drawn on: the same StudyInstanceUID, the CT's SeriesInstanceUID, and
for every contour the SOP Class/Instance UID of its slice as the hospital holds it
(``series.slices[k]``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.valuerep import VR

from rtgrid.engines.dicomrt.common import new_rt_dataset
from rtgrid.engines.dicomrt.contours import mask_to_contours, rasterize_even_odd
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import ImageSeries, SliceRef, Volume

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# The SOP Class the standard prescribes for RT Referenced Study items (Study Component Management).
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"
ROI_INTERPRETED_TYPES = frozenset(
    {
        "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "BOLUS", "AVOIDANCE",
        "ORGAN", "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY",
        "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT",
        "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
    }
)
GENERATION_ALGORITHMS = frozenset({"AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"})
# Contour vertices are written with 0.1 micrometre resolution: far below any voxel, within 16 chars.
CONTOUR_DECIMALS = 4
CONTOUR_DATA_TAG = 0x30060050


class RtStructError(EngineError, ValueError):
    """An RT Structure Set cannot be written or read as asked; the message names the ROI and the problem."""


@dataclass(frozen=True)
class StructureSpec:
    """One structure to write.

    Attributes
    ----------
    name : str
        ROI Name (at most 64 characters).
    mask : np.ndarray
        Boolean ``(nz, ny, nx)`` on ``series.volume``'s grid.
    rt_roi_interpreted_type : str
        e.g. ``"EXTERNAL"``, ``"ORGAN"``, ``"PTV"``, ``"GTV"``, ``"CAVITY"``, ``"AVOIDANCE"``.
    color : tuple[int, int, int]
        Display colour, 0..255 each.
    generation_algorithm : str
        ``"AUTOMATIC"``, ``"SEMIAUTOMATIC"`` or ``"MANUAL"``.
    description : str
        Free text (ROI Description), optional.
    """

    name: str
    mask: np.ndarray
    rt_roi_interpreted_type: str
    color: tuple[int, int, int]
    generation_algorithm: str
    description: str = ""


@dataclass(frozen=True)
class RoiInfo:
    """What a structure set says about one ROI, besides its contours.

    ``color`` is ``None`` when the file gives no ROI Display Color; ``interpreted_type`` is ``""``
    when the file has no observation for the ROI.
    """

    number: int
    name: str
    interpreted_type: str
    generation_algorithm: str
    color: tuple[int, int, int] | None
    frame_of_reference_uid: str


def write_rtstruct(
    series: ImageSeries,
    structures: Sequence[StructureSpec],
    *,
    label: str = "RTGRID",
    description: str = "",
) -> Dataset:
    """Build an RT Structure Set that references ``series``.

    Parameters
    ----------
    series : ImageSeries
        The images the structures were drawn on; patient and study are copied from it.
    structures : Sequence[StructureSpec]
        ROIs in the order to number them (1, 2, ...). Empty masks are listed without contours.
    label : str
        Structure Set Label (at most 16 characters).
    description : str
        Structure Set Description.

    Returns
    -------
    pydicom.Dataset
        With file meta; save it with ``ds.save_as(path, enforce_file_format=True)``.

    Raises
    ------
    RtStructError
        A mask off the series grid, an unknown interpreted type or algorithm, a bad colour,
        a duplicate or over-long name, or a series whose slices do not match its volume.
    """
    _check_series(series)
    _check_specs(series, structures)
    if not 0 < len(label) <= 16:
        raise RtStructError(f"structure set label {label!r} must have 1 to 16 characters")
    ds = new_rt_dataset(series, RT_STRUCTURE_SET_STORAGE, "RTSTRUCT")
    ds.SeriesDescription = description[:64]
    ds.InstanceNumber = 1
    # Frame of Reference: the CT's, so viewers register the contours without asking.
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Structure Set.
    ds.StructureSetLabel = label
    if description:
        ds.StructureSetDescription = description
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(series)])

    roi_items, contour_items, observation_items = [], [], []
    for number, spec in enumerate(structures, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = spec.name
        if spec.description:
            roi.ROIDescription = spec.description
        roi.ROIGenerationAlgorithm = spec.generation_algorithm
        roi_items.append(roi)

        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [int(c) for c in spec.color]
        polygons = mask_to_contours(np.asarray(spec.mask, dtype=bool), series.volume)
        if polygons:
            roi_contour.ContourSequence = DicomSequence(
                [_contour_item(c.points_mm, series.slices[c.z_index], n) for n, c in enumerate(polygons, start=1)]
            )
        contour_items.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIObservationLabel = spec.name[:16]
        observation.RTROIInterpretedType = spec.rt_roi_interpreted_type
        observation.ROIInterpreter = ""
        observation_items.append(observation)

    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)
    _mark_encoded_as_written(ds)
    return ds


def _mark_encoded_as_written(ds: Dataset) -> None:
    """Declare ``ds`` and its items encoded as the file is written (explicit VR little endian).

    Otherwise pydicom, seeing datasets of no known encoding or character set, decodes every raw
    ContourData value into floats before writing the same bytes back: half of a large structure
    set's write time. Items carry no Specific Character Set; they are written in the default one.
    """
    if "SpecificCharacterSet" in ds:
        character_set = convert_encodings(ds.SpecificCharacterSet)
    else:
        character_set = default_encoding
    ds.set_original_encoding(False, True, character_set)
    for element in ds.elements():  # raw elements stay raw
        if element.VR == VR.SQ:
            for item in element.value:
                _mark_encoded_as_written(item)


def read_rtstruct_rois(ds: Dataset) -> list[RoiInfo]:
    """List the ROIs of a structure set with their type, algorithm, colour and frame of reference.

    Parameters
    ----------
    ds : pydicom.Dataset
        An RT Structure Set.

    Returns
    -------
    list[RoiInfo]
        In StructureSetROISequence order.

    Raises
    ------
    RtStructError
        When the dataset is not an RT Structure Set or an ROI entry lacks its number.
    """
    _check_is_rtstruct(ds)
    types = {}
    for obs in ds.get("RTROIObservationsSequence", []):
        types[int(obs.ReferencedROINumber)] = str(obs.get("RTROIInterpretedType", "") or "")
    colors = {}
    for item in ds.get("ROIContourSequence", []):
        color = item.get("ROIDisplayColor")
        if color is not None and len(color) == 3:
            colors[int(item.ReferencedROINumber)] = tuple(int(c) for c in color)
    rois = []
    for index, roi in enumerate(ds.get("StructureSetROISequence", [])):
        if "ROINumber" not in roi:
            raise RtStructError(f"StructureSetROISequence item {index} ({roi.get('ROIName', '?')!r}) has no ROI Number")
        number = int(roi.ROINumber)
        rois.append(
            RoiInfo(
                number=number,
                name=str(roi.get("ROIName", "") or ""),
                interpreted_type=types.get(number, ""),
                generation_algorithm=str(roi.get("ROIGenerationAlgorithm", "") or ""),
                color=colors.get(number),
                frame_of_reference_uid=str(roi.get("ReferencedFrameOfReferenceUID", "") or ""),
            )
        )
    return rois


def rtstruct_contours(ds: Dataset) -> dict[str, list[np.ndarray]]:
    """The closed planar polygons of every ROI, in LPS mm.

    Parameters
    ----------
    ds : pydicom.Dataset
        An RT Structure Set.

    Returns
    -------
    dict[str, list[np.ndarray]]
        ROI name -> list of ``(N, 3)`` float64 polygons; ROIs without contours map to ``[]``.
        Only ``CLOSED_PLANAR`` contours are regions; points and open lines are left out.

    Raises
    ------
    RtStructError
        Duplicate ROI names, contours for an unknown ROI number, or Contour Data whose length
        does not match its Number of Contour Points.
    """
    rois = read_rtstruct_rois(ds)
    names: dict[int, str] = {}
    for roi in rois:
        if roi.name in names.values():
            raise RtStructError(f"ROI name {roi.name!r} occurs more than once in the structure set")
        names[roi.number] = roi.name
    polygons: dict[str, list[np.ndarray]] = {roi.name: [] for roi in rois}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number not in names:
            raise RtStructError(f"ROIContourSequence refers to ROI number {number}, which StructureSetROISequence lacks")
        name = names[number]
        for index, contour in enumerate(item.get("ContourSequence", [])):
            if contour.get("ContourGeometricType", "") != "CLOSED_PLANAR":
                continue
            data = np.asarray(contour.get("ContourData", []), dtype=np.float64)
            declared = int(contour.get("NumberOfContourPoints", -1))
            if data.size % 3 or data.size // 3 != declared:
                raise RtStructError(
                    f"ROI {name!r} contour {index}: Contour Data has {data.size} values "
                    f"but Number of Contour Points is {declared}"
                )
            if declared < 3:
                raise RtStructError(f"ROI {name!r} contour {index} has {declared} points; a closed polygon needs 3")
            polygons[name].append(data.reshape(-1, 3))
    return polygons


def read_rtstruct(
    ds: Dataset, volume: Volume, *, frame_of_reference_uid: str | None = None
) -> dict[str, np.ndarray]:
    """Rasterize every ROI of a structure set onto ``volume``'s grid.

    Parameters
    ----------
    ds : pydicom.Dataset
        An RT Structure Set.
    volume : Volume
        The grid to rasterize on (the CT, a dose grid, ...).
    frame_of_reference_uid : str, optional
        The grid's Frame of Reference UID; when given, every ROI must be drawn in it.

    Returns
    -------
    dict[str, np.ndarray]
        ROI name -> boolean ``(nz, ny, nx)`` mask (all False for ROIs without contours).

    Raises
    ------
    RtStructError
        A Frame of Reference mismatch (naming the ROI and both UIDs), or unreadable contours.
    """
    if frame_of_reference_uid is not None:
        for roi in read_rtstruct_rois(ds):
            if roi.frame_of_reference_uid != frame_of_reference_uid:
                raise RtStructError(
                    f"ROI {roi.name!r} is drawn in Frame of Reference {roi.frame_of_reference_uid!r}, "
                    f"but the grid is in {frame_of_reference_uid!r}"
                )
    return {name: rasterize_contours(polys, volume) for name, polys in rtstruct_contours(ds).items()}


def rasterize_contours(polygons: Sequence[np.ndarray], volume: Volume) -> np.ndarray:
    """Rasterize planar polygons (LPS mm) onto any grid with the even-odd rule.

    Each target slice takes the polygons of the source plane nearest to it, if that plane lies
    within half a slice spacing; several planes never mix on one slice (their XOR would punch
    false holes when the target grid is coarser than the contours).

    Parameters
    ----------
    polygons : Sequence[np.ndarray]
        ``(N, 3)`` polygons in LPS mm, each in one plane parallel to the grid's slices.
    volume : Volume
        Target grid.

    Returns
    -------
    np.ndarray
        Boolean ``(nz, ny, nx)``.

    Raises
    ------
    RtStructError
        A polygon with fewer than 3 vertices, or one not parallel to the grid's slices.
    """
    nz, ny, nx = volume.shape
    mask = np.zeros((nz, ny, nx), dtype=bool)
    planes: dict[float, list[np.ndarray]] = defaultdict(list)
    plane_tol = 0.01  # in slices: contour vertices carry rounding, not tilt
    for index, polygon in enumerate(polygons):
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 3)
        if len(points) < 3:
            raise RtStructError(f"polygon {index} has {len(points)} vertices; a closed polygon needs 3")
        ijk = volume.lps_to_index(points)
        if np.ptp(ijk[:, 2]) > plane_tol:
            raise RtStructError(
                f"polygon {index} is not parallel to the grid's slices: it spans "
                f"{np.ptp(ijk[:, 2]) * volume.spacing_mm[2]:.3f} mm across the slice axis"
            )
        planes[round(float(ijk[:, 2].mean()), 3)].append(ijk[:, :2])
    if not planes:
        return mask
    plane_k = np.array(sorted(planes))
    for k in range(nz):
        nearest = plane_k[np.argmin(np.abs(plane_k - k))]
        if abs(nearest - k) <= 0.5:
            mask[k] = rasterize_even_odd(planes[float(nearest)], ny, nx)
    return mask


def _referenced_frame(series: ImageSeries) -> Dataset:
    image_items = []
    for slice_ref in series.slices:
        item = Dataset()
        item.ReferencedSOPClassUID = slice_ref.sop_class_uid
        item.ReferencedSOPInstanceUID = slice_ref.sop_instance_uid
        image_items.append(item)
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.series_instance_uid
    referenced_series.ContourImageSequence = DicomSequence(image_items)
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    referenced_study.ReferencedSOPInstanceUID = series.study_instance_uid
    referenced_study.RTReferencedSeriesSequence = DicomSequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([referenced_study])
    return frame


def _contour_item(points_mm: np.ndarray, slice_ref: SliceRef, number: int) -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID = slice_ref.sop_class_uid
    image.ReferencedSOPInstanceUID = slice_ref.sop_instance_uid
    item = Dataset()
    item.ContourImageSequence = DicomSequence([image])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points_mm)
    item.ContourNumber = number
    item[CONTOUR_DATA_TAG] = _decimal_string_element(CONTOUR_DATA_TAG, points_mm.reshape(-1))
    return item


def _decimal_string_element(tag: int, values: np.ndarray) -> RawDataElement:
    """A DS element written from its encoded bytes.

    Setting ContourData as Python floats makes pydicom validate every value (about 6 µs each,
    most of the time of a large structure set); formatted in one numpy call instead, the values
    are identical: fixed-point with ``CONTOUR_DECIMALS`` decimals, at most 16 characters.
    """
    text = "\\".join(np.char.mod(f"%.{CONTOUR_DECIMALS}f", np.round(values, CONTOUR_DECIMALS) + 0.0).tolist())
    if any(len(v) > 16 for v in text.split("\\")):
        raise RtStructError(f"a contour coordinate does not fit a DICOM DS (16 characters): {values.max()!r}")
    data = text.encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True)


def _check_series(series: ImageSeries) -> None:
    if len(series.slices) != series.volume.shape[0]:
        raise RtStructError(
            f"series {series.series_instance_uid!r} has {len(series.slices)} slice references "
            f"for {series.volume.shape[0]} slices in its volume"
        )
    for uid_name in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid"):
        if not getattr(series, uid_name):
            raise RtStructError(f"series has an empty {uid_name}; the structure set could not reference it")


def _check_specs(series: ImageSeries, structures: Sequence[StructureSpec]) -> None:
    seen: set[str] = set()
    for spec in structures:
        if not spec.name or len(spec.name) > 64:
            raise RtStructError(f"ROI name {spec.name!r} must have 1 to 64 characters")
        if spec.name in seen:
            raise RtStructError(f"ROI name {spec.name!r} is given twice")
        seen.add(spec.name)
        if spec.mask.shape != series.volume.shape:
            raise RtStructError(
                f"ROI {spec.name!r}: mask shape {spec.mask.shape} is not the series grid {series.volume.shape}"
            )
        if spec.rt_roi_interpreted_type not in ROI_INTERPRETED_TYPES:
            raise RtStructError(
                f"ROI {spec.name!r}: RT ROI Interpreted Type {spec.rt_roi_interpreted_type!r} is not one of "
                f"{sorted(ROI_INTERPRETED_TYPES)}"
            )
        if spec.generation_algorithm not in GENERATION_ALGORITHMS:
            raise RtStructError(
                f"ROI {spec.name!r}: generation algorithm {spec.generation_algorithm!r} is not one of "
                f"{sorted(GENERATION_ALGORITHMS)}"
            )
        if len(spec.color) != 3 or not all(0 <= int(c) <= 255 for c in spec.color):
            raise RtStructError(f"ROI {spec.name!r}: colour {spec.color!r} must be three values 0..255")


def _check_is_rtstruct(ds: Dataset) -> None:
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class != RT_STRUCTURE_SET_STORAGE or "StructureSetROISequence" not in ds:
        raise RtStructError(
            f"dataset is not an RT Structure Set (SOP Class UID {sop_class!r}, "
            f"StructureSetROISequence {'present' if 'StructureSetROISequence' in ds else 'missing'})"
        )
