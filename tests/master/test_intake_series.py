"""A case holds its planning CT and MR/PET series beside it: each checked by its modality's loader
at commit, every failure named and nothing half-stored; the CT stays the series jobs plan on."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtgrid.agent.executors.files import dataset_bytes
from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.intake import load_series
from rtgrid.engines.imaging.mr_intake import load_mr_series
from rtgrid.engines.imaging.volume import Volume
from rtgrid.master.blobs import BlobStore
from rtgrid.master.config import MasterConfig
from rtgrid.master.errors import DataLoss, FailedPrecondition, InvalidArgument
from rtgrid.master.ids import now_ms
from rtgrid.master.intake import (
    Intake,
    case_rtstructs,
    commit_case,
    create_case,
    delete_case,
    finish_upload,
    start_upload,
    write_chunk,
)
from rtgrid.master.jobs.base import JobContext
from rtgrid.master.jobs.predict import PredictJob
from rtgrid.master.store.factory import open_store
from rtgrid.master.store.records import QUEUED, CaseRecord, FileRecord, JobRecord, SeriesRecord
from rtgrid.master.store.sqlite import SqliteStore
from tests.engines.imaging.modality_files import enhanced_mr_file, mr_files, pet_files, small_volume

from .test_store import location  # noqa: F401  (both backends)

PATIENT = "REG-TEST"  # the patient of modality_files' MR and PET


@pytest.fixture
def intake(tmp_path: Path):
    cfg = MasterConfig(data_dir=tmp_path)
    made = Intake(SqliteStore(cfg.db_path), BlobStore(cfg.blob_dir), cfg)
    yield made
    made.store.close()


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[tuple[str, bytes]]:
    hu = np.random.default_rng(0).integers(-1000, 1000, size=(5, 16, 16)).astype(np.int16)
    paths = write_ct_series(Volume(hu, [-16.0, -16.0, 0.0], [2.0, 2.0, 3.0]), tmp_path_factory.mktemp("ct"),
                            patient_id=PATIENT, patient_name="Test^Registration")
    return [(p.name, p.read_bytes()) for p in paths]


def _upload(intake: Intake, files: list[tuple[str, bytes]]) -> str:
    case = create_case(intake, "mixed", "st-luke")
    for name, data in files:
        upload = start_upload(intake, case.case_id, name, len(data), hashlib.sha256(data).hexdigest())
        write_chunk(intake, upload, 0, data, zlib.crc32(data))
        finish_upload(intake, upload.upload_id)
    return case.case_id


def _assert_nothing_stored(intake: Intake, case_id: str) -> None:
    assert intake.store.get_case(case_id) is None
    assert intake.store.list_series(case_id) == [] and intake.store.list_files(case_id) == []
    assert not [p for p in intake.blobs.root.rglob("*") if p.is_file() and p.suffix != ".part"]


def test_a_case_holds_the_ct_with_mr_echoes_and_a_pet_and_plans_on_the_ct(intake, ct_files):
    mr = mr_files(small_volume(), echoes=(1, 2))
    pet = pet_files(small_volume(shape=(4, 10, 12), spacing=(4.0, 4.0, 4.0), high=20000.0))
    case_id = _upload(intake, [*mr, *pet, *ct_files])  # the CT last: the order of upload does not matter
    records = commit_case(intake, case_id)
    listed = intake.store.list_series(case_id)
    assert [(s.modality, s.role, s.echo_number) for s in listed] == [
        ("CT", "planning", 0), ("MR", "secondary", 1), ("MR", "secondary", 2), ("PT", "secondary", 0)]
    assert [s.series_id for s in records] == [s.series_id for s in listed]
    assert listed[3].suv_factor > 0 and listed[0].suv_factor == 0 == listed[1].suv_factor
    assert (listed[1].n_slices, listed[1].rows, listed[1].columns) == (6, 20, 24)
    assert listed[1].series_instance_uid == listed[2].series_instance_uid != listed[0].series_instance_uid
    job = JobRecord("job-1", case_id, "contour", QUEUED, 0, {}, "contour", now_ms())
    context = JobContext(intake.store, intake.blobs, job)
    assert context.series_record.series_id == listed[0].series_id and context.series.modality == "CT"
    assert context.volume.shape == (5, 16, 16)


def test_a_file_whose_stored_bytes_changed_refuses_the_commit_and_can_be_sent_again(intake, ct_files):
    # A master stopped before a kept file reached its disk (here: its blob cut short by hand; no
    # worker checked it, as after a restart): the commit proves each file against its sha256,
    # names the damaged one, and removes the case with the damaged blob, so that the same files
    # sent again are stored anew and commit.
    case_id = _upload(intake, ct_files)
    damaged = next(f for f in intake.store.list_files(case_id) if f.file_name == ct_files[2][0])
    intake.blobs.path(damaged.sha256).write_bytes(ct_files[2][1][:-100])
    with pytest.raises(DataLoss, match=f"{ct_files[2][0]}: the master's copy no longer matches its sha256"):
        commit_case(intake, case_id)
    _assert_nothing_stored(intake, case_id)
    again = _upload(intake, ct_files)
    assert [s.modality for s in commit_case(intake, again)] == ["CT"]


@pytest.mark.parametrize(
    "bad, named",
    [
        (lambda: enhanced_mr_file(small_volume()), "Enhanced MR Image Storage"),
        (lambda: mr_files(small_volume(), edit=lambda ds, k: setattr(ds, "RescaleType", "HU")), "HU"),
        (lambda: pet_files(small_volume(), edit=lambda ds, k: delattr(ds, "PatientWeight")), "PatientWeight"),
        (lambda: pet_files(small_volume(), edit=lambda ds, k: setattr(ds, "Units", "CNTS")), "CNTS"),
        (lambda: mr_files(small_volume(), edit=lambda ds, k: setattr(ds, "PatientID", "someone-else")),
         "PatientID 'someone-else', the planning CT of PatientID 'REG-TEST'"),
    ],
    ids=["multi-frame-mr", "mr-in-hu", "pet-without-weight", "pet-in-counts", "mr-of-another-patient"],
)
def test_a_bad_mr_or_pet_series_is_named_and_nothing_is_stored(intake, ct_files, bad, named):
    case_id = _upload(intake, [*ct_files, *bad()])
    with pytest.raises(InvalidArgument, match=named.replace("(", r"\(").replace(")", r"\)")):
        commit_case(intake, case_id)
    _assert_nothing_stored(intake, case_id)


def test_mr_without_a_planning_ct_is_refused(intake):
    case_id = _upload(intake, mr_files(small_volume()))
    with pytest.raises(InvalidArgument, match="holds MR images but no CT series: modality MR is taken only beside"):
        commit_case(intake, case_id)
    _assert_nothing_stored(intake, case_id)
    empty = create_case(intake, "empty", "st-luke")
    with pytest.raises(FailedPrecondition, match="holds no CT image files"):
        commit_case(intake, empty.case_id)


def _rtstruct_on(series, names=("GTV",)) -> bytes:
    spec = [StructureSpec(n, np.ones(series.volume.shape, dtype=bool), "GTV", (255, 0, 0), "MANUAL") for n in names]
    return dataset_bytes(write_rtstruct(series, spec))


def test_an_rtstruct_drawn_on_the_mr_is_kept_for_registration_not_for_planning(intake, ct_files):
    mr = mr_files(small_volume())
    [mr_series] = load_mr_series(mr)
    ct = load_series(ct_files)
    case_id = _upload(intake, [*ct_files, *mr, ("RS.mr.dcm", _rtstruct_on(mr_series.series)),
                               ("RS.ct.dcm", _rtstruct_on(ct, ("BODY",)))])
    commit_case(intake, case_id)
    ct_record, mr_record = intake.store.list_series(case_id)
    on_mr = case_rtstructs(intake.store, intake.blobs, case_id, mr_record.frame_of_reference_uid)
    on_ct = case_rtstructs(intake.store, intake.blobs, case_id, ct_record.frame_of_reference_uid)
    assert len(on_mr) == 1 == len(on_ct) and on_mr != on_ct
    # A dose prediction reads the contours on the CT only.
    assert PredictJob()._rtstructs(intake.store, intake.blobs, case_id) == on_ct


def test_an_rtstruct_on_no_series_or_on_two_is_named_and_nothing_is_stored(intake, ct_files):
    mr = mr_files(small_volume())
    [mr_series] = load_mr_series(mr)
    ct = load_series(ct_files)
    stranger = dataclasses.replace(ct, frame_of_reference_uid="1.2.826.0.1.99")
    case_id = _upload(intake, [*ct_files, *mr, ("RS.elsewhere.dcm", _rtstruct_on(stranger))])
    with pytest.raises(InvalidArgument, match=r"RS\.elsewhere\.dcm.*frame of reference 1\.2\.826\.0\.1\.99, which is "
                                              "no series' of this case"):
        commit_case(intake, case_id)
    _assert_nothing_stored(intake, case_id)
    two = pydicom.dcmread(io.BytesIO(_rtstruct_on(mr_series.series, ("GTV", "BODY"))))
    two.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
    case_id = _upload(intake, [*ct_files, *mr, ("RS.two.dcm", dataset_bytes(two))])
    with pytest.raises(InvalidArgument, match=r"RS\.two\.dcm.*structures on 2 frames of reference .*the planning CT.*"
                                              "a structure set is drawn on one series"):
        commit_case(intake, case_id)
    _assert_nothing_stored(intake, case_id)


def test_a_store_from_before_mr_and_pet_gains_the_series_columns(location):  # noqa: F811
    first = open_store(location)
    old_columns = ("series_id", "case_id", "modality", "series_instance_uid", "frame_of_reference_uid", "n_slices",
                   "rows", "columns", "spacing_mm", "volume_sha256", "meta_sha256", "notes")
    with first.transaction():
        first._execute("DROP TABLE series")
        first._execute(f"CREATE TABLE series ({', '.join(chr(34) + c + chr(34) + ' TEXT' for c in old_columns)})")
        first._execute(f"INSERT INTO series VALUES ({', '.join('?' * len(old_columns))})",
                       ("series-old", "case-old", "CT", "1.2", "1.3", 4, 8, 8, "[1.0, 1.0, 2.0]", "a" * 64, "b" * 64,
                        "[]"))
    first.add_case(CaseRecord("case-old", "kept", True, 1, "st-luke"))
    first.close()
    second = open_store(location)
    try:
        [old] = second.list_series("case-old")
        assert (old.series_id, old.role, old.suv_factor, old.echo_number) == ("series-old", "planning", 0.0, 0)
        second.add_series(SeriesRecord("series-mr", "case-old", "MR", "1.4", "1.5", 3, 8, 8, [1.0, 1.0, 2.0],
                                       "c" * 64, "d" * 64, [], role="secondary", echo_number=2))
        assert [s.series_id for s in second.list_series("case-old")] == ["series-old", "series-mr"]
    finally:
        second.close()


def _add(intake: Intake, case_id: str, files: list[tuple[str, bytes]]) -> None:
    for name, data in files:
        upload = start_upload(intake, case_id, name, len(data), hashlib.sha256(data).hexdigest())
        write_chunk(intake, upload, 0, data, zlib.crc32(data))
        finish_upload(intake, upload.upload_id)


def _state(intake: Intake, case_id: str) -> tuple:
    """What a case holds: its series, its files (pending ones too), uploads and every blob on disk."""
    blobs = sorted(p.name for p in intake.blobs.root.rglob("*") if p.is_file() and p.suffix != ".part")
    return ([s.series_id for s in intake.store.list_series(case_id)],
            [f.file_id for f in intake.store.list_files(case_id) + intake.store.list_pending_files(case_id)],
            intake.store.list_uploads(case_id), blobs)


def test_an_add_brings_mr_and_its_contours_into_a_committed_case(intake, ct_files):
    case_id = _upload(intake, ct_files)
    commit_case(intake, case_id)
    with pytest.raises(FailedPrecondition, match="is committed and no files were added to it"):
        commit_case(intake, case_id)
    mr = mr_files(small_volume(), echoes=(1, 2))
    [echo1, _] = load_mr_series(mr)
    _add(intake, case_id, [*mr, ("RS.mr.dcm", _rtstruct_on(echo1.series))])
    # Until the add commits, jobs and listings see the case as it was.
    assert [s.modality for s in intake.store.list_series(case_id)] == ["CT"]
    assert {f.modality for f in intake.store.list_files(case_id)} == {"CT"}
    assert case_rtstructs(intake.store, intake.blobs, case_id, echo1.series.frame_of_reference_uid) == []
    added = commit_case(intake, case_id)
    assert [(s.modality, s.echo_number) for s in added] == [("MR", 1), ("MR", 2)]
    assert [(s.modality, s.role) for s in intake.store.list_series(case_id)] == [
        ("CT", "planning"), ("MR", "secondary"), ("MR", "secondary")]
    assert intake.store.list_pending_files(case_id) == []
    assert len(case_rtstructs(intake.store, intake.blobs, case_id, echo1.series.frame_of_reference_uid)) == 1
    # A second add of the same series is refused by name, and the case keeps the first.
    before = _state(intake, case_id)
    _add(intake, case_id, [(f"again-{name}", data) for name, data in mr[:6]])  # the same series, exported again
    with pytest.raises(InvalidArgument, match=f"the MR series {echo1.series.series_instance_uid} is already in case"):
        commit_case(intake, case_id)
    assert _state(intake, case_id) == before


@pytest.mark.parametrize(
    "bad, named",
    [
        (lambda ct: mr_files(small_volume(), edit=lambda ds, k: setattr(ds, "PatientID", "someone-else")),
         "PatientID 'someone-else', the planning CT of PatientID 'REG-TEST'"),
        (lambda ct: pet_files(small_volume(), edit=lambda ds, k: delattr(ds, "PatientWeight")), "PatientWeight"),
        (lambda ct: [*mr_files(small_volume()),
                     ("RS.x.dcm", _rtstruct_on(dataclasses.replace(load_series(ct), frame_of_reference_uid="1.2.9")))],
         "which is no series' of this case"),
    ],
    ids=["mr-of-another-patient", "pet-without-weight", "rtstruct-on-no-series"],
)
def test_a_refused_add_leaves_the_case_as_it_was(intake, ct_files, bad, named):
    case_id = _upload(intake, ct_files)
    commit_case(intake, case_id)
    before = _state(intake, case_id)
    _add(intake, case_id, bad(ct_files))
    with pytest.raises(InvalidArgument, match=named.replace("(", r"\(").replace(")", r"\)")):
        commit_case(intake, case_id)
    assert _state(intake, case_id) == before
    assert intake.store.get_case(case_id).committed


def test_an_add_takes_no_ct_and_deleting_during_it_removes_only_the_add(intake, ct_files):
    case_id = _upload(intake, ct_files)
    commit_case(intake, case_id)
    before = _state(intake, case_id)
    name, data = ct_files[0]
    upload = start_upload(intake, case_id, "another-ct.dcm", len(data), hashlib.sha256(data).hexdigest())
    write_chunk(intake, upload, 0, data, zlib.crc32(data))
    with pytest.raises(InvalidArgument, match="another-ct.dcm: modality CT: case .* is committed with its planning CT"):
        finish_upload(intake, upload.upload_id)
    _add(intake, case_id, mr_files(small_volume())[:3])
    data = mr_files(small_volume())[3][1]
    start_upload(intake, case_id, "unfinished.dcm", len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(FailedPrecondition, match=r"unfinished uploads \(unfinished.dcm\)"):
        commit_case(intake, case_id)
    delete_case(intake, case_id)  # the hospital gives the add up: the case stays, as it was
    assert _state(intake, case_id) == before
    assert not list(intake.blobs.partial_dir.glob("*.part"))
    with pytest.raises(FailedPrecondition, match="is committed; upload into a new case"):
        delete_case(intake, case_id)


def test_pending_files_of_an_add_on_both_backends(location):  # noqa: F811
    store = open_store(location)
    try:
        store.add_case(CaseRecord("case-add", "kept", True, 1, "st-luke"))
        for n, pending in ((1, False), (2, True), (3, True)):
            store.add_file(FileRecord(f"file-{n}", "case-add", f"f{n}.dcm", f"{n}" * 64, 10, "MR", f"1.{n}", [],
                                      pending=pending))
        assert [f.file_id for f in store.list_files("case-add")] == ["file-1"]
        assert [f.file_id for f in store.list_pending_files("case-add")] == ["file-2", "file-3"]
        store.set_files_added(["file-2"])
        assert [f.file_id for f in store.list_files("case-add")] == ["file-1", "file-2"]
        store.delete_pending_files("case-add")
        assert store.list_pending_files("case-add") == [] and len(store.list_files("case-add")) == 2
        assert store.blob_in_use("2" * 64) and not store.blob_in_use("3" * 64)
    finally:
        store.close()
