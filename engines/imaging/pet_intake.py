"""PET series intake beside the planning CT: activity units and body-weight SUV from the DICOM tags.

A PET slice's stored values times its Rescale Slope are activity concentrations in Units (0054,1001);
intake needs ``BQML`` (Bq/mL). The body-weight standardized uptake value is::

    SUVbw = activity [Bq/mL] * weight [g] / dose at scan start [Bq]     (1 mL of tissue taken as 1 g)
    dose at scan start = RadionuclideTotalDose * 2 ** (-(scan start - injection) / RadionuclideHalfLife)

with the injection time from RadiopharmaceuticalStartDateTime (or SeriesDate + Radiopharmaceutical
StartTime) and the scan start from SeriesDate/SeriesTime (else the earliest AcquisitionDate/Time).
That decay applies to images decay-corrected to the scan start (DecayCorrection ``START``); images
corrected to the injection (``ADMIN``) use the injected dose as it is. CorrectedImage (0028,0051)
must list ``DECY`` (and ``ATTN``: uncorrected images are not quantitative). A series that lacks
what SUV needs raises :class:`MissingSuvTagError` naming the tag.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from rtgrid.engines.imaging.dicom_files import InspectedFile, read_dicom
from rtgrid.engines.imaging.errors import IntakeError, MixedSeriesError, UnsupportedModalityError
from rtgrid.engines.imaging.intake import NON_IMAGE_MODALITIES, load_series
from rtgrid.engines.imaging.volume import ImageSeries

DECAY_CORRECTIONS = ("START", "ADMIN")
REQUIRED_CORRECTIONS = ("ATTN", "DECY")
# Attributes every slice of one PET series must agree on (they define the SUV scale).
SERIES_CONSTANT = ("Units", "DecayCorrection", "PatientWeight", "SeriesDate", "SeriesTime")


class PetIntakeError(IntakeError):
    """A PET series that cannot be taken in; the message names the file, the tag and the problem."""


class MissingSuvTagError(PetIntakeError):
    """A tag SUV needs is absent or empty.

    Attributes
    ----------
    tag : str
        The keyword and (group,element) of the missing attribute, e.g. ``"PatientWeight (0010,1030)"``.
    """

    def __init__(self, file_name: str, reason: str, *, file_names: Sequence[str] | None = None, tag: str = "") -> None:
        super().__init__(file_name, reason, file_names=file_names)
        self.tag = tag

    def __reduce__(self):
        return (_rebuild_missing, (self.file_name, self.reason, self.file_names, self.tag))


def _rebuild_missing(file_name: str, reason: str, file_names: tuple[str, ...], tag: str) -> "MissingSuvTagError":
    return MissingSuvTagError(file_name, reason, file_names=file_names, tag=tag)


class PetUnitsError(PetIntakeError):
    """Units (0054,1001) are not BQML, so voxels are not activity concentrations."""


class PetCorrectionError(PetIntakeError):
    """DecayCorrection or CorrectedImage say the images are not corrected as SUV requires."""


class PetTimingError(PetIntakeError):
    """The injection and scan times do not fit (the scan starts before the injection)."""


class InconsistentPetSeriesError(PetIntakeError, MixedSeriesError):
    """Slices of one PET series disagree on a value that defines the SUV scale."""


_TAGS = {
    "Units": "(0054,1001)",
    "DecayCorrection": "(0054,1102)",
    "CorrectedImage": "(0028,0051)",
    "PatientWeight": "(0010,1030)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)",
    "AcquisitionTime": "(0008,0032)",
}


@dataclass(frozen=True)
class PetSeries:
    """A validated PET volume with its SUV scale.

    Attributes
    ----------
    series : ImageSeries
        Modality ``PT``; voxels are activity concentration in Bq/mL (float32).
    units : str
        ``"BQML"``.
    suv_factor : float
        SUVbw per Bq/mL: ``weight_g / decayed_dose_bq`` (g/Bq, i.e. mL of tissue taken as g).
    patient_weight_kg : float
    injected_dose_bq : float
        RadionuclideTotalDose.
    half_life_s : float
        RadionuclideHalfLife.
    injection_time : datetime.datetime
    scan_start_time : datetime.datetime
        The reference time of the decay correction for ``START``.
    decay_correction : str
        ``"START"`` or ``"ADMIN"``.
    decayed_dose_bq : float
        The dose the SUV divides by.
    scan_time_source : str
        Which tags gave the scan start (``"SeriesDate/SeriesTime"`` or ``"AcquisitionDate/AcquisitionTime"``).
    radiopharmaceutical : str
    """

    series: ImageSeries
    units: str
    suv_factor: float
    patient_weight_kg: float
    injected_dose_bq: float
    half_life_s: float
    injection_time: dt.datetime
    scan_start_time: dt.datetime
    decay_correction: str
    decayed_dose_bq: float
    scan_time_source: str
    radiopharmaceutical: str = ""

    def suv_bw(self) -> np.ndarray:
        """The volume as body-weight SUV (float32, same grid)."""
        return (self.series.volume.voxels.astype(np.float64) * self.suv_factor).astype(np.float32)


def load_pet_series(files: Sequence[tuple[str, bytes]]) -> PetSeries:
    """Check an uploaded PET series, build its activity volume (Bq/mL) and its SUVbw factor.

    Parameters
    ----------
    files : sequence of (file_name, data)
        The files of one PET series, any order.

    Returns
    -------
    PetSeries

    Raises
    ------
    IntakeError
        No files, or any per-file error of the common intake.
    UnsupportedModalityError
        A file is not PT.
    PetUnitsError
        Units is not BQML.
    MissingSuvTagError
        A tag SUV needs is absent or empty (``.tag`` names it): Units, PatientWeight, DecayCorrection,
        CorrectedImage, RadiopharmaceuticalInformationSequence, RadionuclideTotalDose,
        RadionuclideHalfLife, the injection time, or both SeriesDate/Time and AcquisitionDate/Time.
    PetCorrectionError
        DecayCorrection is not START or ADMIN, or CorrectedImage lacks DECY or ATTN.
    PetTimingError
        The scan starts before the injection, or a value is not positive.
    InconsistentPetSeriesError
        Slices disagree on Units, DecayCorrection, PatientWeight or SeriesDate/Time.
    InconsistentGeometryError, MissingSliceError, MixedSeriesError, InvalidPixelDataError
        From the common series checks.
    """
    if not files:
        raise IntakeError("(no files)", "no files were given as the PET series")
    inspected = [read_dicom(data, name) for name, data in files]
    for item in inspected:
        if item.info.modality != "PT":
            kind = "is not an image series" if item.info.modality in NON_IMAGE_MODALITIES else "is not accepted here"
            raise UnsupportedModalityError(item.info.file_name, f"modality {item.info.modality} {kind} (expected PT)")
    _check_constant(inspected)
    first = inspected[0]
    name, ds = first.info.file_name, first.dataset

    units = _required_text(ds, "Units", name)
    if units.upper() != "BQML":
        raise PetUnitsError(name, f"Units (0054,1001) is {units!r}; SUV needs activity concentration in BQML (Bq/mL)")
    decay = _required_text(ds, "DecayCorrection", name).upper()
    if decay not in DECAY_CORRECTIONS:
        raise PetCorrectionError(
            name, f"DecayCorrection (0054,1102) is {decay!r}; SUV needs images decay corrected to START or ADMIN"
        )
    corrected = ds.get("CorrectedImage")
    if corrected is None or corrected == "" or len(corrected) == 0:
        raise _missing(name, "CorrectedImage", "the corrections applied to the image are unknown")
    flags = {str(v).strip().upper() for v in (corrected if not isinstance(corrected, str) else [corrected])}
    lacking = [flag for flag in REQUIRED_CORRECTIONS if flag not in flags]
    if lacking:
        raise PetCorrectionError(
            name, f"CorrectedImage (0028,0051) {sorted(flags)} lacks {', '.join(lacking)}; SUV needs attenuation- and decay-corrected images"
        )
    weight_kg = _positive(ds, "PatientWeight", name, "kg")
    info_items = ds.get("RadiopharmaceuticalInformationSequence")
    if not info_items:
        raise _missing(name, "RadiopharmaceuticalInformationSequence", "the injected dose and its time are unknown")
    radio = info_items[0]
    dose_bq = _positive(radio, "RadionuclideTotalDose", name, "Bq", within="RadiopharmaceuticalInformationSequence")
    half_life_s = _positive(radio, "RadionuclideHalfLife", name, "s", within="RadiopharmaceuticalInformationSequence")
    scan_start, scan_source = _scan_start(inspected)
    injection = _injection_time(radio, ds, name, scan_start)
    elapsed_s = (scan_start - injection).total_seconds()
    if elapsed_s < 0:
        raise PetTimingError(
            name,
            f"the scan starts ({scan_start.isoformat()}, {scan_source}) {-elapsed_s:.0f} s before the injection "
            f"({injection.isoformat()}); check RadiopharmaceuticalStartDateTime/Time and SeriesDate/Time",
        )
    decayed = dose_bq * 2.0 ** (-elapsed_s / half_life_s) if decay == "START" else dose_bq

    series = load_series(list(files), expected_modalities=("PT",))
    volume = series.volume
    series = _with_voxels(series, volume.voxels.astype(np.float32))
    return PetSeries(
        series=series,
        units="BQML",
        suv_factor=weight_kg * 1000.0 / decayed,
        patient_weight_kg=weight_kg,
        injected_dose_bq=dose_bq,
        half_life_s=half_life_s,
        injection_time=injection,
        scan_start_time=scan_start,
        decay_correction=decay,
        decayed_dose_bq=decayed,
        scan_time_source=scan_source,
        radiopharmaceutical=str(radio.get("Radiopharmaceutical", "") or ""),
    )


# --- tags ---------------------------------------------------------------------------------------


def _missing(name: str, keyword: str, why: str, within: str = "") -> MissingSuvTagError:
    tag = f"{keyword} {_TAGS.get(keyword, '')}".strip()
    where = f" in {within}" if within else ""
    return MissingSuvTagError(name, f"{tag} is missing or empty{where}; SUV cannot be computed: {why}", tag=tag)


def _required_text(ds: Dataset, keyword: str, name: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise _missing(name, keyword, "it defines the SUV scale")
    return value


def _positive(ds: Dataset, keyword: str, name: str, unit: str, within: str = "") -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        raise _missing(name, keyword, f"it is needed in {unit}", within)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PetTimingError(name, f"{keyword} {_TAGS.get(keyword, '')} {value!r} is not a number ({unit})") from None
    if not np.isfinite(number) or number <= 0:
        raise PetTimingError(name, f"{keyword} {_TAGS.get(keyword, '')} is {number!r} {unit}; it must be positive")
    return number


def _scan_start(inspected: list[InspectedFile]) -> tuple[dt.datetime, str]:
    ds = inspected[0].dataset
    name = inspected[0].info.file_name
    series_date, series_time = str(ds.get("SeriesDate", "") or ""), str(ds.get("SeriesTime", "") or "")
    if series_date and series_time:
        return _datetime(series_date, series_time, name, "SeriesDate/SeriesTime"), "SeriesDate/SeriesTime"
    times = []
    for item in inspected:
        date = str(item.dataset.get("AcquisitionDate", "") or "") or series_date
        time = str(item.dataset.get("AcquisitionTime", "") or "")
        if date and time:
            times.append(_datetime(date, time, item.info.file_name, "AcquisitionDate/AcquisitionTime"))
    if not times:
        missing = "SeriesDate" if not series_date else "SeriesTime"
        raise MissingSuvTagError(
            name,
            f"{missing} {_TAGS[missing]} is missing or empty and no slice has AcquisitionDate/AcquisitionTime "
            "(0008,0022)/(0008,0032); the scan start for the decay correction is unknown",
            tag=f"{missing} {_TAGS[missing]}",
        )
    return min(times), "AcquisitionDate/AcquisitionTime"


def _injection_time(radio: Dataset, ds: Dataset, name: str, scan_start: dt.datetime) -> dt.datetime:
    start_datetime = str(radio.get("RadiopharmaceuticalStartDateTime", "") or "").strip()
    if start_datetime:
        return _parse_dt(start_datetime, name, "RadiopharmaceuticalStartDateTime")
    start_time = str(radio.get("RadiopharmaceuticalStartTime", "") or "").strip()
    if not start_time:
        raise _missing(
            name,
            "RadiopharmaceuticalStartTime",
            "the injection time is unknown (neither RadiopharmaceuticalStartDateTime (0018,1078) nor "
            "RadiopharmaceuticalStartTime is given)",
            "RadiopharmaceuticalInformationSequence",
        )
    # A time without a date is on the scan's day (the convention of the QIBA SUV profile).
    return _datetime(scan_start.strftime("%Y%m%d"), start_time, name, "RadiopharmaceuticalStartTime")


def _datetime(date: str, time: str, name: str, what: str) -> dt.datetime:
    return _parse_dt(date.strip() + time.strip(), name, what)


def _parse_dt(text: str, name: str, what: str) -> dt.datetime:
    body = text.split("+")[0].split("-")[0] if len(text) > 8 else text
    whole, _, fraction = body.partition(".")
    formats = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 10: "%Y%m%d%H", 8: "%Y%m%d"}
    if len(whole) not in formats:
        raise PetTimingError(name, f"{what} {text!r} is not a DICOM date and time")
    try:
        value = dt.datetime.strptime(whole, formats[len(whole)])
    except ValueError:
        raise PetTimingError(name, f"{what} {text!r} is not a DICOM date and time") from None
    if fraction:
        value += dt.timedelta(seconds=float("0." + fraction))
    return value


def _check_constant(inspected: list[InspectedFile]) -> None:
    reference = inspected[0]
    for item in inspected[1:]:
        for keyword in SERIES_CONSTANT:
            a = str(reference.dataset.get(keyword, "") or "").strip()
            b = str(item.dataset.get(keyword, "") or "").strip()
            if a != b:
                raise InconsistentPetSeriesError.for_files(
                    [reference.info.file_name, item.info.file_name],
                    f"{keyword} {_TAGS.get(keyword, '')} is {a!r} in {reference.info.file_name} but {b!r} in "
                    f"{item.info.file_name}; one PET series has one SUV scale",
                )


def _with_voxels(series: ImageSeries, voxels: np.ndarray) -> ImageSeries:
    from dataclasses import replace

    return replace(series, volume=series.volume.with_voxels(voxels))


__all__ = [
    "InconsistentPetSeriesError",
    "MissingSuvTagError",
    "PetCorrectionError",
    "PetIntakeError",
    "PetSeries",
    "PetTimingError",
    "PetUnitsError",
    "load_pet_series",
]
