"""Registration on the grid: a real CT and an MR-like series synthesized from it with a known rotation
and translation, uploaded as one case, registered by a ``register`` job; the transform the grid
returns in its DICOM Spatial Registration is the known one within 1 mm and 0.5 degrees."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.registration import read_spatial_registration
from rtgrid.engines.imaging.ct_writer import write_ct_series
from rtgrid.engines.imaging.volume import Volume
from rtgrid.protos.v1 import common_pb2
from tests.engines.imaging.modality_files import mr_files
from tests.engines.registration import synth
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
