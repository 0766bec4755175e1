"""Limits over a real TLS master: upload size per file and per case, chunk size, gRPC message
size, concurrent jobs, open cases and open uploads per hospital. Exceeding one is
RESOURCE_EXHAUSTED naming the limit; the master keeps serving. The master here has small limits
and no agents, so jobs stay queued.

Reaping (issue 17) on a second master with short timeouts: idle connections and silent upload
streams are closed, abandoned uploads expire (counted in `admin status` and the metrics), and
repeated authentication failures are rate-limited with one audit summary instead of a row each."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
import zlib

import grpc
import pytest

from rtgrid.client.sdk import Client
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import common_pb2, hospital_pb2

from .conftest import Grid, rtgrid_cmd, start_master, start_master_with, stop_process

CHUNK, FILE, CASE = 64 << 10, 200_000, 400_000
MESSAGE_LIMIT = CHUNK + (1 << 20)
OPEN_CASES, OPEN_UPLOADS = 3, 4
IDLE_S, UPLOAD_IDLE_S, UPLOAD_EXPIRY_S, AUTH_FAILURES = 2, 2, 8, 5


@pytest.fixture(scope="module")
def small(ray_cluster, pki, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("limits")
    proc, target, internal = start_master(data_dir, ray_cluster.address, pki, "0", "0", "--max-active-jobs", "1",
                                          "--max-chunk-bytes", str(CHUNK), "--max-file-bytes", str(FILE),
                                          "--max-case-bytes", str(CASE), "--max-open-cases", str(OPEN_CASES),
                                          "--max-open-uploads", str(OPEN_UPLOADS))
    g = Grid(data_dir, ray_cluster.address, pki, target=target, internal_target=internal, master=proc)
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


def test_upload_stream_limits(small):
    """UploadFiles keeps the limits of StartUpload and UploadChunks, named the same way."""

    def stream(case_id: str, files: list[tuple[str, int]], chunk: int = CHUNK):
        for name, size in files:
            data = b"\0" * size
            for offset in range(0, size, chunk):
                piece = data[offset:offset + chunk]
                message = hospital_pb2.UploadFilesRequest(
                    chunk=hospital_pb2.UploadChunk(offset=offset, data=piece, crc32=zlib.crc32(piece)))
                if offset == 0:
                    message.start.CopyFrom(hospital_pb2.StartUploadRequest(
                        case_id=case_id, file_name=name, size_bytes=size, sha256=hashlib.sha256(data).hexdigest()))
                yield message

    with small.hospital_client(small.other_token) as client:
        case = client.hospital.CreateCase(hospital_pb2.CreateCaseRequest(label="stream limits"), timeout=10).case_id
        send = lambda files, **kw: list(client.hospital.UploadFiles(stream(case, files, **kw), timeout=30))  # noqa: E731
        message = _refused(lambda: send([("big.dcm", FILE + 1)]))
        assert "big.dcm" in message and "max_file_bytes" in message and str(FILE) in message
        message = _refused(lambda: send([("a.dcm", CHUNK + 1)], chunk=CHUNK + 1))
        assert "max_chunk_bytes" in message and str(CHUNK) in message
        # Files received on a stream count against the case before they are kept.
        message = _refused(lambda: send([("one.dcm", FILE - 1), ("two.dcm", FILE - 1), ("three.dcm", 10)]))
        assert "three.dcm" in message and "max_case_bytes" in message and str(CASE) in message
        client.hospital.DeleteCase(hospital_pb2.DeleteCaseRequest(case_id=case), timeout=10)


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


def test_open_cases_and_uploads_per_hospital(small):
    """Issue 17, defect 6: no limit on open cases per hospital, 10,000 open uploads per case."""
    with small.operator_client() as operator:
        token = operator.add_hospital("crowded").token
    with small.hospital_client(token) as client, small.hospital_client(small.other_token) as other:
        create = hospital_pb2.CreateCaseRequest(label="open")
        cases = [client.hospital.CreateCase(create, timeout=10).case_id for _ in range(OPEN_CASES)]
        message = _refused(lambda: client.hospital.CreateCase(create, timeout=10))
        assert "max_open_cases_per_hospital" in message and f"limit is {OPEN_CASES}" in message
        assert other.hospital.CreateCase(create, timeout=10).case_id  # per hospital
        for i in range(OPEN_UPLOADS):
            _start(client, cases[i % 2], f"{i}.dcm", 10)
        message = _refused(lambda: _start(client, cases[2], "more.dcm", 10))
        assert "max_open_uploads_per_hospital" in message and f"limit is {OPEN_UPLOADS}" in message
        client.hospital.DeleteCase(hospital_pb2.DeleteCaseRequest(case_id=cases[0]), timeout=10)
        assert _start(client, cases[2], "more.dcm", 10).upload_id  # room again: its uploads went with it
        assert client.hospital.CreateCase(create, timeout=10).case_id


@pytest.fixture(scope="module")
def reaping(ray_cluster, pki, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("reaping")
    proc, ready = start_master_with(
        data_dir, ray_cluster.address, pki, args=(
            "--idle-timeout-s", str(IDLE_S), "--upload-idle-s", str(UPLOAD_IDLE_S), "--upload-expiry-s",
            str(UPLOAD_EXPIRY_S), "--max-auth-failures", str(AUTH_FAILURES), "--metrics-port", "0"))
    g = Grid(data_dir, ray_cluster.address, pki, target=ready["target"], internal_target=ready["internal_target"],
             master=proc, metrics=ready["metrics"])
    with g.operator_client() as operator:
        g.token = operator.add_hospital("reaped").token
    yield g
    stop_process(proc)


def test_idle_connections_are_closed(reaping):
    host, port = reaping.target.rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as raw:  # connects, never says a word
        assert raw.recv(1) == b""  # the master hangs up
    assert time.monotonic() - started < IDLE_S + 5
    with reaping.hospital_client(reaping.token) as client:
        client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest())
        idle = threading.Event()
        client.channel.subscribe(lambda s: s == grpc.ChannelConnectivity.IDLE and idle.set(), try_to_connect=False)
        assert idle.wait(IDLE_S + 8), "a connection without calls stayed open"
        assert client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest()) is not None  # reconnects


def _upload(client, name: str, size: int):
    case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label=name))
    data = os.urandom(size)
    status = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
        case_id=case.case_id, file_name=name, size_bytes=size, sha256=hashlib.sha256(data).hexdigest()))
    return case, status, data


def test_a_silent_upload_stream_is_ended(reaping):
    with reaping.hospital_client(reaping.token) as client:
        case, status, data = _upload(client, "silent.dcm", 20_000)

        def stalls():
            yield hospital_pb2.UploadChunk(upload_id=status.upload_id, offset=0, data=data[:8000],
                                           crc32=zlib.crc32(data[:8000]))
            time.sleep(UPLOAD_IDLE_S + 4)  # then says nothing

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            client.hospital.UploadChunks(stalls(), timeout=60)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "upload_idle_s" in err.value.details()
        assert time.monotonic() - started < UPLOAD_IDLE_S + 3.5  # ended by the master, not by the sender
        # The chunk it did send is kept: the client resumes from there.
        resumed = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
            case_id=case.case_id, file_name="silent.dcm", size_bytes=20_000, sha256=hashlib.sha256(data).hexdigest()))
        assert resumed.upload_id == status.upload_id and resumed.committed_bytes == 8000


def test_abandoned_uploads_expire_and_are_counted(reaping):
    with reaping.hospital_client(reaping.token) as client:
        _, status, _ = _upload(client, "abandoned.dcm", 1000)
        partial = reaping.data_dir / "blobs" / "partial" / f"{status.upload_id}.part"
        assert partial.exists()
        deadline = time.monotonic() + UPLOAD_EXPIRY_S + 15
        while partial.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not partial.exists(), "the abandoned upload's partial file is still there"
        with pytest.raises(grpc.RpcError) as err:
            client.hospital.FinishUpload(hospital_pb2.FinishUploadRequest(upload_id=status.upload_id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    shown = subprocess.run(rtgrid_cmd("admin", "status", "--format", "json"), capture_output=True, text=True,
                           env={**os.environ, **reaping.env()}, timeout=120)
    assert shown.returncode == 0, shown.stderr
    status_record = json.loads(shown.stdout)
    assert int(status_record["expired_uploads"]) >= 1 and "open_uploads" in status_record
    text = urllib.request.urlopen(f"http://{reaping.metrics}/metrics", timeout=10).read().decode()
    expired = [line for line in text.splitlines() if line.startswith("rtgrid_uploads_expired_total")]
    assert expired and float(expired[0].split()[-1]) >= 1
    assert any(line.startswith("rtgrid_uploads_open") for line in text.splitlines())


def test_failed_authentication_is_rate_limited(reaping):
    """Issue 17, defect 4: 300 wrong tokens wrote 300 audit rows."""
    since = int(time.time() * 1000) - 1000
    codes = []
    started = time.monotonic()
    with Client(reaping.target, ca=reaping.pki.ca, attempts=1) as anonymous:
        for _ in range(300):
            forged = [("authorization", f"Bearer rtg_{secrets.token_urlsafe(32)}")]
            try:
                anonymous.hospital.ListCases(hospital_pb2.ListCasesRequest(), metadata=forged, timeout=10)
            except grpc.RpcError as exc:
                codes.append((exc.code(), exc.details()))
    elapsed = time.monotonic() - started
    assert [c for c, _ in codes[:AUTH_FAILURES]] == [grpc.StatusCode.UNAUTHENTICATED] * AUTH_FAILURES
    limited = codes[AUTH_FAILURES:]
    assert len(limited) == 300 - AUTH_FAILURES
    assert all(c == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many failed authentications" in m for c, m in limited)
    with reaping.hospital_client(reaping.token) as client:  # a valid token from the same address still works
        client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest())
    with reaping.operator_client() as operator:
        rows = operator.audit(since_ms=since, action="auth")
    assert len(rows) <= AUTH_FAILURES + 1, len(rows)
    summary = [r for r in rows if r.outcome == "RESOURCE_EXHAUSTED"]
    assert len(summary) == 1 and summary[0].detail.startswith(f"{300 - AUTH_FAILURES} authentication failures")
    print(f"300 forged tokens in {elapsed:.2f} s: {len(rows)} audit rows")
