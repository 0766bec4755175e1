"""The per-file check done when a DICOM upload finishes.

``inspect_dicom`` proves a file is a complete DICOM Part 10 object (every element present to its
declared length, pixel data decodable), extracts what grouping and series validation need, and
repairs identity the way a careful PACS does when a dataset's UIDs are empty: SOP Class/Instance
UIDs from the file meta header, Series/Study UIDs derived deterministically from stable attributes.
Each repair is recorded in ``DicomFileInfo.notes``.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import VR

from rtgrid.engines.imaging.errors import (
    IntakeError,
    InvalidAttributeError,
    InvalidPixelDataError,
    NotDicomError,
    TruncatedFileError,
    UnsupportedTransferSyntaxError,
)

_PREAMBLE_BYTES = 128
_PREFIX = b"DICM"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITATION_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_TRANSFER_SYNTAX_TAG = 0x00020010
_VR_CODES = frozenset(vr.value.encode("ascii") for vr in VR)

# SOP classes a modality implies, used only when neither the dataset nor the file meta has one.
_SOP_CLASS_FOR_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "RTSTRUCT": "1.2.840.10008.5.1.4.1.1.481.3",
    "RTPLAN": "1.2.840.10008.5.1.4.1.1.481.5",
    "RTDOSE": "1.2.840.10008.5.1.4.1.1.481.2",
}

_SERIES_UID_SOURCES = (
    "PatientID",
    "Modality",
    "FrameOfReferenceUID",
    "ImageOrientationPatient",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
)
_STUDY_UID_SOURCES = (
    "PatientID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "FrameOfReferenceUID",
)


@dataclass(frozen=True)
class DicomFileInfo:
    """What one uploaded DICOM file is, after checking and identity repair.

    Geometry fields are ``None`` for objects without an image plane (RTSTRUCT, RTPLAN).
    ``pixel_spacing_mm`` keeps DICOM order: ``(row spacing, column spacing)``.
    """

    file_name: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    transfer_syntax_uid: str
    image_position_mm: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing_mm: tuple[float, float] | None
    rows: int
    columns: int
    number_of_frames: int
    has_pixel_data: bool
    samples_per_pixel: int
    photometric_interpretation: str
    rescale_slope: float
    rescale_intercept: float
    series_number: int | None
    series_description: str
    instance_number: int | None
    slice_thickness_mm: float | None
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class InspectedFile:
    """A checked file: its info, its decoded stored pixel values and the parsed dataset.

    ``pixels`` is ``None`` when the object has no PixelData; otherwise it is what pydicom decodes
    (no rescale applied): ``(rows, columns)`` for one frame, ``(frames, rows, columns)`` for more.
    ``load_dataset`` gives the dataset; for a file checked in another process it parses the file
    again (:func:`read_dataset`) when :attr:`dataset` is first asked for, which for a CT series
    is one slice of hundreds.
    """

    info: DicomFileInfo
    pixels: np.ndarray | None
    load_dataset: Callable[[], Dataset] = field(repr=False, compare=False)

    @cached_property
    def dataset(self) -> Dataset:
        """The parsed dataset (its PixelData may be left out: the pixels are in ``pixels``)."""
        return self.load_dataset()


def inspect_dicom(data: bytes, file_name: str) -> DicomFileInfo:
    """Check one uploaded DICOM file completely and describe it.

    Parameters
    ----------
    data : bytes
        The whole file as uploaded.
    file_name : str
        The name the file is reported under in errors and notes.

    Returns
    -------
    DicomFileInfo
        Identity (with repairs listed in ``notes``), geometry and pixel description.

    Raises
    ------
    NotDicomError
        The bytes are not a DICOM Part 10 file.
    TruncatedFileError
        The file ends inside its header, an element or the pixel data.
    UnsupportedTransferSyntaxError
        The pixel data uses an encoding no installed decoder handles.
    InvalidPixelDataError
        The pixel data does not decode, or decodes to another size than Rows x Columns x frames.
    InvalidAttributeError
        Modality or SOP class is missing, or a geometry attribute is malformed.
    """
    return read_dicom(data, file_name).info


def read_dicom(data: bytes, file_name: str) -> InspectedFile:
    """``inspect_dicom`` that also returns the dataset and the decoded pixels (decoded once).

    Parameters and exceptions are those of :func:`inspect_dicom`.
    """
    transfer_syntax, notes = _check_complete(data, file_name)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many kinds for malformed headers
        raise NotDicomError(file_name, f"pydicom cannot parse the dataset: {exc}") from exc
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    try:
        for part in (dataset.file_meta, dataset):
            part.walk(lambda _dataset, _element: None)  # converts every element now, not lazily later
    except Exception as exc:  # a corrupted VR or value surfaces as many exception kinds
        raise InvalidAttributeError(file_name, f"a data element cannot be decoded: {exc}") from exc
    modality = _text(dataset, "Modality")
    if not modality:
        raise InvalidAttributeError(file_name, "Modality (0008,0060) is missing or empty")
    geometry = _geometry(dataset, file_name)
    sop_class_uid, sop_instance_uid = _sop_identity(dataset, data, modality, file_name, notes)
    frame_of_reference_uid = _text(dataset, "FrameOfReferenceUID")
    series_uid = _derived_uid(dataset, "SeriesInstanceUID", _SERIES_UID_SOURCES, notes)
    study_uid = _derived_uid(dataset, "StudyInstanceUID", _STUDY_UID_SOURCES, notes)
    if not frame_of_reference_uid and geometry["image_position_mm"] is not None:
        frame_of_reference_uid = generate_uid(entropy_srcs=["FrameOfReferenceUID", study_uid, series_uid])
        notes.append(
            "FrameOfReferenceUID empty in dataset; derived deterministically from the study and "
            f"series UIDs as {frame_of_reference_uid}"
        )

    has_pixel_data = "PixelData" in dataset
    pixels = _decode_pixels(dataset, transfer_syntax, file_name) if has_pixel_data else None
    slope, intercept = _rescale(dataset, has_pixel_data, modality, notes, file_name)
    info = DicomFileInfo(
        file_name=file_name,
        modality=modality,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        transfer_syntax_uid=str(transfer_syntax),
        image_position_mm=geometry["image_position_mm"],
        image_orientation=geometry["image_orientation"],
        pixel_spacing_mm=geometry["pixel_spacing_mm"],
        rows=_int(dataset, "Rows") or 0,
        columns=_int(dataset, "Columns") or 0,
        number_of_frames=_int(dataset, "NumberOfFrames") or 1,
        has_pixel_data=has_pixel_data,
        samples_per_pixel=_int(dataset, "SamplesPerPixel") or 1,
        photometric_interpretation=_text(dataset, "PhotometricInterpretation"),
        rescale_slope=slope,
        rescale_intercept=intercept,
        series_number=_int(dataset, "SeriesNumber"),
        series_description=_text(dataset, "SeriesDescription"),
        instance_number=_int(dataset, "InstanceNumber"),
        slice_thickness_mm=geometry["slice_thickness_mm"],
        patient_id=_text(dataset, "PatientID"),
        patient_name=_text(dataset, "PatientName"),
        patient_birth_date=_text(dataset, "PatientBirthDate"),
        patient_sex=_text(dataset, "PatientSex"),
        study_id=_text(dataset, "StudyID"),
        study_date=_text(dataset, "StudyDate"),
        study_time=_text(dataset, "StudyTime"),
        study_description=_text(dataset, "StudyDescription"),
        accession_number=_text(dataset, "AccessionNumber"),
        referring_physician_name=_text(dataset, "ReferringPhysicianName"),
        notes=tuple(notes),
    )
    return InspectedFile(info=info, pixels=pixels, load_dataset=lambda: dataset)


def stored_pixels_offset(item: InspectedFile, data: bytes) -> int | None:
    """Where ``item.pixels`` lie in ``data`` byte for byte, or ``None``.

    A natively encoded image keeps its stored values as they are in the file, so a reader can map
    them from there instead of carrying a decoded copy. Only a proof counts: the bytes at the
    PixelData element's value equal the decoded pixels exactly (not so for a compressed, deflated
    or big endian file, or where pydicom corrected unused high bits).

    Parameters
    ----------
    item : InspectedFile
        From :func:`read_dicom` on ``data``.
    data : bytes
        The whole file.

    Returns
    -------
    int or None
        The byte offset of the pixel values in ``data``.
    """
    pixels = item.pixels
    if pixels is None or item.info.transfer_syntax_uid in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        return None
    dataset = item.dataset
    offset = getattr(dataset["PixelData"], "file_tell", None) if "PixelData" in dataset else None
    if offset is None or UID(item.info.transfer_syntax_uid).is_compressed:
        return None
    stored = data[offset: offset + pixels.nbytes]
    if len(stored) != pixels.nbytes or not np.array_equal(np.frombuffer(stored, dtype=pixels.dtype).reshape(pixels.shape),
                                                          pixels):
        return None
    return int(offset)


def read_dataset(data: bytes, file_name: str) -> Dataset:
    """The dataset :func:`read_dicom` gives for a file it has accepted, parsed again without its
    pixel data (the transfer syntax set as there).

    Parameters
    ----------
    data : bytes
        The whole file.
    file_name : str
        The name the file is reported under in errors.
    """
    transfer_syntax, _ = _check_complete(data, file_name)
    dataset = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    return dataset


# --- completeness -------------------------------------------------------------------------------


def _check_complete(data: bytes, file_name: str) -> tuple[UID, list[str]]:
    """Walk every top-level element and prove each is present to its declared length.

    pydicom's reader stops quietly at a truncated element and drops it (and everything after),
    so completeness is checked here on the raw element stream. Returns the transfer syntax and
    notes on what had to be inferred (a missing preamble or file meta header).
    """
    if not data:
        raise TruncatedFileError(file_name, "file is empty (0 bytes)")
    notes: list[str] = []
    header_end = _PREAMBLE_BYTES + len(_PREFIX)
    if data[_PREAMBLE_BYTES:header_end] == _PREFIX:
        meta_start = header_end
    elif len(data) >= 8 and _first_group(data) in (0x0002, 0x0008):
        meta_start = 0
        notes.append("no 128-byte preamble and 'DICM' prefix; read from byte 0")
    elif len(data) < header_end and not any(data[:_PREAMBLE_BYTES]) and _PREFIX.startswith(data[_PREAMBLE_BYTES:]):
        raise TruncatedFileError(file_name, f"file ends inside the preamble or 'DICM' prefix ({len(data)} bytes)")
    else:
        raise NotDicomError(
            file_name,
            f"not a DICOM file: no 'DICM' prefix at byte 128 and no DICOM element at byte 0 ({len(data)} bytes)",
        )
    if meta_start == len(data):
        raise TruncatedFileError(file_name, "file ends right after the 'DICM' prefix: no file meta header")

    if _first_group(data[meta_start:]) == 0x0002:
        transfer_syntax, dataset_start = _read_meta(data, meta_start, file_name)
    else:
        dataset_start = meta_start
        explicit = data[4:6] in _VR_CODES
        transfer_syntax = UID("1.2.840.10008.1.2.1" if explicit else ImplicitVRLittleEndian)
        notes.append(f"no file meta header; transfer syntax inferred as {transfer_syntax.name}")

    payload = data[dataset_start:]
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            payload = inflater.decompress(payload)
        except zlib.error as exc:
            raise TruncatedFileError(file_name, f"deflated dataset cannot be inflated: {exc}") from exc
        if not inflater.eof:
            raise TruncatedFileError(file_name, "deflated dataset ends before its deflate stream is complete")
    _walk_dataset(
        payload,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=transfer_syntax != ExplicitVRBigEndian,
        file_name=file_name,
        offset=dataset_start,
    )
    return transfer_syntax, notes


def _first_group(data: bytes) -> int:
    return struct.unpack("<H", data[:2])[0] if len(data) >= 2 else -1


def _read_meta(data: bytes, meta_start: int, file_name: str) -> tuple[UID, int]:
    """Parse the file meta group (always explicit VR little endian): transfer syntax, dataset start."""
    stream = io.BytesIO(data)
    stream.seek(meta_start)
    meta: dict[int, Any] = {}
    reached_dataset: list[bool] = []

    def leaves_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag.group != 2:
            reached_dataset.append(True)
            return True
        return False

    try:
        for element in data_element_generator(stream, False, True, stop_when=leaves_meta):
            _require_full_value(element, file_name, len(data))
            meta[int(element.tag)] = element.value
    except EOFError as exc:
        raise TruncatedFileError(file_name, f"file ends inside the file meta header: {exc}") from exc
    except IntakeError:
        raise
    except Exception as exc:  # malformed element headers surface as many exception kinds
        raise NotDicomError(file_name, f"the file meta header cannot be parsed: {exc}") from exc
    if not reached_dataset:
        raise TruncatedFileError(
            file_name, "file ends inside or right after the file meta header: the dataset is missing"
        )
    raw_syntax = meta.get(_TRANSFER_SYNTAX_TAG)
    if not raw_syntax:
        raise InvalidAttributeError(file_name, "file meta has no TransferSyntaxUID (0002,0010)")
    return UID(raw_syntax.decode("ascii", errors="replace").rstrip("\0 ")), stream.tell()


def _walk_dataset(payload: bytes, *, implicit_vr: bool, little_endian: bool, file_name: str, offset: int) -> None:
    stream = io.BytesIO(payload)
    end = 0
    last: RawDataElement | DataElement | None = None
    try:
        for element in data_element_generator(stream, implicit_vr, little_endian):
            _require_full_value(element, file_name, offset + len(payload), offset)
            last = element
            end = stream.tell()
    except EOFError as exc:
        label = _label_at(payload, end, little_endian)
        raise TruncatedFileError(
            file_name, f"file ends inside {label} (starting at byte {offset + end}): {exc}"
        ) from exc
    except IntakeError:
        raise
    except Exception as exc:  # malformed element headers surface as many exception kinds
        raise NotDicomError(
            file_name, f"the dataset cannot be parsed after byte {offset + end}: {type(exc).__name__}: {exc}"
        ) from exc
    if end != len(payload):
        after = _label(int(last.tag)) if last is not None else "the file meta header"
        raise TruncatedFileError(
            file_name, f"file ends inside the header of the element after {after} (byte {offset + len(payload)})"
        )
    if (
        isinstance(last, DataElement)
        and last.is_undefined_length
        and not payload.endswith(_SEQUENCE_DELIMITATION_LE if little_endian else b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
    ):
        raise TruncatedFileError(file_name, f"file ends inside {_label(int(last.tag))} before its sequence delimiter")


def _require_full_value(element: RawDataElement | DataElement, file_name: str, file_size: int, offset: int = 0) -> None:
    if not isinstance(element, RawDataElement):
        return
    length = element.length
    if length in (0, _UNDEFINED_LENGTH) or not isinstance(element.value, bytes):
        return
    if len(element.value) < length:
        raise TruncatedFileError(
            file_name,
            f"file is truncated: {_label(int(element.tag))} declares {length} bytes but only "
            f"{len(element.value)} remain (file size {file_size} bytes)",
        )


def _label(tag: int) -> str:
    keyword = keyword_for_tag(tag) or "private element"
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _label_at(payload: bytes, position: int, little_endian: bool) -> str:
    if position + 4 > len(payload):
        return "an element header"
    group, element = struct.unpack("<HH" if little_endian else ">HH", payload[position : position + 4])
    return _label((group << 16) | element)


# --- identity -----------------------------------------------------------------------------------


def _sop_identity(dataset: Dataset, data: bytes, modality: str, file_name: str, notes: list[str]) -> tuple[str, str]:
    meta = dataset.file_meta
    sop_class = _resolved_uid(
        _text(dataset, "SOPClassUID"), _text(meta, "MediaStorageSOPClassUID"), "SOPClassUID", notes
    )
    if not sop_class:
        sop_class = _SOP_CLASS_FOR_MODALITY.get(modality, "")
        if not sop_class:
            raise InvalidAttributeError(
                file_name,
                f"SOPClassUID is empty in the dataset and the file meta, and modality {modality} implies none",
            )
        notes.append(f"SOPClassUID empty in dataset and file meta; inferred from modality {modality}")
    sop_instance = _resolved_uid(
        _text(dataset, "SOPInstanceUID"), _text(meta, "MediaStorageSOPInstanceUID"), "SOPInstanceUID", notes
    )
    if not sop_instance:
        sop_instance = generate_uid(entropy_srcs=[hashlib.sha256(data).hexdigest()])
        notes.append("SOPInstanceUID empty in dataset and file meta; derived deterministically from the file content")
    return sop_class, sop_instance


def _resolved_uid(in_dataset: str, in_meta: str, keyword: str, notes: list[str]) -> str:
    if in_dataset:
        if in_meta and in_meta != in_dataset:
            notes.append(f"{keyword} in dataset differs from the file meta; the dataset's value is used")
        return in_dataset
    if in_meta:
        notes.append(f"{keyword} empty in dataset; taken from file meta")
    return in_meta


def _derived_uid(dataset: Dataset, keyword: str, sources: tuple[str, ...], notes: list[str]) -> str:
    """The dataset's UID, or one derived from stable attributes so the same files group alike."""
    value = _text(dataset, keyword)
    if value:
        return value
    entropy = [keyword] + [f"{source}={_text(dataset, source)}" for source in sources]
    derived = generate_uid(entropy_srcs=entropy)
    notes.append(f"{keyword} empty in dataset; derived deterministically from {', '.join(sources)} as {derived}")
    return derived


