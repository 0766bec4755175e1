"""Registration on the grid: a real CT and an MR-like series synthesized from it with a known rotation
and translation, uploaded as one case, registered by a ``register`` job; the transform the grid
returns in its DICOM Spatial Registration is the known one within 1 mm and 0.5 degrees. Contours
drawn on the MR come back on the CT where the known transform puts them, and a plan runs on them."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.registration import read_spatial_registration
from rtgrid.engines.dicomrt.rtstruct import StructureSpec, read_rtstruct, write_rtstruct
from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.mr_intake import load_mr_series
from rtgrid.engines.registration.rigid import apply_matrix
from rtgrid.engines.imaging.volume import Volume
from rtgrid.protos.v1 import common_pb2
from tests.engines.imaging.modality_files import mr_files
from tests.engines.registration import synth
from tests.grid.test_cli_e2e import _run as _run_cli
from tests.grid.test_contour_e2e import assert_valid_per_dciodvfy

MAX_ERROR_MM = 1.0
MAX_ROTATION_ERROR_DEG = 0.5


@pytest.fixture(scope="module")
def ct_and_mr(tmp_path_factory):
    """The OpenKBP CT at half its in-plane resolution (128 slices of 64 x 64, 7.8 x 7.8 x 2.5 mm)
    written as DICOM, and the synthetic MR of it as DICOM files with the true MOVING -> CT matrix."""
    volume = synth.planning_ct(synth.openkbp_patient()).volume
    small = Volume(volume.voxels[:, ::2, ::2].copy(), volume.origin_mm, volume.spacing_mm * np.array([2.0, 2.0, 1.0]),
                   volume.direction)
    ct_dir = tmp_path_factory.mktemp("ct")
    write_ct_series(small, ct_dir, patient_id=synth.PATIENT, patient_name="OpenKBP^201")
    ct = synth.series_of(small, "CT")
    mr, true_matrix = synth.synthetic_mr(ct)

    def same_patient(ds, k):
        ds.PatientID, ds.PatientName = synth.PATIENT, "OpenKBP^201"

    mr_dir = tmp_path_factory.mktemp("mr")
    for name, data in mr_files(mr.volume, edit=same_patient):
        (mr_dir / name).write_bytes(data)
    return ct_dir, mr_dir, small, true_matrix


def _refused(call, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code and words in caught.value.details(), caught.value.details()


def test_register_job_recovers_a_known_transform(grid, ct_and_mr, tmp_path: Path):
    ct_dir, mr_dir, ct_volume, true_matrix = ct_and_mr
    with grid.client() as client:
        case = client.upload_folder(ct_dir, mr_dir).case
        assert [(s.modality, s.n_slices) for s in case.series] == [("CT", 128), ("MR", ct_and_mr_slices(mr_dir))]
        ct_series, mr_series = case.series
        _refused(lambda: client.submit(case.case_id, "register", params={"moving": "1.2.3.4"}),
                 grpc.StatusCode.INVALID_ARGUMENT, "moving='1.2.3.4' is not an MR or PET series")
        _refused(lambda: client.submit(case.case_id, "register", params={"moving": ct_series.series_instance_uid}),
                 grpc.StatusCode.INVALID_ARGUMENT, "is not an MR or PET series")
        _refused(lambda: client.submit(case.case_id, "register", params={"deformable": "maybe"}),
                 grpc.StatusCode.INVALID_ARGUMENT, "deformable='maybe' must be true or false")
        job = client.submit(case.case_id, "register", params={"moving": mr_series.series_instance_uid})
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        names = {a.name: a for a in client.artifacts(job.job_id)}
        assert set(names) == {"REG.MR.dcm", "fused.MR.png", "registration.MR.json"}
        reg_path = client.download(names["REG.MR.dcm"], tmp_path)
        summary = json.loads(client.download(names["registration.MR.json"], tmp_path).read_text())
        png = client.download(names["fused.MR.png"], tmp_path).read_bytes()
    assert_valid_per_dciodvfy(reg_path)
    ds = pydicom.dcmread(reg_path)
    assert ds.FrameOfReferenceUID == ct_series.frame_of_reference_uid
    found = read_spatial_registration(ds)[mr_series.frame_of_reference_uid]
    errors = synth.error_at_body_points_mm(ct_volume, true_matrix, found)
    rotation_error = synth.rotation_error_deg(true_matrix, found)
    print(f"\nregister on the grid: body-point error max {errors.max():.3f} mm, rotation {rotation_error:.3f} deg, "
          f"{summary['rigid']['seconds']} s registration, {summary['seconds']} s shard")
    assert errors.max() < MAX_ERROR_MM and rotation_error < MAX_ROTATION_ERROR_DEG
    np.testing.assert_allclose(summary["rigid"]["matrix_moving_to_fixed"], found, atol=1e-6)
    assert summary["rigid"]["final_metric"] < 0 and summary["moving"]["modality"] == "MR"
    assert png.startswith(b"\x89PNG")


def test_register_needs_an_mr_or_pet_series(grid, ct_and_mr):
    ct_dir = ct_and_mr[0]
    with grid.client() as client:
        case = client.upload_folder(ct_dir).case
        _refused(lambda: client.submit(case.case_id, "register"), grpc.StatusCode.FAILED_PRECONDITION,
                 "holds no MR or PET series to register to its CT")


def ct_and_mr_slices(mr_dir: Path) -> int:
    return len(list(mr_dir.glob("*.dcm")))


TUMOUR_RADIUS_MM = 30.0
MIN_DICE = 0.9


def _sphere(volume: Volume, centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels of ``volume`` whose centre lies within ``radius_mm`` of ``centre_mm`` (LPS)."""
    nz, ny, nx = volume.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    points = volume.index_to_lps(np.column_stack([i.ravel(), j.ravel(), k.ravel()]).astype(float))
    return (np.linalg.norm(points - centre_mm, axis=1) <= radius_mm).reshape(volume.shape)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_contours_drawn_on_the_mr_reach_the_ct_and_are_planned_on(grid, ct_and_mr, tmp_path: Path):
    """A tumour sphere and the body outline drawn on the MR (an RTSTRUCT on the MR's frame, uploaded
    with the case) come back on the CT from the register job where the known transform puts them,
    and a plan job takes them as its contours; another case cannot."""
    ct_dir, mr_dir, ct_volume, true_matrix = ct_and_mr
    [mr] = load_mr_series([(p.name, p.read_bytes()) for p in sorted(mr_dir.glob("*.dcm"))])
    mr_series = mr.series
    body_ct = ct_volume.voxels > -400
    k, j, i = np.nonzero(body_ct)
    centre_ct = ct_volume.index_to_lps(np.array([i.mean(), j.mean(), k.mean()]))
    centre_mr = apply_matrix(np.linalg.inv(true_matrix), centre_ct[None])[0]
    body_mr = synth.resample_ct_to_moving(ct_volume.with_voxels(body_ct.astype(np.float32)), mr_series.volume,
                                          true_matrix, default=0.0).voxels > 0.5
    rtstruct = write_rtstruct(mr_series, [
        StructureSpec("PTV", _sphere(mr_series.volume, centre_mr, TUMOUR_RADIUS_MM), "PTV", (255, 0, 0), "MANUAL"),
        StructureSpec("BODY", body_mr, "EXTERNAL", (0, 255, 0), "MANUAL"),
    ], label="MR_CONTOURS")
    rs_path = tmp_path / "RS.on-mr.dcm"
    rtstruct.save_as(rs_path, enforce_file_format=True)
    truth = _sphere(ct_volume, centre_ct, TUMOUR_RADIUS_MM)  # a rigid map keeps a sphere a sphere
    with grid.client() as client:
        case = client.upload_folder(ct_dir, mr_dir, rs_path).case
        ct_series, mr_record = case.series
        job = client.submit(case.case_id, "register")
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        names = {a.name: a for a in client.artifacts(job.job_id)}
        assert {"REG.MR.dcm", "RS.MR.mapped.dcm"} <= set(names)
        mapped_path = client.download(names["RS.MR.mapped.dcm"], tmp_path)
        summary = json.loads(client.download(names["registration.MR.json"], tmp_path).read_text())
        assert summary["mapped_structures"] == ["PTV", "BODY"]
        ds = pydicom.dcmread(mapped_path)
        assert ds.FrameOfReferenceUID == ct_series.frame_of_reference_uid
        assert_valid_per_dciodvfy(mapped_path)
        masks = read_rtstruct(ds, ct_volume, frame_of_reference_uid=ct_series.frame_of_reference_uid)
        dice = _dice(masks["PTV"], truth)
        print(f"\nMR-drawn PTV on the CT: Dice {dice:.3f} against the sphere through the known transform "
              f"({truth.sum()} voxels); BODY Dice {_dice(masks['BODY'], body_ct):.3f}")
        assert dice >= MIN_DICE and _dice(masks["BODY"], body_ct) >= MIN_DICE
        # The MR-framed RTSTRUCT is not a CT contour: without the register job a plan has none.
        order = "prescription: {target: PTV, dose_gy: 60, fractions: 30}\n"
        _refused(lambda: client.submit(case.case_id, "plan", params={"order": order}),
                 grpc.StatusCode.FAILED_PRECONDITION, "a plan needs contours")
        other = client.upload_folder(ct_dir).case
        _refused(lambda: client.submit(other.case_id, "plan", params={"order": order, "contours_job": job.job_id}),
                 grpc.StatusCode.INVALID_ARGUMENT, f"contoured case {case.case_id}, not case {other.case_id}")
        plan = client.submit(case.case_id, "plan", params={
            "order": order, "contours_job": job.job_id, "gantry_angles": "0,120,240", "dose_grid_mm": "8"})
        events = list(client.watch(plan.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        report = json.loads(client.download(
            next(a for a in client.artifacts(plan.job_id) if a.name == "plan-report.json"), tmp_path).read_text())
    assert report["metrics"]["PTV"]["D95"] == pytest.approx(60.0, abs=0.1)


def test_an_rtstruct_on_no_series_of_the_case_is_refused(grid, ct_and_mr, tmp_path: Path):
    ct_dir, mr_dir, ct_volume, _ = ct_and_mr
    stranger = synth.series_of(ct_volume, "CT")  # the same grid, another frame of reference
    rtstruct = write_rtstruct(stranger, [StructureSpec("PTV", ct_volume.voxels > 0, "PTV", (255, 0, 0), "MANUAL")])
    rs_path = tmp_path / "RS.elsewhere.dcm"
    rtstruct.save_as(rs_path, enforce_file_format=True)
    with grid.client() as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.upload_folder(ct_dir, mr_dir, rs_path)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RS.elsewhere.dcm" in caught.value.details() and "which is no series' of this case" in caught.value.details()


def test_an_mr_and_its_contours_added_to_a_committed_case(grid, ct_and_mr, tmp_path: Path):
    """``upload_folder(add_to=CASE)``: a refused add (another patient's MR, a file not DICOM) leaves
    the case as it was; a good one lists the MR as a series (not its slices as attachments) and its
    contours are registered onto the CT."""
    ct_dir, mr_dir, ct_volume, true_matrix = ct_and_mr
    [mr] = load_mr_series([(p.name, p.read_bytes()) for p in sorted(mr_dir.glob("*.dcm"))])
    centre_mr = apply_matrix(np.linalg.inv(true_matrix), ct_volume.index_to_lps(
        np.array(ct_volume.shape[::-1], dtype=float) / 2)[None])[0]
    rs_path = tmp_path / "RS.on-mr.dcm"
    write_rtstruct(mr.series, [StructureSpec("GTV", _sphere(mr.series.volume, centre_mr, TUMOUR_RADIUS_MM), "GTV",
                                             (255, 0, 0), "MANUAL")]).save_as(rs_path, enforce_file_format=True)
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    for path in sorted(mr_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientID = "someone-else"
        ds.save_as(stranger_dir / path.name, enforce_file_format=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in sorted(mr_dir.glob("*.dcm"))[:5]:
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "notes.dcm").write_bytes(b"not DICOM at all")
    with grid.client() as client:
        case = client.upload_folder(ct_dir).case
        for bad, code, words in [(stranger_dir, grpc.StatusCode.INVALID_ARGUMENT, "PatientID 'someone-else'"),
                                 (broken, grpc.StatusCode.INVALID_ARGUMENT, "notes.dcm")]:
            _refused(lambda: client.upload_folder(bad, add_to=case.case_id), code, words)
            same = client.case(case.case_id)
            assert same == case, f"a refused add changed the case: {same}"
        with pytest.raises(ValueError, match="is not committed"):
            client.upload_folder(mr_dir, add_to=client.create_case("open").case_id)
        # The good add through the command line: rtgrid upload --add-to CASE.
        run = _run_cli(grid, "upload", str(mr_dir), str(rs_path), "--add-to", case.case_id, "--format", "json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["case_id"] == case.case_id
        added = client.case(case.case_id)
        assert added.committed
        assert [s.modality for s in added.series] == ["CT", "MR"]
        assert list(added.attachments) == ["RTSTRUCT:RS.on-mr.dcm"]  # series, not slices
        job = client.submit(case.case_id, "register")
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        mapped = next(a for a in client.artifacts(job.job_id) if a.name == "RS.MR.mapped.dcm")
        ds = pydicom.dcmread(client.download(mapped, tmp_path))
    gtv = read_rtstruct(ds, ct_volume, frame_of_reference_uid=case.series[0].frame_of_reference_uid)["GTV"]
    centre_ct = ct_volume.index_to_lps(np.array(ct_volume.shape[::-1], dtype=float) / 2)
    assert _dice(gtv, _sphere(ct_volume, centre_ct, TUMOUR_RADIUS_MM)) >= MIN_DICE
