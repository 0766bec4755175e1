"""A plan's reference to another job's contours: the same case and the same frame of reference only.

Found by an adversarial review: ``plan --contours-job J`` was accepted when J contoured a different
case of the same hospital, so one patient's structures could drive another patient's plan.
"""

from __future__ import annotations

import pytest

from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs
from rtgrid.master.blobs import BlobStore
from rtgrid.master.errors import InvalidArgument
from rtgrid.master.ids import new_id, now_ms
from rtgrid.master.jobs.plan import PlanJob
from rtgrid.master.store.records import SUCCEEDED, ArtifactRecord, CaseRecord, JobRecord, SeriesRecord
from rtgrid.master.store.sqlite import SqliteStore

SHAPE, SPACING = (12, 48, 48), (8.0, 8.0, 6.0)


@pytest.fixture(scope="module")
def phantom_rtstruct(tmp_path_factory) -> tuple[bytes, str]:
    """A real RTSTRUCT and the frame of reference of the CT it was drawn on."""
    import pydicom

    out = tmp_path_factory.mktemp("refs")
    case = write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=1)
    rtstruct, _ = write_plan_inputs(case, make_phantom(SHAPE, SPACING, seed=1), out / "manual")
    frame = pydicom.dcmread(next((out / "ct").iterdir())).FrameOfReferenceUID
    return rtstruct.read_bytes(), frame


def _case_with_contour_job(store: SqliteStore, blobs: BlobStore, rtstruct: bytes, frame: str) -> tuple[str, str]:
    case = CaseRecord(new_id("case"), "hospital-a", True, now_ms())
    store.add_case(case)
    store.add_series(SeriesRecord(new_id("series"), case.case_id, "CT", "1.2.3", frame, *SHAPE, [8.0, 8.0, 6.0],
                                  "0" * 64, "1" * 64, []))
    job = JobRecord(new_id("job"), case.case_id, "contour", SUCCEEDED, 0, {}, "merge", now_ms())
    store.add_job(job)
    sha = blobs.put_bytes(rtstruct)
    store.add_artifact(ArtifactRecord(new_id("artifact"), job.job_id, "RS.contours.dcm", "rtstruct", "RTSTRUCT",
                                      sha, len(rtstruct)))
    return case.case_id, job.job_id


def test_contours_of_another_case_are_refused_naming_both_cases(tmp_path, phantom_rtstruct):
    rtstruct, frame = phantom_rtstruct
    store, blobs = SqliteStore(tmp_path / "db.sqlite"), BlobStore(tmp_path / "blobs")
    case_x, _ = _case_with_contour_job(store, blobs, rtstruct, frame)
    case_y, job_y = _case_with_contour_job(store, blobs, rtstruct, frame)
    assert PlanJob().earlier_rtstructs(store, blobs, case_y, {"contours_job": job_y}) == [rtstruct]
    with pytest.raises(InvalidArgument) as refused:
        PlanJob().earlier_rtstructs(store, blobs, case_x, {"contours_job": job_y})
    assert case_x in str(refused.value) and case_y in str(refused.value)


def test_contours_on_another_frame_of_reference_are_refused(tmp_path, phantom_rtstruct):
    rtstruct, frame = phantom_rtstruct
    store, blobs = SqliteStore(tmp_path / "db.sqlite"), BlobStore(tmp_path / "blobs")
    case_id, job_id = _case_with_contour_job(store, blobs, rtstruct, "1.2.826.0.1.3680043.8.498.999")
    with pytest.raises(InvalidArgument) as refused:
        PlanJob().earlier_rtstructs(store, blobs, case_id, {"contours_job": job_id})
    assert frame in str(refused.value) and "frame of reference" in str(refused.value)
