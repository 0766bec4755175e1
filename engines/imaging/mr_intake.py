"""MR series intake beside the planning CT: the checks an MR needs before it can be registered.

An MR is not in Hounsfield units and never becomes the planning image; it only has to form one
regular grid of single-frame slices. What is particular to MR and checked here:

* no HU rescale: a slice whose Rescale Type says ``HU`` is refused (``MrRescaleError``);
* Enhanced / multi-frame MR (one file, many frames) is refused (``MultiFrameMrError``): convert it
  to single-frame MR Image Storage first;
* multi-echo series (several Echo Numbers at one slice position) are split into one series per echo
  (``split_echoes=True``) or refused (``MultiEchoError``) naming the echoes and a shared position;
* orientation, pixel spacing, slice steps, frame of reference: the CT intake's checks
  (``InconsistentGeometryError``, ``MissingSliceError`` ...), with their messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.multival import MultiValue

from rtgrid.engines.imaging.dicom_files import InspectedFile, read_dicom
from rtgrid.engines.imaging.errors import IntakeError, UnsupportedModalityError
from rtgrid.engines.imaging.intake import NON_IMAGE_MODALITIES, load_series
from rtgrid.engines.imaging.volume import ImageSeries

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MULTI_FRAME_MR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}


class MrIntakeError(IntakeError):
    """An MR series that cannot be taken in; the message names the file, the tag and the problem."""


class MultiFrameMrError(MrIntakeError):
    """An Enhanced or other multi-frame MR file: intake takes single-frame MR Image Storage."""


class MultiEchoError(MrIntakeError):
    """Several echoes at one slice position, and the caller asked not to split them."""


class MrRescaleError(MrIntakeError):
    """An MR slice that claims Hounsfield units (Rescale Type HU); MR has no HU scale."""


@dataclass(frozen=True)
class MrSeries:
    """One validated MR volume (one echo of a multi-echo series).

    Attributes
    ----------
    series : ImageSeries
        Modality ``MR``; voxels are the scanner's signal (stored value x slope + intercept), no unit.
    echo_number : int or None
        Echo Numbers (0018,0086) of its slices; ``None`` when the files give none.
    echo_time_ms, repetition_time_ms : float or None
        Echo Time (0018,0081) and Repetition Time (0018,0080), ms.
    magnetic_field_strength_t : float or None
        Magnetic Field Strength (0018,0087), tesla.
    sequence : str
        Scanning Sequence and Sequence Name, for the record.
    """

    series: ImageSeries
    echo_number: int | None
    echo_time_ms: float | None
    repetition_time_ms: float | None
    magnetic_field_strength_t: float | None
    sequence: str


def load_mr_series(files: Sequence[tuple[str, bytes]], *, split_echoes: bool = True) -> list[MrSeries]:
    """Check an uploaded MR series and build one volume per echo.

    Parameters
    ----------
    files : sequence of (file_name, data)
        The files of one MR series, any order.
    split_echoes : bool
        Several Echo Numbers sharing slice positions: one ``MrSeries`` per echo when True,
        ``MultiEchoError`` when False.

    Returns
    -------
    list of MrSeries
        One entry (single echo) or one per echo, in echo order.

    Raises
    ------
    IntakeError
        No files, or any per-file error (not DICOM, truncated, undecodable pixels ...).
    UnsupportedModalityError
        A file is not MR.
    MultiFrameMrError
        An Enhanced / Legacy Converted Enhanced MR file, or any file of more than one frame.
    MrRescaleError
        A slice with Rescale Type ``HU``.
    MultiEchoError
        Several echoes at one position and ``split_echoes`` is False.
    InconsistentGeometryError, MissingSliceError, MixedSeriesError, InvalidAttributeError
        From the common series checks (orientation, spacing, steps, one series, one patient).
    """
    if not files:
        raise IntakeError("(no files)", "no files were given as the MR series")
    inspected = [(name, data, read_dicom(data, name)) for name, data in files]
    for name, _, item in inspected:
        _check_mr_file(name, item)
    echoes: dict[int | None, list[tuple[str, bytes, InspectedFile]]] = {}
    for entry in inspected:
        echoes.setdefault(_echo_number(entry[2]), []).append(entry)
    if len(echoes) > 1 and not split_echoes:
        raise MultiEchoError.for_files(
            [group[0][0] for group in echoes.values()],
            f"multi-echo series: EchoNumbers (0018,0086) {sorted(echoes, key=_order)} share the slice positions "
            f"(e.g. {_shared_position(echoes)}); upload one echo, or take them in split by echo",
        )
    results = []
    for echo in sorted(echoes, key=_order):
        group = echoes[echo]
        series = load_series([(name, data) for name, data, _ in group], expected_modalities=("MR",))
        first = group[0][2].dataset
        results.append(
            MrSeries(
                series=series,
                echo_number=echo,
                echo_time_ms=_float(first, "EchoTime"),
                repetition_time_ms=_float(first, "RepetitionTime"),
                magnetic_field_strength_t=_float(first, "MagneticFieldStrength"),
                sequence=" ".join(
                    str(first.get(k, "") or "").strip() for k in ("ScanningSequence", "SequenceName")
                ).strip(),
            )
        )
    return results


def _check_mr_file(name: str, item: InspectedFile) -> None:
    info = item.info
    if info.modality != "MR":
        kind = "is not an image series" if info.modality in NON_IMAGE_MODALITIES else "is not accepted here"
        raise UnsupportedModalityError(name, f"modality {info.modality} {kind} (expected MR)")
    if info.sop_class_uid in MULTI_FRAME_MR_SOP_CLASSES:
        raise MultiFrameMrError(
            name,
            f"SOPClassUID {info.sop_class_uid} ({MULTI_FRAME_MR_SOP_CLASSES[info.sop_class_uid]}, "
            f"{info.number_of_frames} frames) is a multi-frame MR; convert it to single-frame "
            f"MR Image Storage ({MR_IMAGE_STORAGE}) before upload",
        )
    if info.number_of_frames != 1:
        raise MultiFrameMrError(
            name, f"NumberOfFrames (0028,0008) is {info.number_of_frames}; MR intake takes one slice per file"
        )
    rescale_type = str(item.dataset.get("RescaleType", "") or "").strip().upper()
    if rescale_type == "HU":
        raise MrRescaleError(
            name, "RescaleType (0028,1054) is HU, but an MR has no Hounsfield scale; the rescale is mislabelled"
        )


def _echo_number(item: InspectedFile) -> int | None:
    value = item.dataset.get("EchoNumbers")
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _order(echo: int | None) -> int:
    return -1 if echo is None else echo


def _shared_position(echoes: dict[int | None, list[tuple[str, bytes, InspectedFile]]]) -> str:
    positions: dict[tuple[float, ...], list[str]] = {}
    for group in echoes.values():
        for name, _, item in group:
            position = item.info.image_position_mm
            if position is not None:
                positions.setdefault(tuple(round(v, 3) for v in position), []).append(name)
    for position, names in positions.items():
        if len(names) > 1:
            return f"ImagePositionPatient {list(position)} in {', '.join(names[:3])}"
    return "no position shared"


def _float(dataset, keyword: str) -> float | None:
    value = dataset.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


__all__ = ["MrIntakeError", "MrRescaleError", "MrSeries", "MultiEchoError", "MultiFrameMrError", "load_mr_series"]
