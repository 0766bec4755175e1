"""Pseudonymization before upload and re-identification after download, on real DICOM: a phantom
CT series with the RTSTRUCT drawn on it, carrying a made-up patient's identity."""

from __future__ import annotations

import stat

import numpy as np
import pydicom
import pytest

from rtgrid.client.pseudonym import Pseudonymizer
from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs

SHAPE, SPACING = (8, 48, 48), (3.0, 3.0, 3.0)
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042-SECRET", "PatientBirthDate": "19610203",
            "InstitutionName": "St Elsewhere Hospital", "ReferringPhysicianName": "House^Gregory",
            "AccessionNumber": "ACC-77731"}


def with_identity(folder):
    """A phantom CT + RTSTRUCT whose files carry IDENTITY and a private tag; returns their paths."""
    case = write_phantom_case(folder, shape=SHAPE, spacing_mm=SPACING, seed=9)
    rtstruct, _ = write_plan_inputs(case, make_phantom(SHAPE, SPACING, 9), folder / "manual")
    paths = sorted(case.ct_dir.iterdir()) + [rtstruct]
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.private_block(0x0029, "HOSPITAL PACS", create=True).add_new(0x01, "LO", "Jane Doe, ward 7")
        ds.save_as(path, enforce_file_format=False)
    return paths


def _uids(ds) -> set[str]:
    found = set()
    ds.walk(lambda _, e: found.update(map(str, e.value if e.VM > 1 else [e.value]))
            if e.VR == "UI" and e.value else None)
    return found


@pytest.fixture
def originals(tmp_path):
    return with_identity(tmp_path / "patient")


def test_pseudonymized_files_carry_no_identity_and_keep_their_references(originals, tmp_path):
    mapping = tmp_path / "hospital" / "pseudonyms.json"
    copies, pseudonym = Pseudonymizer(mapping).pseudonymize(originals, tmp_path / "out")
    assert pseudonym.startswith("RTG-") and len(copies) == len(originals)
    for copy in copies:
        raw = copy.read_bytes()
        for value in (*IDENTITY.values(), "Doe", "Jane", "RTGRID-PHANTOM", "ward 7"):
            assert value.encode() not in raw, (copy.name, value)
        assert "Jane" not in copy.name
    before = [pydicom.dcmread(p) for p in originals]
    after = [pydicom.dcmread(p) for p in copies]
    old_uids = set().union(*(_uids(ds) for ds in before)) | {str(ds.file_meta.MediaStorageSOPInstanceUID) for ds in before}
    new_uids = set().union(*(_uids(ds) for ds in after))
    # Every instance UID is new; class and syntax UIDs (the DICOM root) stay.
    assert {u for u in old_uids & new_uids} == {u for u in old_uids if u.startswith("1.2.840.10008.")}
    cts = [ds for ds in after if ds.Modality == "CT"]
    rs = next(ds for ds in after if ds.Modality == "RTSTRUCT")
    assert all(ds.PatientID == pseudonym and str(ds.PatientName) == pseudonym for ds in after)
    assert len({ds.SeriesInstanceUID for ds in cts}) == 1 and len({ds.StudyInstanceUID for ds in after}) == 1
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in after)
    # The RTSTRUCT still points at the (new) CT: frame of reference and every contour's image.
    ct_sops = {ds.SOPInstanceUID for ds in cts}
    referenced = {c.ReferencedSOPInstanceUID for roi in rs.ROIContourSequence for contour in roi.ContourSequence
                  for c in contour.ContourImageSequence}
    assert referenced and referenced <= ct_sops
    assert {r.ReferencedFrameOfReferenceUID for r in rs.StructureSetROISequence} == {cts[0].FrameOfReferenceUID}
    for old, new in zip(sorted(before[:-1], key=lambda d: d.InstanceNumber), sorted(cts, key=lambda d: d.InstanceNumber)):
        assert np.array_equal(old.pixel_array, new.pixel_array)  # the images themselves are untouched
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    assert "MRN-0042-SECRET" in mapping.read_text()  # the mapping, at the hospital, holds the identity


def test_mapping_is_consistent_across_uploads_and_reidentifies(originals, tmp_path):
    mapping = tmp_path / "pseudonyms.json"
    first, pseudonym = Pseudonymizer(mapping).pseudonymize(originals, tmp_path / "a")
    again, same = Pseudonymizer(mapping).pseudonymize(originals, tmp_path / "b")  # a later upload, a new process
    assert same == pseudonym
    assert [p.name for p in first] == [p.name for p in again]
    # A result the grid made from the pseudonymized case: here, the RTSTRUCT copy with a new SOP UID.
    result_path = next(p for p in first if p.name.startswith("RTSTRUCT"))
    result = pydicom.dcmread(result_path)
    result.SOPInstanceUID = result.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    made_by_grid = result.SOPInstanceUID
    result.save_as(result_path, enforce_file_format=False)
    assert Pseudonymizer(mapping).reidentify_file(result_path)
    back, original = pydicom.dcmread(result_path), pydicom.dcmread(originals[-1])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName", "AccessionNumber"):
        assert str(back.get(keyword)) == IDENTITY[keyword]
    assert back.SOPInstanceUID == made_by_grid  # the grid's own new UIDs stay
    assert back.StudyInstanceUID == original.StudyInstanceUID
    assert back.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID == \
        original.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID
    assert back.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == \
        original.StructureSetROISequence[0].ReferencedFrameOfReferenceUID


def test_reidentify_leaves_other_files_alone(tmp_path, originals):
    mapping = tmp_path / "pseudonyms.json"
    Pseudonymizer(mapping).pseudonymize(originals[:1], tmp_path / "a")
    report = tmp_path / "plan-report.json"
    report.write_text('{"goals": []}')
    assert not Pseudonymizer(mapping).reidentify_file(report) and report.read_text() == '{"goals": []}'
    stranger = pydicom.dcmread(originals[0])  # not pseudonymized: not a patient of this mapping
    stranger.PatientID = "RTG-NOTOURS"
    stranger.save_as(tmp_path / "x.dcm", enforce_file_format=False)
    assert not Pseudonymizer(mapping).reidentify_file(tmp_path / "x.dcm")
