"""Limits over a real TLS master: upload size per file and per case, chunk size, gRPC message
size and concurrent jobs per hospital. Exceeding one is RESOURCE_EXHAUSTED naming the limit; the
master keeps serving. The master here has small limits and no agents, so jobs stay queued."""

from __future__ import annotations

import zlib

import grpc
import pytest

from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import common_pb2, hospital_pb2

from .conftest import Grid, start_master, stop_process

CHUNK, FILE, CASE = 64 << 10, 200_000, 400_000
MESSAGE_LIMIT = CHUNK + (1 << 20)


@pytest.fixture(scope="module")
def small(ray_cluster, pki, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("limits")
    proc, target, internal = start_master(data_dir, ray_cluster.address, pki, "0", "0", "--max-active-jobs", "1",
                                          "--max-chunk-bytes", str(CHUNK), "--max-file-bytes", str(FILE),
                                          "--max-case-bytes", str(CASE))
    g = Grid(target, internal, data_dir, ray_cluster.address, proc, pki)
    with g.operator_client() as operator:
        g.token = operator.add_hospital("limited").token
        g.other_token = operator.add_hospital("unlimited").token
    yield g
    stop_process(proc)


def _refused(call) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    return err.value.details()


def _start(client, case_id: str, name: str, size: int):
    return client.hospital.StartUpload(hospital_pb2.StartUploadRequest(case_id=case_id, file_name=name, size_bytes=size,
                                                                       sha256="a" * 64), timeout=10)


def test_upload_limits(small):
    with small.hospital_client(small.token) as client:
        case = client.hospital.CreateCase(hospital_pb2.CreateCaseRequest(label="limits"), timeout=10)
        message = _refused(lambda: _start(client, case.case_id, "big.dcm", FILE + 1))
        assert "max_file_bytes" in message and str(FILE) in message
        status = _start(client, case.case_id, "one.dcm", FILE - 1)
        assert status.max_chunk_bytes == CHUNK
        _start(client, case.case_id, "two.dcm", FILE - 1)
        message = _refused(lambda: _start(client, case.case_id, "three.dcm", 10))
        assert "max_case_bytes" in message and str(CASE) in message

        def send(size: int):
            data = b"\0" * size
            chunk = hospital_pb2.UploadChunk(upload_id=status.upload_id, offset=0, data=data, crc32=zlib.crc32(data))
            return client.hospital.UploadChunks(iter([chunk]), timeout=30)

        message = _refused(lambda: send(CHUNK + 1))
        assert "max_chunk_bytes" in message and str(CHUNK) in message
        message = _refused(lambda: send(MESSAGE_LIMIT + 1))  # gRPC itself stops an oversized message
        assert str(MESSAGE_LIMIT) in message
        assert send(CHUNK).committed_bytes == CHUNK  # still serving, and the upload is intact
        assert client.hospital.GetCase(hospital_pb2.GetCaseRequest(case_id=case.case_id), timeout=10).case_id


def test_concurrent_jobs_per_hospital(small, tmp_path):
    ct_dir = write_phantom_case(tmp_path, shape=(8, 32, 32), spacing_mm=(3.0, 3.0, 3.0), seed=2).ct_dir
    with small.hospital_client(small.token) as client, small.hospital_client(small.other_token) as other:
        case_id = client.upload_folder(ct_dir).case.case_id
        first = client.submit(case_id, "contour", idempotency_key="first")
        assert first.state == common_pb2.JOB_STATE_QUEUED  # no agents here: it stays queued
        message = _refused(lambda: client.hospital.SubmitJob(
            hospital_pb2.SubmitJobRequest(case_id=case_id, kind="contour"), timeout=10))
        assert "max_active_jobs_per_hospital" in message and "limit is 1" in message
        # Asking again for the same job is no new job: not refused.
        assert client.submit(case_id, "contour", idempotency_key="first").job_id == first.job_id
        # The limit is per hospital: another one submits freely.
        other_case = other.upload_folder(ct_dir).case.case_id
        assert other.submit(other_case, "contour").state == common_pb2.JOB_STATE_QUEUED
        client.cancel(first.job_id)
        assert client.submit(case_id, "contour").state == common_pb2.JOB_STATE_QUEUED
