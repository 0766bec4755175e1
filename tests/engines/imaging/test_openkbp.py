"""OpenKBP patients: loaded with their LPS geometry, written as DICOM, read back through intake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.rtstruct import read_rtstruct, read_rtstruct_rois
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.openkbp import (
    OAR_NAMES,
    TG263_NAMES,
    OpenKBPError,
    load_openkbp_patient,
    openkbp_patients,
    write_openkbp_dicom,
)
from tests.conftest import require_shared


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def validation_dir() -> Path:
    return require_shared("openkbp/validation")


def test_patients_are_listed_in_numeric_order(validation_dir: Path) -> None:
    paths = openkbp_patients(validation_dir)
    numbers = [int(p.stem.split("_")[1]) for p in paths]
    assert len(paths) == 33
    assert numbers == sorted(numbers)
    with pytest.raises(OpenKBPError, match="not a folder"):
        openkbp_patients(validation_dir / "absent")


def test_load_renames_to_tg263_and_keeps_geometry(validation_dir: Path) -> None:
    path = openkbp_patients(validation_dir)[0]
    patient = load_openkbp_patient(path)
    with np.load(path) as raw:
        present = {TG263_NAMES[str(s)] for s in raw["structures"]}
        np.testing.assert_array_equal(patient.volume.origin_mm, raw["origin_mm"])
        np.testing.assert_array_equal(patient.volume.spacing_mm, raw["spacing_mm"])
        np.testing.assert_array_equal(patient.masks["SpinalCord"], raw["SpinalCord"])
    assert patient.patient_id == path.stem
    assert set(patient.masks) == present
    assert set(patient.masks) <= set(OAR_NAMES) | {"PTV70", "PTV63", "PTV56"}
    assert patient.volume.voxels.dtype == np.int16
    np.testing.assert_array_equal(patient.volume.direction, np.eye(3))


def test_written_dicom_reads_back_with_exact_geometry_and_masks(validation_dir: Path, tmp_path: Path) -> None:
    patient = load_openkbp_patient(openkbp_patients(validation_dir)[0])
    written = write_openkbp_dicom(patient, tmp_path, structures=["Bone_Mandible", "SpinalCord", "Parotid_L"])

    series = load_series_dir(written.ct_dir)
    assert series.frame_of_reference_uid == written.frame_of_reference_uid
    assert series.volume.same_grid(patient.volume, tol_mm=1e-3)
    np.testing.assert_allclose(series.volume.origin_mm, patient.volume.origin_mm, atol=1e-3)
    np.testing.assert_allclose(series.volume.spacing_mm, patient.volume.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(series.volume.direction, np.eye(3), atol=1e-6)  # LPS, head first supine
    np.testing.assert_array_equal(series.volume.voxels, patient.volume.voxels)

    ds = pydicom.dcmread(written.rtstruct_path)
    rois = {r.name: r for r in read_rtstruct_rois(ds)}
    assert tuple(rois) == written.structure_names == ("Bone_Mandible", "SpinalCord", "Parotid_L", "BODY")
    assert rois["BODY"].interpreted_type == "EXTERNAL"
    assert rois["Bone_Mandible"].interpreted_type == "ORGAN"
    assert all(r.frame_of_reference_uid == series.frame_of_reference_uid for r in rois.values())
    masks = read_rtstruct(ds, series.volume, frame_of_reference_uid=series.frame_of_reference_uid)
    assert dice(masks["Bone_Mandible"], patient.masks["Bone_Mandible"]) > 0.95
    assert dice(masks["BODY"], patient.possible_dose_mask) > 0.95
    assert dice(masks["SpinalCord"], patient.masks["SpinalCord"]) > 0.9

    with pytest.raises(OpenKBPError, match="no contour for Nope"):
        write_openkbp_dicom(patient, tmp_path / "again", structures=["Nope"])


def test_a_patient_without_dose_gets_its_body_from_the_ct() -> None:
    patient = load_openkbp_patient(require_shared("openkbp/train") / "pt_38.npz")
    assert patient.dose_gy is None
    np.testing.assert_array_equal(patient.possible_dose_mask, patient.volume.voxels > -1000)
    assert patient.possible_dose_mask.sum() > 100_000
