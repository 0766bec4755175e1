"""The built-in head-and-neck model on the grid: registered on a fresh grid, contours a real OpenKBP
validation patient uploaded as DICOM under TG-263 names, and skips an abdominal CT."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.openkbp import OAR_NAMES, load_openkbp_patient, write_openkbp_dicom
from rtgrid.engines.segmentation.deep.builtin import HN_OAR_PACKAGE
from rtgrid.engines.segmentation.deep.package import package_hash, read_card
from rtgrid.engines.dicomrt.rtstruct import read_rtstruct, read_rtstruct_rois
from tests.conftest import require_shared

from .test_contour_e2e import dsc, run_contour_job

# Floors under the shipped model's own scores on this patient (engine path, build/model-hn report of
# make model-hn: Bone_Mandible 0.86, Brainstem 0.69, parotids 0.74 / 0.75, SpinalCord 0.74): they
# catch a broken pipeline (flips, offsets, wrong names or slices), not a weak model; the model's
# accuracy is the card's.
DSC_FLOORS = {"Bone_Mandible": 0.7, "Brainstem": 0.5, "Parotid_L": 0.55, "Parotid_R": 0.55, "SpinalCord": 0.55}
PATIENT = "pt_201"


def test_builtin_model_contours_a_head_and_neck_ct_and_skips_an_abdomen(grid, totalseg_dir: Path, tmp_path: Path) -> None:
    patient = load_openkbp_patient(require_shared("openkbp/validation") / f"{PATIENT}.npz")
    written = write_openkbp_dicom(patient, tmp_path / "hn", include_body=False)
    card = read_card(HN_OAR_PACKAGE)
    sha = package_hash(HN_OAR_PACKAGE)
    with grid.client() as client:
        # A fresh grid lists the built-in model without anyone registering it.
        listed = {m.sha256: m for m in client.models()}
        assert sha in listed and listed[sha].name == card.name
        _, job, _, files = run_contour_job(client, written.ct_dir, tmp_path / "hn-out", models=card.name)
        _, abdomen_job, abdomen_events, abdomen_files = run_contour_job(
            client, totalseg_dir / "ct_dicom", tmp_path / "abdomen-out", models=card.name)

    # Head and neck: TG-263 names, typed and attributed, on the uploaded slices, close to the clinical contours.
    assert job.params["models"] == f"{card.name}@{card.version}:{sha}"
    series = load_series_dir(written.ct_dir)
    ds = pydicom.dcmread(files["RS.contours.dcm"])
    rois = {r.name: r for r in read_rtstruct_rois(ds)}
    assert set(OAR_NAMES) <= set(rois)
    descriptions = {r.ROIName: str(r.get("ROIDescription", "")) for r in ds.StructureSetROISequence}
    for name in OAR_NAMES:
        assert (rois[name].interpreted_type, rois[name].generation_algorithm) == ("ORGAN", "AUTOMATIC")
        assert f"{card.name}@{card.version}" in descriptions[name] and sha[:16] in descriptions[name]
        assert rois[name].frame_of_reference_uid == series.frame_of_reference_uid
    refs = {img.ReferencedSOPInstanceUID for roi in ds.ROIContourSequence for c in getattr(roi, "ContourSequence", [])
            for img in c.ContourImageSequence}
    assert refs and refs <= {s.sop_instance_uid for s in series.slices}
    masks = read_rtstruct(ds, series.volume, frame_of_reference_uid=series.frame_of_reference_uid)
    scores = {name: dsc(masks[name], patient.masks[name]) for name in DSC_FLOORS if name in patient.masks}
    assert len(scores) == len(DSC_FLOORS)
    for name, floor in DSC_FLOORS.items():
        assert scores[name] >= floor, (name, scores)

    # Abdomen: the job succeeds with the classical structures, no head-and-neck organ, and says why.
    ds = pydicom.dcmread(abdomen_files["RS.contours.dcm"])
    names = {r.name for r in read_rtstruct_rois(ds)}
    assert not names & set(OAR_NAMES) and "BODY" in names
    assert "models" not in abdomen_job.params
    summary = json.loads(abdomen_files["contours.json"].read_text())
    assert summary["models"] == [] and summary["skipped_models"][0]["sha256"] == sha
    notices = [e.message for e in abdomen_events if "does not cover the head and neck" in e.message]
    assert len(notices) == 1 and card.name in notices[0]
    assert not any(e.stage == "segment" for e in abdomen_events)
