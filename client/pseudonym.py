"""Pseudonymization at the hospital before upload, and re-identification of results after download.

What leaves the hospital follows DICOM PS3.15 Annex E, the Basic Application Level
Confidentiality Profile (Table E.1-1, in :mod:`.deid_table`): every attribute it names is removed,
emptied or replaced by a dummy value as the table says, private tags are dropped, and every
instance UID (study, series, SOP instance, frame of reference, and every reference to them, file
meta included) is replaced by a new random UID, consistently across the CT series and its
RTSTRUCT and across uploads. The patient's name and ID become a pseudonym. Two options of the
standard apply:

- Clean Descriptors: ROI names are kept (a plan's order names its structures: PTV, Heart, ...);
  a hospital must not put identity in a structure's name.
- Retain Longitudinal Temporal Information with Modified Dates (``shift_dates=True``): the
  profile's dates are moved by one random number of days per patient instead of being removed.

The result says so (PatientIdentityRemoved, DeidentificationMethod and its code sequence). The
mapping stays at the hospital in one JSON file (mode 0600); with it, results the grid returns
(RTSTRUCT, RTPLAN, RTDOSE referencing the pseudonymous CT) get the patient's identity, the
study's date and time and the original UIDs back.

Not covered: identity burnt into pixels.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .deid_table import BASIC_PROFILE, BASIC_PROFILE_GROUPS
from .sdk import LocalFileError

# The patient's identity: kept in the mapping, written back into results.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
# The study's date and time: kept in the mapping per study, written back into results.
STUDY_KEYWORDS = ("StudyDate", "StudyTime")
CLEAN_DESCRIPTORS_KEPT = frozenset({0x30060026})  # ROI Name (Clean Descriptors Option)
# Where the table leaves a choice, the later action keeps the attribute valid whatever the IOD
# says of it (a dummy satisfies a type 1 attribute, an empty value a type 2 one).
RESOLVED_ACTIONS = {"Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR = {"PN": "ANONYMIZED", "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y",
               "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0}
SHIFT_DAYS_RANGE = (30, 3650)
"""A patient's dates move back by a random number of days in this range (with ``shift_dates``)."""
# PS3.16 CID 7050 codes of the profile and the options applied.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS_CODE = ("113105", "Clean Descriptors Option")
MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
# UIDs under the DICOM root name classes and syntaxes, never a patient's data: they stay.
DICOM_ROOT = "1.2.840.10008."
PSEUDONYM_PREFIX = "RTG-"
MAPPING_VERSION = 1


class Pseudonymizer:
    """Replaces identities and UIDs consistently; the mapping lives in ``mapping_path``.

    Parameters
    ----------
    mapping_path : Path
        The hospital's mapping file; created (mode 0600) on the first :meth:`save`.
    shift_dates : bool
        Move the profile's dates by a per-patient number of days instead of removing them.
    """

    def __init__(self, mapping_path: Path | str, shift_dates: bool = False) -> None:
        self.mapping_path = Path(mapping_path)
        self.shift_dates = shift_dates
        data = json.loads(self.mapping_path.read_text()) if self.mapping_path.exists() else {}
        if data and data.get("version") != MAPPING_VERSION:
            raise ValueError(f"{self.mapping_path}: mapping version {data.get('version')}, expected {MAPPING_VERSION}")
        self.patients: dict[str, dict] = data.get("patients", {})  # original PatientID -> pseudonym, identity
        self.uids: dict[str, str] = data.get("uids", {})  # original UID -> pseudonymous UID
        self.studies: dict[str, dict] = data.get("studies", {})  # original study UID -> date and time
        self._originals = {new: old for old, new in self.uids.items()}

    # pseudonymize
    def pseudonym_for(self, ds: Dataset) -> str:
        """The patient's pseudonym (made and remembered on first sight)."""
        key = str(ds.get("PatientID", "") or ds.get("PatientName", ""))
        if key not in self.patients:
            identity = {k: str(ds.get(k, "")) for k in PATIENT_KEYWORDS if k in ds}
            self.patients[key] = {"pseudonym": PSEUDONYM_PREFIX + secrets.token_hex(6).upper(), "identity": identity}
        return self.patients[key]["pseudonym"]

    def _new_uid(self, uid: str) -> str:
        if not uid or uid.startswith(DICOM_ROOT):
            return uid
        if uid not in self.uids:
            self.uids[uid] = generate_uid()  # 2.25.<random 128 bits>: nothing of the original survives
            self._originals[self.uids[uid]] = uid
        return self.uids[uid]

    def _shift_days(self, ds: Dataset) -> int:
        patient = self.patients[str(ds.get("PatientID", "") or ds.get("PatientName", ""))]
        if "date_shift_days" not in patient:
            low, high = SHIFT_DAYS_RANGE
            patient["date_shift_days"] = -(low + secrets.randbelow(high - low + 1))
        return patient["date_shift_days"]

    def pseudonymize_dataset(self, ds: Dataset) -> str:
        """De-identify ``ds`` in place by the Basic Profile (see the module); returns the pseudonym."""
        pseudonym = self.pseudonym_for(ds)
        shift = self._shift_days(ds) if self.shift_dates else None
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        if study_uid and study_uid not in self.studies:
            self.studies[study_uid] = {k: str(ds.get(k, "") or "") for k in STUDY_KEYWORDS}
        ds.remove_private_tags()
        apply_basic_profile(ds, shift)
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        _map_uids(ds, self._new_uid)
        if getattr(ds, "file_meta", None) is not None:
            _map_uids(ds.file_meta, self._new_uid)
        _mark_deidentified(ds, shift is not None)
        return pseudonym

    def pseudonymize(self, paths: Iterable[Path], out_dir: Path) -> tuple[list[Path], str]:
        """Write pseudonymized copies of DICOM files into ``out_dir`` and save the mapping.

        Files are named by modality and new SOP instance UID (an original file name may carry a
        patient's name). Returns the new paths and the pseudonym of the (last) patient.

        Raises
        ------
        LocalFileError
            For a file that is not DICOM (nothing that cannot be checked leaves the hospital).
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        written, pseudonym = [], ""
        for i, path in enumerate(paths):
            try:
                ds = pydicom.dcmread(path)
            except pydicom.errors.InvalidDicomError as exc:
                raise LocalFileError(f"{path} is not DICOM, so it cannot be pseudonymized: {exc}") from None
            pseudonym = self.pseudonymize_dataset(ds)
            sop = ds.file_meta.get("MediaStorageSOPInstanceUID", "") if getattr(ds, "file_meta", None) else ""
            target = out_dir / f"{ds.get('Modality', 'OT')}.{ds.get('SOPInstanceUID', '') or sop or i}.dcm"
            ds.save_as(target, enforce_file_format=False)
            written.append(target)
        self.save()
        return written, pseudonym

    # re-identify
    def reidentify_dataset(self, ds: Dataset) -> bool:
        """Give a result back its patient and the original UIDs, in place; False when the result
        is not of a patient in this mapping (left unchanged)."""
        pseudonym = str(ds.get("PatientID", ""))
        patient = next((p for p in self.patients.values() if p["pseudonym"] == pseudonym), None)
        if patient is None:
            return False
        for keyword, value in patient["identity"].items():
            setattr(ds, keyword, value)
        original = lambda uid: self._originals.get(uid, uid)  # noqa: E731 - new UIDs of the grid stay
        _map_uids(ds, original)
        if getattr(ds, "file_meta", None) is not None:
            _map_uids(ds.file_meta, original)
        for keyword, value in self.studies.get(str(ds.get("StudyInstanceUID", "")), {}).items():
            setattr(ds, keyword, value)
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence"):
            if keyword in ds:
                delattr(ds, keyword)
        return True

    def reidentify_file(self, path: Path) -> bool:
        """Re-identify a downloaded DICOM file in place; non-DICOM files are left alone (False)."""
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            return False
        if not self.reidentify_dataset(ds):
            return False
        ds.save_as(path, enforce_file_format=False)
        return True

    def save(self) -> None:
        """Write the mapping atomically, readable by its owner only."""
        self.mapping_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.mapping_path.parent, prefix=".pseudonyms-")
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": MAPPING_VERSION, "patients": self.patients, "uids": self.uids,
                       "studies": self.studies}, fh, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.mapping_path)


def profile_action(tag: int) -> str | None:
    """The Basic Profile's action on ``tag`` (choices resolved, see ``RESOLVED_ACTIONS``), or None."""
    action = BASIC_PROFILE.get(tag)
    if action is None:
        action = next((a for value, mask, a in BASIC_PROFILE_GROUPS if tag & mask == value), None)
    return RESOLVED_ACTIONS.get(action, action) if action else None


