"""Bad input over real gRPC: each rejected with INVALID_ARGUMENT naming the file and the reason,
nothing half-stored, and the master keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pydicom
import pytest
from pydicom.data import get_testdata_file

from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import hospital_pb2

SHAPE, SPACING = (12, 48, 48), (4.0, 4.0, 3.0)


@pytest.fixture(scope="module")
def good_series(tmp_path_factory) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("good"), shape=SHAPE, spacing_mm=SPACING, seed=2).ct_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncated(good: Path, tmp: Path) -> tuple[Path, str]:
    folder = _copy(good, tmp / "truncated")
    victim = sorted(folder.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size - 3000])
    return folder, victim.name


def _not_dicom(good: Path, tmp: Path) -> tuple[Path, str]:
    folder = _copy(good, tmp / "garbage")
    (folder / "notes.dcm").write_bytes(b"this is a scanned referral letter, not DICOM" * 40)
    return folder, "notes.dcm"


def _two_series(good: Path, tmp: Path) -> tuple[Path, str]:
    folder = _copy(good, tmp / "mixed")
    other = write_phantom_case(tmp / "other", shape=SHAPE, spacing_mm=SPACING, seed=3).ct_dir
    intruder = sorted(other.iterdir())[4]
    shutil.copy(intruder, folder / "CT_other.dcm")
    return folder, "CT_"


def _rtdose_as_ct(good: Path, tmp: Path) -> tuple[Path, str]:
    folder = _copy(good, tmp / "rtdose")
    shutil.copy(get_testdata_file("rtdose.dcm"), folder / "dose.dcm")
    return folder, "dose.dcm"


def _missing_slice(good: Path, tmp: Path) -> tuple[Path, str]:
    folder = _copy(good, tmp / "gap")
    files = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    files[6].unlink()
    return folder, files[5].name


@pytest.mark.parametrize(
    "make_input, reason_words",
    [
        (_truncated, ("trunc",)),
        (_not_dicom, ("not", "dicom")),
        (_two_series, ("series",)),
        (_rtdose_as_ct, ("rtdose",)),
        (_missing_slice, ("missing",)),
    ],
    ids=["truncated", "not-dicom", "two-series", "rtdose-as-ct", "missing-slice"],
)
def test_rejected_with_reason_and_nothing_stored(grid, good_series, tmp_path, make_input, reason_words):
    folder, named_file = make_input(good_series, tmp_path)
    blobs = grid.data_dir / "blobs"
    with grid.client() as client:
        cases_before = {c.case_id for c in client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest()).cases}
        blobs_before = sorted(p.name for p in blobs.glob("??/*"))
        with pytest.raises(grpc.RpcError) as caught:
            client.upload_folder(folder)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        message = caught.value.details()
        assert named_file in message, message
        assert all(word in message.lower() for word in reason_words), message
        # Nothing half-stored: no new case, no new blob, no partial upload left behind.
        cases_after = {c.case_id for c in client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest()).cases}
        assert cases_after == cases_before
        assert sorted(p.name for p in blobs.glob("??/*")) == blobs_before
        assert not list((blobs / "partial").iterdir())
        # The master still serves: the good series goes through.
        assert client.upload_folder(good_series).case.committed


def test_limits_and_unknown_ids(grid, good_series):
    with grid.client() as client:
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="limits"))
        too_big = hospital_pb2.StartUploadRequest(case_id=case.case_id, file_name="huge.dcm", size_bytes=1 << 40,
                                                  sha256="0" * 64)
        with pytest.raises(grpc.RpcError) as caught:
            client.call(client.hospital.StartUpload, too_big)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "huge.dcm" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            client.submit("case-doesnotexist", "contour")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        committed = client.upload_folder(good_series).case
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(committed.case_id, "teleport")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "teleport" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(committed.case_id, "contour", params={"shards": "many"})
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shards" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(case.case_id, "contour")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not committed" in caught.value.details()
