"""OpenKBP head-and-neck patients: load the challenge's ``pt_N.npz`` files, write them as DICOM.

The OpenKBP grand challenge (Babier et al., Med. Phys. 48 (2021) 5549-5561, MIT licence) ships
real head-and-neck IMRT patients with clinical contours and dose. Each ``.npz`` holds arrays
indexed ``[z, y, x]`` in DICOM patient coordinates (LPS: x to the patient's left, y posterior,
z superior), ``spacing_mm`` and ``origin_mm`` as ``(x, y, z)``, one bool mask per structure
named in ``structures``, ``dose_gy`` and ``possible_dose_mask``. A structure that is absent was
not contoured; it is not known to be absent from the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import Volume

TG263_NAMES: dict[str, str] = {
    "Brainstem": "Brainstem",
    "SpinalCord": "SpinalCord",
    "RightParotid": "Parotid_R",
    "LeftParotid": "Parotid_L",
    "Esophagus": "Esophagus",
    "Larynx": "Larynx",
    "Mandible": "Bone_Mandible",
    "PTV70": "PTV70",
    "PTV63": "PTV63",
    "PTV56": "PTV56",
}
"""OpenKBP structure name -> AAPM TG-263 name."""

OAR_NAMES: tuple[str, ...] = ("Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus", "Larynx", "Bone_Mandible")
"""The seven organs at risk, by TG-263 name, in the challenge's order."""

BODY_NAME = "BODY"
BODY_THRESHOLD_HU = -1000
"""The source sets everything outside the body to -1024 HU."""
_COLORS: dict[str, tuple[int, int, int]] = {
    "Brainstem": (255, 170, 0),
    "SpinalCord": (255, 255, 0),
    "Parotid_R": (0, 170, 255),
    "Parotid_L": (0, 255, 170),
    "Esophagus": (170, 85, 255),
    "Larynx": (255, 85, 170),
    "Bone_Mandible": (230, 230, 200),
    "PTV70": (255, 0, 0),
    "PTV63": (255, 128, 0),
    "PTV56": (255, 200, 0),
    BODY_NAME: (0, 160, 0),
}
_PATIENT_FILE = re.compile(r"^pt_(\d+)\.npz$")


class OpenKBPError(EngineError, ValueError):
    """An OpenKBP file is missing, malformed or asked for something it does not hold."""


@dataclass(frozen=True)
class OpenKBPPatient:
    """One OpenKBP patient on its CT grid.

    Attributes
    ----------
    patient_id : str
        The file's stem, e.g. ``"pt_201"``.
    volume : Volume
        The planning CT in HU (``int16``), identity direction, LPS geometry from the file.
    masks : dict[str, np.ndarray]
        TG-263 name -> bool ``[z, y, x]``, only the structures that were contoured.
    dose_gy : np.ndarray or None
        float32 ``[z, y, x]`` clinical dose in Gy; ``None`` when the file has none.
    possible_dose_mask : np.ndarray
        bool ``[z, y, x]``: where dose can be non-zero (the body). A file without one (no dose
        either, e.g. ``pt_38``) gets the body as the source kept it: every voxel above -1000 HU.
    """

    patient_id: str
    volume: Volume
    masks: dict[str, np.ndarray]
    dose_gy: np.ndarray | None
    possible_dose_mask: np.ndarray


@dataclass(frozen=True)
class OpenKBPDicom:
    """What ``write_openkbp_dicom`` wrote.

    Attributes
    ----------
    ct_dir : Path
        The folder of the CT series (one file per slice).
    ct_files : list[Path]
        The slices, slice ``k`` at index ``k``.
    rtstruct_path : Path
        The clinical RT Structure Set.
    study_instance_uid, series_instance_uid, frame_of_reference_uid : str
        The CT's identity, which the structure set references.
    structure_names : tuple[str, ...]
        ROI names in the structure set, in order.
    """

    ct_dir: Path
    ct_files: list[Path]
    rtstruct_path: Path
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    structure_names: tuple[str, ...]


