"""The malformed-input corpus (tests/corpus) through a real master on 127.0.0.1.

Every case: the right gRPC status, a message naming the file or parameter and the problem,
nothing half-stored (no case, file, upload, series, job or blob left behind), and the master
keeps serving (health check and a valid request right after).
"""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs
from rtgrid.protos.v1 import admin_pb2, hospital_pb2
from tests.corpus import BAD_PLAN_PARAMS, DICOM_CASES, build_dicom_case

SHAPE, SPACING = (12, 48, 48), (4.0, 4.0, 3.0)
TABLES = ("cases", "files", "uploads", "series", "jobs", "shards", "artifacts")


@pytest.fixture(scope="module")
def good_series(tmp_path_factory) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("good"), shape=SHAPE, spacing_mm=SPACING, seed=2).ct_dir


@pytest.fixture(scope="module")
def contoured_case(grid, tmp_path_factory) -> str:
    """A committed phantom case with its manual contours (so plan orders can be checked)."""
    out = tmp_path_factory.mktemp("contoured")
    case = write_phantom_case(out, shape=SHAPE, spacing_mm=SPACING, seed=4)
    rtstruct, _ = write_plan_inputs(case, make_phantom(SHAPE, SPACING, 4), out / "manual")
    with grid.client() as client:
        return client.upload_folder(case.ct_dir, rtstruct).case.case_id


def _snapshot(grid) -> dict[str, object]:
    """Row counts of every table that holds uploads and their consequences, and the blob names."""
    with sqlite3.connect(grid.data_dir / "rtgrid.sqlite") as db:
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    blobs = grid.data_dir / "blobs"
    counts["blobs"] = sorted(p.name for p in blobs.glob("??/*"))
    counts["partial"] = sorted(p.name for p in (blobs / "partial").iterdir())
    return counts


def _still_serving(client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="after a bad request"))
    client.call(client.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=case.case_id))


def _refused(call, status: str, words: tuple[str, ...], named: str = "") -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    message = caught.value.details() or ""
    assert caught.value.code().name == status, (caught.value.code(), message)
    assert named.lower() in message.lower(), message
    assert all(word in message.lower() for word in words), message
    return message


@pytest.mark.parametrize("entry", DICOM_CASES, ids=[c.name for c in DICOM_CASES])
def test_bad_dicom_refused_and_nothing_stored(grid, good_series, tmp_path, entry):
    folder, named = build_dicom_case(entry, good_series, tmp_path / entry.name)
    with grid.client() as client:
        before = _snapshot(grid)
        _refused(lambda: client.upload_folder(folder), entry.status, entry.words, named)
        assert _snapshot(grid) == before
        _still_serving(client)


@pytest.mark.parametrize("name", sorted(BAD_PLAN_PARAMS))
def test_bad_order_or_params_refused_and_no_job(grid, contoured_case, name):
    params, words = BAD_PLAN_PARAMS[name]
    with grid.client() as client:
        before = _snapshot(grid)
        _refused(lambda: client.submit(contoured_case, "full", params=params), "INVALID_ARGUMENT", words)
        assert _snapshot(grid) == before
        _still_serving(client)


def _raw_upload(client, case_id: str, data: bytes) -> str:
    import hashlib

    status = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
        case_id=case_id, file_name="big.dcm", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return status.upload_id


@pytest.mark.parametrize("chunk_bytes, words", [
    (3 << 20, ("larger than max",)),          # beyond the gRPC message limit: refused by gRPC itself
    ((1 << 20) + 4096, ("chunk", "limit")),   # within the message limit, beyond the chunk limit
], ids=["over-message-limit", "over-chunk-limit"])
def test_oversized_chunk_refused(grid, chunk_bytes, words):
    data = b"\0" * chunk_bytes
    with grid.client() as client:
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="oversized"))
        upload_id = _raw_upload(client, case.case_id, data)
        before = _snapshot(grid)
        chunk = hospital_pb2.UploadChunk(upload_id=upload_id, offset=0, data=data, crc32=zlib.crc32(data))
        _refused(lambda: client.hospital.UploadChunks(iter([chunk]), timeout=30), "RESOURCE_EXHAUSTED", words)
        assert _snapshot(grid) == before
        assert (grid.data_dir / "blobs" / "partial" / f"{upload_id}.part").stat().st_size == 0
        client.call(client.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=case.case_id))
        _still_serving(client)


@pytest.mark.parametrize("build, status, words", [
    (lambda c: (c.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="x" * 100_000)),
     "INVALID_ARGUMENT", ("label", "256")),
    (lambda c: (c.hospital.SubmitJob, hospital_pb2.SubmitJobRequest(case_id="case-x", kind="contour",
                                                                    params={"order": "y" * (3 << 20)})),
     "RESOURCE_EXHAUSTED", ("larger than max",)),
    (lambda c: (c.admin.ListJobs, admin_pb2.ListJobsRequest(limit=-5)), "INVALID_ARGUMENT", ("limit",)),
    (lambda c: (c.admin.ListJobs, admin_pb2.ListJobsRequest(states=[77])), "INVALID_ARGUMENT", ("77",)),
], ids=["huge-label", "huge-params", "negative-limit", "unknown-state"])
def test_oversized_or_out_of_range_fields(grid, build, status, words):
    with grid.client() as client:
        before = _snapshot(grid)
        method, request = build(client)
        _refused(lambda: method(request, timeout=30), status, words)
        assert _snapshot(grid) == before
        _still_serving(client)