def _shifted(value: str, vr: str, days: int) -> str:
    """A DA or DT value moved by ``days`` (times and the rest of a DT kept); unparsable: the dummy."""
    try:
        moved = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + dt.timedelta(days=days)
    except ValueError:
        return DUMMY_BY_VR[vr]
    return moved.strftime("%Y%m%d") + (value[8:] if vr == "DT" else "")


def apply_basic_profile(ds: Dataset, shift_days: int | None = None) -> None:
    """Apply PS3.15 Table E.1-1 to ``ds`` and its sequences in place (UIDs excepted: ``U`` is
    the caller's consistent mapping). With ``shift_days`` the table's dates move by that many
    days instead, and its times stay."""
    for element in list(ds):
        tag = int(element.tag)
        action = None if tag in CLEAN_DESCRIPTORS_KEPT else profile_action(tag)
        if shift_days is not None and action and element.VR in ("DA", "DT", "TM"):
            if element.VR != "TM" and element.value:  # whole days: a time of day stays what it was
                element.value = _shifted(str(element.value), element.VR, shift_days)
        elif action == "X":
            del ds[tag]
        elif element.VR == "SQ":
            if action == "Z":
                element.value = []
            else:  # D, U, or not named: the items are de-identified in turn
                for item in element.value:
                    apply_basic_profile(item, shift_days)
        elif action == "Z":
            element.value = None
        elif action == "D" and element.VR != "UI":
            element.value = _dummy(element.VR)


def _dummy(vr: str):
    if vr in DUMMY_BY_VR:
        return DUMMY_BY_VR[vr]
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b""
    return DUMMY_TEXT  # LO, SH, LT, ST, UT, UC, CS, AE, UR


def _mark_deidentified(ds: Dataset, shifted: bool) -> None:
    """PatientIdentityRemoved, DeidentificationMethod and its codes (PS3.3 C.7.1.1)."""
    codes = [BASIC_PROFILE_CODE, CLEAN_DESCRIPTORS_CODE] + ([MODIFIED_DATES_CODE] if shifted else [])
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [meaning for _, meaning in codes]  # LO, 64 characters each
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items


def _map_uids(ds: Dataset, change) -> None:
    """Apply ``change`` to every UI value in ``ds``, nested sequences included."""

    def visit(dataset: Dataset, element) -> None:
        if element.VR != "UI" or element.value in (None, ""):
            return
        if element.VM > 1:
            element.value = [change(str(v)) for v in element.value]
        else:
            element.value = change(str(element.value))

    ds.walk(visit)