def openkbp_patients(folder: Path) -> list[Path]:
    """The ``pt_N.npz`` files of a folder, in numeric order of ``N``.

    Parameters
    ----------
    folder : Path
        e.g. ``../shared/data/openkbp/train``.

    Returns
    -------
    list[Path]

    Raises
    ------
    OpenKBPError
        The folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OpenKBPError(f"{folder} is not a folder of OpenKBP patients")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATIENT_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_openkbp_patient(path: Path) -> OpenKBPPatient:
    """Read one OpenKBP ``.npz`` file.

    Parameters
    ----------
    path : Path
        A ``pt_N.npz`` file.

    Returns
    -------
    OpenKBPPatient
        Masks renamed to TG-263; the CT keeps its int16 HU.

    Raises
    ------
    OpenKBPError
        The file is missing, lacks ``ct_hu``/``spacing_mm``/``origin_mm``,
        or an array's shape differs from the CT's.
    """
    path = Path(path)
    if not path.is_file():
        raise OpenKBPError(f"{path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("ct_hu", "spacing_mm", "origin_mm") if k not in data.files]
        if missing:
            raise OpenKBPError(f"{path.name} lacks {', '.join(missing)}")
        ct = data["ct_hu"]
        if ct.ndim != 3:
            raise OpenKBPError(f"{path.name}: ct_hu must be 3-D [z, y, x], got shape {ct.shape}")
        names = [str(s) for s in data["structures"]] if "structures" in data.files else []
        masks = {}
        for name in names:
            if name not in data.files:
                continue
            if name not in TG263_NAMES:
                raise OpenKBPError(f"{path.name}: unknown structure {name!r}")
            masks[TG263_NAMES[name]] = _same_shape(data[name].astype(bool), ct.shape, name, path)
        dose = _same_shape(data["dose_gy"].astype(np.float32), ct.shape, "dose_gy", path) if "dose_gy" in data.files else None
        if "possible_dose_mask" in data.files:
            possible = _same_shape(data["possible_dose_mask"].astype(bool), ct.shape, "possible_dose_mask", path)
        else:
            possible = ct > BODY_THRESHOLD_HU
        volume = Volume(ct, origin_mm=data["origin_mm"], spacing_mm=data["spacing_mm"])
    return OpenKBPPatient(path.stem, volume, masks, dose, possible)


def write_openkbp_dicom(
    patient: OpenKBPPatient,
    out_dir: Path,
    *,
    structures: Sequence[str] | None = None,
    include_body: bool = True,
) -> OpenKBPDicom:
    """Write a patient as a DICOM CT series and a clinical RT Structure Set on its frame.

    Parameters
    ----------
    patient : OpenKBPPatient
        As loaded by ``load_openkbp_patient``.
    out_dir : Path
        The CT goes to ``out_dir / "ct"``, the structure set to ``out_dir / "RS.clinical.dcm"``.
    structures : Sequence[str], optional
        TG-263 names to write (all the patient's masks when ``None``).
    include_body : bool
        Also write a ``BODY`` (EXTERNAL) outline from ``possible_dose_mask``.

    Returns
    -------
    OpenKBPDicom

    Raises
    ------
    OpenKBPError
        A requested structure was not contoured for this patient.
    """
    out_dir = Path(out_dir)
    names = list(patient.masks) if structures is None else list(structures)
    absent = [n for n in names if n not in patient.masks]
    if absent:
        raise OpenKBPError(f"{patient.patient_id} has no contour for {', '.join(absent)}")
    ct_dir = out_dir / "ct"
    ct_files = write_ct_series(
        patient.volume,
        ct_dir,
        patient_id=patient.patient_id,
        patient_name=f"OpenKBP^{patient.patient_id}",
        study_description="OpenKBP head and neck",
        series_description="planning CT",
    )
    # Read back through intake so the structure set references the slices exactly as uploaded.
    series = load_series_dir(ct_dir)
    specs = [
        StructureSpec(
            name=n,
            mask=patient.masks[n],
            rt_roi_interpreted_type="PTV" if n.startswith("PTV") else "ORGAN",
            color=_COLORS.get(n, (128, 128, 128)),
            generation_algorithm="MANUAL",
            description="OpenKBP clinical contour",
        )
        for n in names
    ]
    if include_body:
        specs.append(
            StructureSpec(BODY_NAME, patient.possible_dose_mask, "EXTERNAL", _COLORS[BODY_NAME], "MANUAL", "OpenKBP possible dose mask")
        )
    ds = write_rtstruct(series, specs, label="CLINICAL", description="OpenKBP clinical contours")
    rtstruct_path = out_dir / "RS.clinical.dcm"
    ds.save_as(rtstruct_path, enforce_file_format=True)
    return OpenKBPDicom(
        ct_dir=ct_dir,
        ct_files=ct_files,
        rtstruct_path=rtstruct_path,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        structure_names=tuple(s.name for s in specs),
    )


def _same_shape(array: np.ndarray, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if array.shape != shape:
        raise OpenKBPError(f"{path.name}: {name} has shape {array.shape}, the CT {shape}")
    return array