# --- geometry and pixels ------------------------------------------------------------------------


def _geometry(dataset: Dataset, file_name: str) -> dict[str, Any]:
    return {
        "image_position_mm": _numbers(dataset, "ImagePositionPatient", 3, file_name),
        "image_orientation": _numbers(dataset, "ImageOrientationPatient", 6, file_name),
        "pixel_spacing_mm": _numbers(dataset, "PixelSpacing", 2, file_name),
        "slice_thickness_mm": (_numbers(dataset, "SliceThickness", 1, file_name) or (None,))[0],
    }


def _numbers(dataset: Dataset, keyword: str, count: int, file_name: str) -> tuple[float, ...] | None:
    if keyword not in dataset or dataset[keyword].is_empty:
        return None
    raw = dataset[keyword].value
    values = list(raw) if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
    try:
        numbers = tuple(float(value) for value in values)
    except (TypeError, ValueError) as exc:
        raise InvalidAttributeError(file_name, f"{keyword} has a non-numeric value {raw!r}") from exc
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise InvalidAttributeError(file_name, f"{keyword} must hold {count} finite numbers, got {raw!r}")
    return numbers


def _rescale(
    dataset: Dataset, has_pixel_data: bool, modality: str, notes: list[str], file_name: str
) -> tuple[float, float]:
    slope = _float(dataset, "RescaleSlope")
    intercept = _float(dataset, "RescaleIntercept")
    if has_pixel_data and modality == "CT" and (slope is None or intercept is None):
        notes.append("RescaleSlope/RescaleIntercept absent on a CT image; assumed 1 and 0")
    slope, intercept = (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)
    # A NaN or infinite rescale makes every voxel meaningless; a zero slope maps them all to one value.
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise InvalidAttributeError(
            file_name, f"RescaleSlope {slope!r} / RescaleIntercept {intercept!r} must be finite, the slope non-zero"
        )
    return slope, intercept


