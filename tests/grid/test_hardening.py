"""The adversarial review's attacks (issue 17) against the session's TLS grid: oversized fields
are refused naming the field and its limit, the operator's listings still work after the attack,
and every refusal, upload RPCs included, leaves one short audit row."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import zlib

import grpc
import pytest

from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import admin_pb2, common_pb2, hospital_pb2
from tests.corpus import OVERSIZED_FIELDS

from .conftest import HOSPITAL, rtgrid_cmd

INTRUDER = "hospital-intruder"
# An audit row echoes objects and details clipped: far below the attack's megabytes.
MAX_AUDIT_ROW_BYTES = 2000


@pytest.fixture(scope="module")
def started_ms(grid) -> int:
    return int(time.time() * 1000) - 1000


@pytest.fixture(scope="module")
def committed_case(grid, tmp_path_factory, started_ms) -> str:
    ct_dir = write_phantom_case(tmp_path_factory.mktemp("hard"), shape=(8, 32, 32), spacing_mm=(4.0, 4.0, 4.0),
                                seed=7).ct_dir
    with grid.client() as client:
        return client.upload_folder(ct_dir, label="hardening").case.case_id


def _refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""


def _cli(grid, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(rtgrid_cmd(*args), capture_output=True, text=True, env={**os.environ, **grid.env()},
                          timeout=120)


def _audit_since(grid, since_ms: int, **filters) -> list:
    with grid.operator_client() as operator:
        return operator.audit(since_ms=since_ms, **filters)


def test_megabyte_fields_are_refused_and_the_operator_can_still_list(grid, committed_case, started_ms):
    """Issue 17, defect 2: two submits with 1.2 MB idempotency keys broke `admin jobs`; three GetCase
    calls with 1.9 MB case ids added 4 MB to the audit and broke `admin audit --hospital`."""
    with grid.hospital_client(grid.token) as client:
        for n in range(2):
            request = hospital_pb2.SubmitJobRequest(case_id=committed_case, kind="contour",
                                                    idempotency_key=f"{n}" * 1_200_000)
            code, message = _refused(lambda: client.hospital.SubmitJob(request, timeout=60))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "idempotency_key" in message and "limit is 128" in message and len(message) < 300
        for n in range(3):
            code, message = _refused(lambda: client.hospital.GetCase(
                hospital_pb2.GetCaseRequest(case_id=f"case-{n}" + "x" * 1_900_000), timeout=60))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "case_id" in message and "limit is 64" in message
    jobs = _cli(grid, "admin", "jobs", "--format", "json")
    assert jobs.returncode == 0, jobs.stderr
    assert all(len(json.loads(line).get("idempotency_key", "")) < 300 for line in jobs.stdout.splitlines())
    audit = _cli(grid, "admin", "audit", "--hospital", HOSPITAL, "--format", "json")
    assert audit.returncode == 0, audit.stderr
    rows = [json.loads(line) for line in audit.stdout.splitlines()]
    refusals = [r for r in rows if int(r["time_ms"]) >= started_ms and r["outcome"] == "INVALID_ARGUMENT"]
    assert sum(r["method"] == "HospitalService/SubmitJob" for r in refusals) >= 2
    gets = [r for r in refusals if r["method"] == "HospitalService/GetCase"]
    assert len(gets) >= 3 and all(r["objects"]["case_id"].endswith("(1900006 characters)") for r in gets)
    assert all(len(json.dumps(r)) < MAX_AUDIT_ROW_BYTES for r in rows)


def test_listings_page_with_tokens(grid, committed_case):
    with grid.hospital_client(grid.token) as client:  # at least two jobs to list
        for n in range(2):
            client.cancel(client.submit(committed_case, "contour", idempotency_key=f"page-{n}").job_id)
    with grid.operator_client() as operator:
        first = operator.call(operator.admin.ListJobs, admin_pb2.ListJobsRequest(limit=1))
        assert len(first.jobs) == 1 and first.next_page_token
        second = operator.call(operator.admin.ListJobs, admin_pb2.ListJobsRequest(
            limit=1, page_token=first.next_page_token))
        assert second.jobs[0].job_id != first.jobs[0].job_id
        assert second.jobs[0].created_ms <= first.jobs[0].created_ms
        page = operator.call(operator.admin.ListAudit, admin_pb2.ListAuditRequest(limit=2))
        following = operator.call(operator.admin.ListAudit, admin_pb2.ListAuditRequest(
            limit=2, page_token=page.next_page_token))
        assert len(page.entries) == 2 and page.next_page_token
        assert not {e.audit_id for e in page.entries} & {e.audit_id for e in following.entries}
        assert following.entries[0].time_ms >= page.entries[-1].time_ms
        code, message = _refused(lambda: operator.admin.ListAudit(
            admin_pb2.ListAuditRequest(page_token="audit-nonexistent"), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in message
        # An old client (no page token) still gets its first page.
        assert operator.call(operator.admin.ListJobs, admin_pb2.ListJobsRequest(limit=3)).jobs
        every = operator.jobs()
        assert len({j.job_id for j in every}) == len(every) >= 2
    with grid.hospital_client(grid.token) as client:  # a hospital's cases, too
        client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="second"))
        first = client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest(limit=1))
        second = client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest(
            limit=1, page_token=first.next_page_token))
        assert first.next_page_token and second.cases[0].case_id != first.cases[0].case_id
        every = client.cases()
        assert len({c.case_id for c in every}) == len(every) >= 2 and committed_case in {c.case_id for c in every}


def test_every_listing_pages(grid, committed_case):
    """Agents, hospitals, devices, shards and artifacts page as jobs do; an old client's request (no
    limit, no token) still gets the whole listing in its first page; the SDK and CLI read every page."""
    with grid.operator_client() as operator:
        for n in range(2):
            operator.add_hospital(f"hospital-page-{n}")
        names, token = [], ""
        while True:
            page = operator.call(operator.admin.ListHospitals,
                                 admin_pb2.ListHospitalsRequest(limit=1, page_token=token))
            assert len(page.hospitals) == 1
            names.append(page.hospitals[0].name)
            if not (token := page.next_page_token):
                break
        whole = operator.call(operator.admin.ListHospitals, admin_pb2.ListHospitalsRequest())
        assert not whole.next_page_token and names == [h.name for h in whole.hospitals]
        assert [h.name for h in operator.hospitals()] == names and {HOSPITAL, "hospital-page-1"} <= set(names)
        first = operator.call(operator.admin.ListAgents, admin_pb2.ListAgentsRequest(limit=1))
        second = operator.call(operator.admin.ListAgents, admin_pb2.ListAgentsRequest(
            limit=1, page_token=first.next_page_token))
        assert first.next_page_token and second.agents[0].agent_id != first.agents[0].agent_id
        assert [a.agent_id for a in operator.agents()] == [
            a.agent_id for a in operator.call(operator.admin.ListAgents, admin_pb2.ListAgentsRequest()).agents]
        for n in range(2):  # down: `devices=auto` of other tests never picks them
            operator.call(operator.admin.SetDevice, admin_pb2.SetDeviceRequest(
                device_id=f"page-linac-{n}", hospital="hospital-page-0", model_id="varian-truebeam-m120-6x",
                status=common_pb2.DEVICE_STATUS_DOWN))
        first = operator.call(operator.admin.ListDevices, admin_pb2.ListDevicesRequest(limit=1))
        rest = operator.call(operator.admin.ListDevices, admin_pb2.ListDevicesRequest(
            page_token=first.next_page_token))
        assert first.catalog and not rest.catalog and len(first.devices) == 1 and rest.devices  # catalog: page one
        catalog, devices = operator.devices()
        assert [m.model_id for m in catalog] == [m.model_id for m in first.catalog]
        assert [d.device_id for d in devices] == [d.device_id for d in [*first.devices, *rest.devices]]
        code, message = _refused(lambda: operator.admin.ListHospitals(
            admin_pb2.ListHospitalsRequest(page_token="hospital-nonexistent"), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in message
        code, message = _refused(lambda: operator.admin.ListAgents(admin_pb2.ListAgentsRequest(limit=-1), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit" in message
    with grid.hospital_client(grid.token) as client:
        job = client.submit(committed_case, "contour", idempotency_key="page-listings")
        client.cancel(job.job_id)
        artifacts = client.call(client.hospital.ListArtifacts, hospital_pb2.ListArtifactsRequest(job_id=job.job_id))
        assert not artifacts.artifacts and not artifacts.next_page_token and client.artifacts(job.job_id) == []
    with grid.operator_client() as operator:
        shards = operator.call(operator.admin.ListShards, admin_pb2.ListShardsRequest(job_id=job.job_id, limit=1))
        assert len(shards.shards) == 1
        assert [s.shard_id for s in operator.shards(job.job_id)][:1] == [shards.shards[0].shard_id]
    listed = _cli(grid, "admin", "devices", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {"page-linac-0", "page-linac-1"} <= {r["device_id"] for r in records if r["record"] == "device"}
    assert [r["model_id"] for r in records if r["record"] == "model"] == [m.model_id for m in catalog]


def test_upload_refusals_are_audited(grid, committed_case, started_ms):
    """Issue 17, defect 3: a write into another hospital's upload, a `../` name, a crc mismatch and
    an oversized chunk left no trace."""
    data = b"\0" * 4096
    with grid.hospital_client(grid.token) as client:
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="victim"))
        upload = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
            case_id=case.case_id, file_name="a.dcm", size_bytes=2 << 20, sha256=hashlib.sha256(data).hexdigest()))

        def chunks(payload: bytes, crc: int):
            return client.hospital.UploadChunks(iter([hospital_pb2.UploadChunk(
                upload_id=upload.upload_id, offset=0, data=payload, crc32=crc)]), timeout=30)

        assert _refused(lambda: chunks(data, zlib.crc32(data) ^ 1))[0] == grpc.StatusCode.DATA_LOSS
        big = b"\0" * ((1 << 20) + 4096)
        assert _refused(lambda: chunks(big, zlib.crc32(big)))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        code, _ = _refused(lambda: client.hospital.StartUpload(hospital_pb2.StartUploadRequest(
            case_id=case.case_id, file_name="../../etc/passwd", size_bytes=10, sha256="0" * 64), timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    with grid.operator_client() as operator:
        intruder_token = operator.add_hospital(INTRUDER).token
    with grid.hospital_client(intruder_token) as intruder:
        code, _ = _refused(lambda: intruder.hospital.UploadChunks(iter([hospital_pb2.UploadChunk(
            upload_id=upload.upload_id, offset=0, data=data, crc32=zlib.crc32(data))]), timeout=30))
        assert code == grpc.StatusCode.NOT_FOUND
    with grid.hospital_client(grid.token) as client:  # the victim's upload is untouched
        again = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
            case_id=case.case_id, file_name="a.dcm", size_bytes=2 << 20, sha256=hashlib.sha256(data).hexdigest()))
        assert again.upload_id == upload.upload_id and again.committed_bytes == 0
        client.call(client.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=case.case_id))
    entries = [e for e in _audit_since(grid, started_ms, action="upload")
               if e.method in ("HospitalService/UploadChunks", "HospitalService/StartUpload")]
    seen = {(e.principal, e.method, e.outcome, e.objects.get("upload_id", "")) for e in entries}
    assert {(HOSPITAL, "HospitalService/UploadChunks", "DATA_LOSS", upload.upload_id),
            (HOSPITAL, "HospitalService/UploadChunks", "RESOURCE_EXHAUSTED", upload.upload_id),
            (INTRUDER, "HospitalService/UploadChunks", "NOT_FOUND", upload.upload_id)} <= seen
    assert any(e.method == "HospitalService/StartUpload" and e.outcome == "INVALID_ARGUMENT"
               and e.objects.get("case_id") == case.case_id for e in entries)
    # Successful starts and chunks stay out of the log (FinishUpload records each file).
    assert not any(e.outcome == "OK" for e in entries)


@pytest.mark.parametrize("entry", OVERSIZED_FIELDS, ids=[e.name for e in OVERSIZED_FIELDS])
def test_oversized_field_corpus(grid, committed_case, entry):
    with grid.client() as client:
        stub = client.admin if entry.service == "admin" else client.hospital
        method = getattr(stub, entry.method)
        request = entry.build(committed_case)
        started = int(time.time() * 1000)
        code, message = _refused(lambda: entry.call(method, request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, message[:300])
        assert all(word in message for word in entry.words) and len(message) < 300, message[:300]
        # Refused, audited in a short row, and nothing made.
        with grid.operator_client() as operator:
            rows = [e for e in operator.audit(since_ms=started) if e.method.endswith("/" + entry.method)]
        assert any(e.outcome == "INVALID_ARGUMENT" for e in rows)
        assert all(e.ByteSize() < MAX_AUDIT_ROW_BYTES for e in rows)
        assert client.call(client.hospital.GetCase, hospital_pb2.GetCaseRequest(case_id=committed_case)).committed
