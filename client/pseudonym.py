"""Pseudonymization at the hospital before upload, and re-identification of results after download.

What leaves the hospital carries no patient identity: identifying attributes are replaced (name and
ID by a pseudonym, the others emptied or removed), private tags are dropped, every instance UID
(study, series, SOP instance, frame of reference, and every reference to them, file meta included)
is replaced by a new random UID, consistently across the CT series and its RTSTRUCT and across
uploads. The mapping stays at the hospital in one JSON file (mode 0600); with it, results the grid
returns (RTSTRUCT, RTPLAN, RTDOSE referencing the pseudonymous CT) get the patient's identity and
the original UIDs back.

Not covered: identity burnt into pixels, and dates other than the birth date (kept: planning
does not need them removed, and shifting them consistently is a policy choice for the hospital).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .sdk import LocalFileError

# The patient's identity: kept in the mapping, written back into results.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
# Other identifying attributes (after DICOM PS3.15 basic profile): emptied when present.
OTHER_IDENTIFYING_KEYWORDS = (
    "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
    "PatientTelephoneNumbers", "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "PatientComments",
    "AdditionalPatientHistory", "IssuerOfPatientID", "AdmissionID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID", "PatientWeight", "PatientSize",
)
# Sequences that hold identities of their own: removed.
REMOVED_SEQUENCES = ("OtherPatientIDsSequence", "ReferencedPatientSequence", "RequestAttributesSequence")
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
    """

    def __init__(self, mapping_path: Path | str) -> None:
        self.mapping_path = Path(mapping_path)
        data = json.loads(self.mapping_path.read_text()) if self.mapping_path.exists() else {}
        if data and data.get("version") != MAPPING_VERSION:
            raise ValueError(f"{self.mapping_path}: mapping version {data.get('version')}, expected {MAPPING_VERSION}")
        self.patients: dict[str, dict] = data.get("patients", {})  # original PatientID -> pseudonym, identity
        self.uids: dict[str, str] = data.get("uids", {})  # original UID -> pseudonymous UID
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

    def pseudonymize_dataset(self, ds: Dataset) -> str:
        """Pseudonymize ``ds`` in place; returns the patient's pseudonym."""
        pseudonym = self.pseudonym_for(ds)
        ds.remove_private_tags()
        for keyword in REMOVED_SEQUENCES:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword in PATIENT_KEYWORDS + OTHER_IDENTIFYING_KEYWORDS:
            if keyword in ds:
                setattr(ds, keyword, "")
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        _map_uids(ds, self._new_uid)
        if getattr(ds, "file_meta", None) is not None:
            _map_uids(ds.file_meta, self._new_uid)
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
            json.dump({"version": MAPPING_VERSION, "patients": self.patients, "uids": self.uids}, fh, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.mapping_path)


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