def _decode_pixels(dataset: Dataset, transfer_syntax: UID, file_name: str) -> np.ndarray:
    if not transfer_syntax.is_transfer_syntax:
        raise UnsupportedTransferSyntaxError(
            file_name, f"transfer syntax {transfer_syntax} is not a known DICOM transfer syntax"
        )
    try:
        decoder = pydicom.pixels.get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            file_name, f"no pixel data decoder exists for {transfer_syntax.name} ({transfer_syntax})"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedTransferSyntaxError(
            file_name, f"{transfer_syntax.name} ({transfer_syntax}) cannot be decoded here: needs {missing}"
        )
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in dataset or dataset[keyword].is_empty:
            raise InvalidAttributeError(file_name, f"{keyword} is missing but the file has PixelData")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError... for bad streams
        raise InvalidPixelDataError(file_name, f"pixel data ({transfer_syntax.name}) cannot be decoded: {exc}") from exc
    frames = _int(dataset, "NumberOfFrames") or 1
    samples = _int(dataset, "SamplesPerPixel") or 1
    expected = (frames,) if frames > 1 else ()
    expected += (int(dataset.Rows), int(dataset.Columns)) + ((samples,) if samples > 1 else ())
    if pixels.shape != expected:
        raise InvalidPixelDataError(
            file_name, f"pixel data decodes to shape {pixels.shape}, but the header describes {expected}"
        )
    return pixels


# --- attribute access ---------------------------------------------------------------------------


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(item) for item in value).strip()
    return str(value).strip().rstrip("\0")


def _int(dataset: Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(dataset: Dataset, keyword: str) -> float | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


__all__ = ["DicomFileInfo", "InspectedFile", "inspect_dicom", "read_dicom"]
