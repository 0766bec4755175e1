"""PS3.15 Annex E Basic Profile applied to real files: pydicom's test data (CT, MR, RT plan,
structure set and dose) and the shared JPEG 2000 CT series; date shifting and re-identification."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from rtgrid.client.deid_table import BASIC_PROFILE
from rtgrid.client.pseudonym import (
    CLEAN_DESCRIPTORS_KEPT,
    DICOM_ROOT,
    DUMMY_BY_VR,
    DUMMY_TEXT,
    SHIFT_DAYS_RANGE,
    Pseudonymizer,
    profile_action,
)
from rtgrid.engines.imaging.intake import load_series_dir

PSEUDONYM_TAGS = frozenset({0x00100010, 0x00100020})  # PatientName, PatientID: the pseudonym (a Z/D dummy)
TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "rtdose.dcm", "JPEG2000.dcm")


def assert_profile_applied(before: pydicom.Dataset, after: pydicom.Dataset, where: str = "") -> int:
    """Every attribute the table names got its action; returns how many were checked."""
    checked = 0
    for element in before:
        tag, name = int(element.tag), f"{where}{element.keyword or element.tag}"
        if element.tag.is_private:
            assert element.tag not in after, f"{name}: private tag kept"
            continue
        action = None if tag in CLEAN_DESCRIPTORS_KEPT | PSEUDONYM_TAGS else profile_action(tag)
        if action == "X":
            assert element.tag not in after, f"{name}: not removed"
        elif action == "Z":
            assert element.tag in after and after[tag].is_empty, f"{name}: not emptied"
        elif action == "D" and element.VR not in ("UI", "SQ"):
            expected = DUMMY_BY_VR.get(element.VR, DUMMY_TEXT if element.VR not in ("OB", "OW", "UN") else b"")
            assert after[tag].value == expected, f"{name}: {after[tag].value!r} is not the dummy"
        elif element.VR == "UI" and element.value and not str(element.value).startswith(DICOM_ROOT):
            assert after[tag].value != element.value, f"{name}: UID kept"
        if element.VR == "SQ" and element.tag in after and action != "Z":
            for i, (old, new) in enumerate(zip(element.value, after[tag].value)):
                checked += assert_profile_applied(old, new, f"{name}[{i}].")
        checked += action is not None
    return checked


def _part10(name: str, folder) -> str:
    """A pydicom test file as a Part 10 file (rtstruct.dcm is stored without the file meta)."""
    ds = pydicom.dcmread(get_testdata_file(name), force=True)
    folder.mkdir(exist_ok=True)
    ds.save_as(folder / name, enforce_file_format=True)
    return str(folder / name)


@pytest.mark.parametrize("name", TEST_FILES)
def test_basic_profile_on_pydicom_test_data(name, tmp_path):
    original = _part10(name, tmp_path / "in")
    [copy], pseudonym = Pseudonymizer(tmp_path / "map.json").pseudonymize([original], tmp_path / "out")
    before, after = pydicom.dcmread(original), pydicom.dcmread(copy)
    assert assert_profile_applied(before, after) >= 5  # each file has attributes the table names
    assert after.PatientName == after.PatientID == pseudonym
    assert after.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in after.DeidentificationMethodCodeSequence] == ["113100", "113105"]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName"):
        value = str(before.get(keyword, "") or "")
        if value:
            assert value.encode() not in copy.read_bytes(), keyword
    if "PixelData" in before:
        assert after.PixelData == before.PixelData  # the image is untouched


def test_roi_names_kept_under_clean_descriptors(tmp_path):
    original = _part10("rtstruct.dcm", tmp_path / "in")
    [copy], _ = Pseudonymizer(tmp_path / "map.json").pseudonymize([original], tmp_path)
    before, after = pydicom.dcmread(original), pydicom.dcmread(copy)
    assert [r.ROIName for r in after.StructureSetROISequence] == [r.ROIName for r in before.StructureSetROISequence]
    assert BASIC_PROFILE[0x30060026] == "Z"  # what the Basic Profile alone would have done


def test_dates_shift_by_one_offset_per_patient_and_come_back(tmp_path):
    mapping = tmp_path / "map.json"
    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    copies, _ = Pseudonymizer(mapping, shift_dates=True).pseudonymize(files[:1], tmp_path / "a")
    before, after = pydicom.dcmread(files[0]), pydicom.dcmread(copies[0])
    day = lambda v: dt.date(int(v[:4]), int(v[4:6]), int(v[6:8]))  # noqa: E731
    shift = (day(after.StudyDate) - day(before.StudyDate)).days
    assert -SHIFT_DAYS_RANGE[1] <= shift <= -SHIFT_DAYS_RANGE[0]
    assert (day(after.ContentDate) - day(before.ContentDate)).days == shift  # one offset for the patient
    assert after.StudyTime == before.StudyTime  # times are not dates
    assert "113107" in [c.CodeValue for c in after.DeidentificationMethodCodeSequence]
    again, _ = Pseudonymizer(mapping, shift_dates=True).pseudonymize(files[:1], tmp_path / "b")
    assert pydicom.dcmread(again[0]).StudyDate == after.StudyDate  # kept in the mapping
    # A result made on the pseudonymous study gets the real study date back.
    result = pydicom.dcmread(copies[0])
    result.SOPInstanceUID = pydicom.uid.generate_uid()
    result.save_as(tmp_path / "result.dcm")
    assert Pseudonymizer(mapping).reidentify_file(tmp_path / "result.dcm")
    back = pydicom.dcmread(tmp_path / "result.dcm")
    assert back.StudyDate == before.StudyDate and back.PatientID == before.PatientID
    assert "PatientIdentityRemoved" not in back


def test_still_valid_per_dciodvfy(tmp_path):
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing in CI (make tools installs dicom3tools)")
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    original = get_testdata_file("CT_small.dcm")
    [copy], _ = Pseudonymizer(tmp_path / "map.json").pseudonymize([original], tmp_path)

    def errors(path) -> set[str]:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        return {line.split(" - ")[0] for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}

    assert errors(copy) <= errors(original)


def test_basic_profile_on_the_shared_jpeg2000_series(totalseg_dir, tmp_path):
    ct_dir = totalseg_dir / "ct_dicom"
    files = sorted(ct_dir.iterdir())
    copies, pseudonym = Pseudonymizer(tmp_path / "map.json").pseudonymize(files, tmp_path / "out")
    for original, copy in zip(files, copies):
        assert assert_profile_applied(pydicom.dcmread(original), pydicom.dcmread(copy)) >= 5
    before, after = load_series_dir(ct_dir), load_series_dir(tmp_path / "out")
    assert after.patient_id == pseudonym and before.patient_id != pseudonym
    assert after.series_instance_uid != before.series_instance_uid
    assert np.array_equal(after.volume.voxels, before.volume.voxels)
    assert np.allclose(after.volume.origin_mm, before.volume.origin_mm)
    assert np.allclose(after.volume.spacing_mm, before.volume.spacing_mm)
