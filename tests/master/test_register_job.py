"""The ``register`` job kind on a real store (which series, named refusals, file names) and its agent
executor called as the agent calls it (a rigid and a deformable registration, DICOM objects checked)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from rtgrid.agent.executors import execute
from rtgrid.agent.executors.files import dataset_bytes
from rtgrid.engines.dicomrt.registration import read_deformable_registration, read_spatial_registration
from rtgrid.engines.dicomrt.rtstruct import StructureSpec, read_rtstruct, write_rtstruct
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.registration import RegistrationError, RegistrationModalityError
from rtgrid.engines.registration.rigid import apply_matrix
from rtgrid.master.blobs import BlobStore
from rtgrid.master.errors import FailedPrecondition, InvalidArgument
from rtgrid.master.ids import now_ms
from rtgrid.master.jobs.base import JobContext
from rtgrid.master.jobs.register import file_stems
from rtgrid.master.jobs.registry import get_kind
from rtgrid.master.store.records import QUEUED, CaseRecord, JobRecord, SeriesRecord
from rtgrid.master.store.sqlite import SqliteStore
from rtgrid.protos.grid_contract import RegisterSeriesCall, Task
from tests.engines.registration import synth
from tests.grid.test_contour_e2e import assert_valid_per_dciodvfy
from tests.grid.test_register_e2e import MIN_DICE, TUMOUR_RADIUS_MM, _dice, _sphere


def _series(series_id: str, modality: str, uid: str, role: str = "secondary", echo: int = 0) -> SeriesRecord:
    return SeriesRecord(series_id, "case-1", modality, uid, f"frame-{uid}", 4, 8, 8, [1.0, 1.0, 2.0],
                        "0" * 64, "1" * 64, [], role=role, echo_number=echo)


@pytest.fixture
def store(tmp_path):
    made = SqliteStore(tmp_path / "db.sqlite")
    made.add_case(CaseRecord("case-1", "c", True, 1, "st-luke"))
    made.add_series(_series("series-ct", "CT", "1.1", role="planning"))
    yield made
    made.close()


def test_one_shard_per_chosen_series_with_file_names_that_do_not_collide(store, tmp_path):
    kind = get_kind("register")
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(FailedPrecondition, match="case case-1 holds no MR or PET series to register to its CT"):
        kind.validate({}, store, blobs, "case-1")
    for record in (_series("series-e1", "MR", "1.2", echo=1), _series("series-e2", "MR", "1.2", echo=2),
                   _series("series-pt", "PT", "1.3")):
        store.add_series(record)
    assert kind.validate({"deformable": "YES"}, store, blobs, "case-1") == {"deformable": "true"}
    with pytest.raises(InvalidArgument, match=r"moving='1\.1' is not an MR or PET series of case case-1"):
        kind.validate({"moving": "1.1"}, store, blobs, "case-1")  # the planning CT is never moved
    with pytest.raises(InvalidArgument, match="deformable='sometimes' must be true or false"):
        kind.validate({"deformable": "sometimes"}, store, blobs, "case-1")
    with pytest.raises(InvalidArgument, match="unknown parameter.*: beams"):
        kind.validate({"beams": "7"}, store, blobs, "case-1")

    def targets(params: dict[str, str]) -> tuple[str, ...]:
        job = JobRecord("job-1", "case-1", "register", QUEUED, 0, params, "register", now_ms())
        return kind.plan_stage(JobContext(store, blobs, job), "register").targets

    assert targets({}) == ("series-e1", "series-e2", "series-pt")
    assert targets({"moving": "1.2"}) == ("series-e1", "series-e2")  # a UID names every echo
    assert targets({"moving": "series-pt, series-e2"}) == ("series-pt", "series-e2")
    assert file_stems(store.list_series("case-1")[1:]) == {"series-e1": "MR", "series-e2": "MR.2", "series-pt": "PT"}


@pytest.fixture(scope="module")
def pair():
    """The OpenKBP CT at half its in-plane resolution and the synthetic MR of it, with the truth."""
    volume = synth.planning_ct(synth.openkbp_patient()).volume
    small = Volume(volume.voxels[:, ::2, ::2].copy(), volume.origin_mm, volume.spacing_mm * np.array([2.0, 2.0, 1.0]),
                   volume.direction)
    ct = synth.series_of(small, "CT")
    mr, true_matrix = synth.synthetic_mr(ct)
    return ct, mr, true_matrix


def test_the_executor_publishes_rigid_and_deformable_registrations(pair, tmp_path):
    ct, mr, true_matrix = pair
    # A tumour drawn on the MR: a sphere about a point whose place on the CT the known transform gives.
    centre_ct = ct.volume.index_to_lps(np.array(ct.volume.shape[::-1], dtype=float) / 2)
    centre_mr = apply_matrix(np.linalg.inv(true_matrix), centre_ct[None])[0]
    on_mr = write_rtstruct(mr, [StructureSpec("GTV", _sphere(mr.volume, centre_mr, TUMOUR_RADIUS_MM), "GTV",
                                              (255, 0, 0), "MANUAL")])
    call = RegisterSeriesCall(fixed=ct, moving=mr, name="MR", deformable=True, rtstructs=(dataset_bytes(on_mr),))
    result = execute(Task.REGISTER_SERIES, call.kwargs())
    names = ["REG.MR.dcm", "DREG.MR.dcm", "RS.MR.mapped.dcm", "fused.MR.png", "registration.MR.json"]
    assert [a["name"] for a in result["artifacts"]] == names
    paths = {}
    for name in ("REG.MR.dcm", "DREG.MR.dcm", "RS.MR.mapped.dcm"):
        paths[name] = tmp_path / name
        paths[name].write_bytes(result[f"file:{name}"])
        assert_valid_per_dciodvfy(paths[name])
    summary = json.loads(result["file:registration.MR.json"])
    found = read_spatial_registration(pydicom.dcmread(paths["REG.MR.dcm"]))[mr.frame_of_reference_uid]
    np.testing.assert_allclose(summary["rigid"]["matrix_moving_to_fixed"], found, atol=1e-6)
    assert synth.error_at_body_points_mm(ct.volume, true_matrix, found).max() < 1.0
    assert synth.rotation_error_deg(true_matrix, found) < 0.5
    [grid] = read_deformable_registration(pydicom.dcmread(paths["DREG.MR.dcm"]))
    assert grid.source_frame_of_reference_uid == mr.frame_of_reference_uid
    assert summary["deformable"]["iterations"] > 0 and summary["seconds"] > 0
    assert result["file:fused.MR.png"].startswith(b"\x89PNG")
    # Mapped through the B-spline field, the tumour lands on the CT where the truth puts it.
    mapped = pydicom.dcmread(paths["RS.MR.mapped.dcm"])
    assert mapped.FrameOfReferenceUID == ct.frame_of_reference_uid and summary["mapped_structures"] == ["GTV"]
    gtv = read_rtstruct(mapped, ct.volume, frame_of_reference_uid=ct.frame_of_reference_uid)["GTV"]
    assert _dice(gtv, _sphere(ct.volume, centre_ct, TUMOUR_RADIUS_MM)) >= MIN_DICE


def test_the_executor_refuses_contours_named_twice_or_on_another_frame(pair):
    ct, mr, _ = pair
    sphere = StructureSpec("GTV", _sphere(mr.volume, mr.volume.index_to_lps(np.array([20.0, 20.0, 30.0])), 15.0),
                           "GTV", (255, 0, 0), "MANUAL")
    twice = dataset_bytes(write_rtstruct(mr, [sphere]))
    with pytest.raises(RegistrationError, match=r"ROI\(s\) \['GTV'\] are drawn in more than one structure set"):
        execute(Task.REGISTER_SERIES, RegisterSeriesCall(fixed=ct, moving=mr, name="MR", rtstructs=(twice, twice)).kwargs())
    on_ct = dataset_bytes(write_rtstruct(ct, [StructureSpec("GTV", ct.volume.voxels > 0, "GTV", (255, 0, 0), "MANUAL")]))
    with pytest.raises(RegistrationError, match="is drawn in Frame of Reference"):
        execute(Task.REGISTER_SERIES, RegisterSeriesCall(fixed=ct, moving=mr, name="MR", rtstructs=(on_ct,)).kwargs())


def test_the_executor_refuses_a_ct_as_the_moving_image(pair):
    ct, _, _ = pair
    with pytest.raises(RegistrationModalityError, match="is CT; only MR and PT series are registered"):
        execute(Task.REGISTER_SERIES, RegisterSeriesCall(fixed=ct, moving=ct, name="CT").kwargs())
