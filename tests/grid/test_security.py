"""Security over the real grid with TLS: mutual TLS for agents and the operator, per-hospital tokens,
tenant isolation both ways, and the audit log of who did what."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import time

import grpc
import pydicom
import pytest

from rtgrid.client.sdk import Client
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.master.security.certs import Issued, make_client_cert
from rtgrid.protos.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2, hospital_pb2

from ..client.test_pseudonym import IDENTITY, with_identity
from .conftest import HOSPITAL, make_pki, rtgrid_cmd

SHAPE, SPACING = (16, 64, 64), (3.0, 3.0, 3.0)
OTHER = "hospital-b"


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""


@pytest.fixture(scope="module", autouse=True)
def module_start_ms(grid) -> int:
    """When this module began: its audit entries are the ones after it (the session grid's log
    holds every other module's too, more than one page)."""
    return int(time.time() * 1000) - 1000


@pytest.fixture(scope="module")
def contoured(grid, tmp_path_factory):
    """A case of hospital-a with a finished contour job and its artifacts."""
    ct_dir = write_phantom_case(tmp_path_factory.mktemp("sec"), shape=SHAPE, spacing_mm=SPACING, seed=3).ct_dir
    with grid.client() as client:
        case = client.upload_folder(ct_dir, label="isolation").case
        job = client.submit(case.case_id, "contour", params={"shards": "2"}, idempotency_key="shared-key")
        assert list(client.watch(job.job_id))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        return case, job, client.artifacts(job.job_id)


@pytest.fixture(scope="module")
def other_token(grid) -> str:
    with grid.operator_client() as operator:
        return operator.add_hospital(OTHER).token


def test_tokens_are_stored_as_digests_only(grid, other_token):
    db = grid.data_dir / "rtgrid.sqlite"
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT name, token_sha256 FROM hospitals").fetchall())
    assert rows[HOSPITAL] == hashlib.sha256(grid.token.encode()).hexdigest()
    assert rows[OTHER] == hashlib.sha256(other_token.encode()).hexdigest()
    for path in grid.data_dir.glob("rtgrid.sqlite*"):  # the WAL too
        raw = path.read_bytes()
        assert grid.token.encode() not in raw and other_token.encode() not in raw
    assert len(grid.token) > 40 and grid.token != other_token


def test_missing_or_bad_token_is_unauthenticated(grid, contoured):
    case = contoured[0]
    request = hospital_pb2.GetCaseRequest(case_id=case.case_id)
    with Client(grid.target, ca=grid.pki.ca, attempts=1) as anonymous:
        code, message = _code(lambda: anonymous.hospital.GetCase(request, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in message
        watch = hospital_pb2.WatchJobRequest(job_id=contoured[1].job_id)  # streams are guarded the same way
        assert _code(lambda: list(anonymous.hospital.WatchJob(watch, timeout=10)))[0] == grpc.StatusCode.UNAUTHENTICATED
    with grid.hospital_client("rtg_" + "x" * 43) as forged:
        code, message = _code(lambda: forged.hospital.GetCase(request, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown or revoked" in message


def test_plaintext_and_foreign_certificates_are_refused(grid, tmp_path):
    with grpc.insecure_channel(grid.target) as channel:  # no TLS at all
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        assert _code(lambda: stub.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="x"), timeout=10))[0] \
            == grpc.StatusCode.UNAVAILABLE
    stranger = make_pki(tmp_path / "stranger")  # a certificate from another CA
    with Client(grid.internal_target, ca=grid.pki.ca, cert=stranger.agent_cert, key=stranger.agent_key,
                attempts=1) as client:
        assert _code(lambda: client.admin.ListAgents(admin_pb2.ListAgentsRequest(), timeout=10))[0] \
            == grpc.StatusCode.UNAVAILABLE
    with Client(grid.internal_target, ca=grid.pki.ca, token=grid.token, attempts=1) as no_cert:
        # The internal port requires a client certificate: a token alone does not open it.
        assert _code(lambda: no_cert.admin.ListAgents(admin_pb2.ListAgentsRequest(), timeout=10))[0] \
            == grpc.StatusCode.UNAVAILABLE


def test_each_identity_reaches_only_its_api(grid, contoured):
    case = contoured[0]
    get_case = hospital_pb2.GetCaseRequest(case_id=case.case_id)
    heartbeat = agent_pb2.HeartbeatRequest(agent_id="nobody")
    # An agent's certificate: the agent API only.
    with Client(grid.internal_target, ca=grid.pki.ca, cert=grid.pki.agent_cert, key=grid.pki.agent_key,
                attempts=1) as agent:
        assert agent_pb2_grpc.AgentServiceStub(agent.channel).Heartbeat(heartbeat, timeout=10).known is False
        code, message = _code(lambda: agent.admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "agent 'agent'" in message and "operator" in message
        assert _code(lambda: agent.hospital.GetCase(get_case, timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED
    # A hospital's token: the hospital API only.
    with grid.hospital_client(grid.token) as hospital:
        assert hospital.hospital.GetCase(get_case, timeout=10).case_id == case.case_id
        code, message = _code(lambda: hospital.admin.ListJobs(admin_pb2.ListJobsRequest(), timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "hospital" in message
        stub = agent_pb2_grpc.AgentServiceStub(hospital.channel)
        assert _code(lambda: stub.Heartbeat(heartbeat, timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED
    # The operator's certificate: the admin API only.
    with grid.operator_client() as operator:
        assert operator.jobs(limit=1)
        assert _code(lambda: operator.hospital.GetCase(get_case, timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED
        stub = agent_pb2_grpc.AgentServiceStub(operator.channel)
        assert _code(lambda: stub.Heartbeat(heartbeat, timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED


def test_an_agent_certificate_acts_only_for_its_own_agent(grid, tmp_path):
    """Another agent certificate of the same CA cannot beat, drain or take over the grid's agents."""
    ca = Issued(grid.pki.ca.read_bytes(), grid.pki.ca.with_name("ca.key").read_bytes())
    cert, key = make_client_cert(ca, "intruder", "agent").write(tmp_path, "intruder")
    with grid.operator_client() as operator:
        victim = next(a for a in operator.agents() if a.name == "agent-a")
    with Client(grid.internal_target, ca=grid.pki.ca, cert=cert, key=key, attempts=1) as intruder:
        stub = agent_pb2_grpc.AgentServiceStub(intruder.channel)
        for call in (lambda: stub.Heartbeat(agent_pb2.HeartbeatRequest(agent_id=victim.agent_id), timeout=10),
                     lambda: stub.Drain(agent_pb2.AgentDrainRequest(agent_id=victim.agent_id), timeout=10),
                     lambda: stub.Deregister(agent_pb2.DeregisterRequest(agent_id=victim.agent_id), timeout=10),
                     lambda: stub.Register(agent_pb2.RegisterRequest(agent_id=victim.agent_id, name="x", cpus=1),
                                           timeout=10)):
            code, message = _code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "another certificate" in message
    with grid.operator_client() as operator:  # and the victim beats on, with its own certificate
        assert next(a for a in operator.agents() if a.agent_id == victim.agent_id).state == common_pb2.AGENT_STATE_ALIVE


def _not_found_like_a_missing_id(call_real, call_missing) -> str:
    real_code, real_message = _code(call_real)
    missing_code, missing_message = _code(call_missing)
    assert real_code == missing_code == grpc.StatusCode.NOT_FOUND
    # Same words as for an id that never existed: nothing tells the other hospital it does.
    assert real_message.replace(real_message.split("'")[1], "ID") == missing_message.replace(
        missing_message.split("'")[1], "ID")
    return real_message


def test_a_hospital_sees_only_its_own_cases_jobs_and_artifacts(grid, contoured, other_token, tmp_path):
    case, job, artifacts = contoured
    h = hospital_pb2
    with grid.hospital_client(other_token) as other:
        hs = other.hospital
        assert case.case_id not in {c.case_id for c in hs.ListCases(h.ListCasesRequest(), timeout=10).cases}
        checks = [
            (lambda i: hs.GetCase(h.GetCaseRequest(case_id=i), timeout=10), case.case_id, "case-missing"),
            (lambda i: hs.GetJob(h.GetJobRequest(job_id=i), timeout=10), job.job_id, "job-missing"),
            (lambda i: list(hs.WatchJob(h.WatchJobRequest(job_id=i), timeout=10)), job.job_id, "job-missing"),
            (lambda i: hs.ListArtifacts(h.ListArtifactsRequest(job_id=i), timeout=10), job.job_id, "job-missing"),
            (lambda i: hs.CancelJob(h.CancelJobRequest(job_id=i), timeout=10), job.job_id, "job-missing"),
            (lambda i: list(hs.DownloadArtifact(h.DownloadArtifactRequest(artifact_id=i), timeout=10)),
             artifacts[0].artifact_id, "artifact-missing"),
            (lambda i: hs.SubmitJob(h.SubmitJobRequest(case_id=i, kind="contour"), timeout=10), case.case_id,
             "case-missing"),
            (lambda i: hs.StartUpload(h.StartUploadRequest(case_id=i, file_name="x.dcm", size_bytes=1,
                                                           sha256="0" * 64), timeout=10), case.case_id, "case-missing"),
        ]
        for call, real, missing in checks:
            _not_found_like_a_missing_id(lambda: call(real), lambda: call(missing))
        with pytest.raises(grpc.RpcError) as err:
            other.download(artifacts[0], tmp_path)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and not list(tmp_path.iterdir())[0].stat().st_size
        # Its own case, planned on the other hospital's contours: not found either.
        own = other.upload_folder(write_phantom_case(tmp_path / "b", shape=SHAPE, spacing_mm=SPACING, seed=4).ct_dir)
        code, message = _code(lambda: hs.SubmitJob(h.SubmitJobRequest(
            case_id=own.case.case_id, kind="plan", params={"contours_job": job.job_id}), timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND and job.job_id in message
        # One idempotency key in two hospitals makes two jobs.
        mine = other.submit(own.case.case_id, "contour", params={"shards": "1"}, idempotency_key="shared-key")
        assert mine.job_id != job.job_id and mine.idempotency_key == "shared-key"
        assert other.cancel(mine.job_id).job_id == mine.job_id  # its own job it may cancel
    # ...and the other way round: hospital-a does not see hospital-b's case.
    with grid.hospital_client(grid.token) as first:
        code, _ = _code(lambda: first.hospital.GetCase(h.GetCaseRequest(case_id=own.case.case_id), timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND
        assert own.case.case_id not in {c.case_id for c in first.hospital.ListCases(h.ListCasesRequest()).cases}
        assert first.download(artifacts[0], tmp_path / "mine").stat().st_size == artifacts[0].size_bytes


def _cli(grid, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(rtgrid_cmd(*args), capture_output=True, text=True, env={**os.environ, **grid.env(), **env},
                          timeout=120)


def test_revoked_token_is_refused_at_once_and_a_new_one_works(grid, contoured):
    added = _cli(grid, "admin", "hospitals", "add", "hospital-c", "--format", "json")
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    # --token wins over RTGRID_TOKEN (hospital-a's): hospital-a's case is not found for hospital-c.
    foreign = _cli(grid, "--token", token, "submit", contoured[0].case_id)
    assert foreign.returncode == 3 and "NOT_FOUND" in foreign.stderr
    with grid.hospital_client(token) as client:
        assert client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest()).cases == []
        assert _cli(grid, "admin", "hospitals", "revoke", "hospital-c").returncode == 0
        code, _ = _code(lambda: client.hospital.ListCases(hospital_pb2.ListCasesRequest(), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    again = _cli(grid, "admin", "hospitals", "add", "hospital-c", "--format", "json")
    new_token = json.loads(again.stdout)["token"]
    assert new_token != token
    with grid.hospital_client(new_token) as client:
        assert list(client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest()).cases) == []
    hospitals = [json.loads(line) for line in _cli(grid, "admin", "hospitals", "list", "--format", "json").stdout.splitlines()]
    assert {h["name"] for h in hospitals} >= {HOSPITAL, "hospital-c"}
    # The CLI with a bad token: a clear refusal, exit code 3.
    bad = _cli(grid, "submit", contoured[0].case_id, RTGRID_TOKEN="rtg_nope")
    assert bad.returncode == 3 and "UNAUTHENTICATED" in bad.stderr
    # A hospital cannot make hospitals.
    refused = _cli(grid, "--admin-target", grid.target, "admin", "hospitals", "add", "x", RTGRID_CERT="", RTGRID_KEY="")
    assert refused.returncode == 3 and "PERMISSION_DENIED" in refused.stderr


def test_audit_log_says_who_did_what(grid, contoured, other_token, tmp_path, module_start_ms):
    case, job, artifacts = contoured
    with grid.hospital_client(grid.token) as client:
        client.download(artifacts[0], tmp_path)
    with grid.hospital_client(other_token) as other:
        _code(lambda: other.hospital.GetJob(hospital_pb2.GetJobRequest(job_id=job.job_id), timeout=10))
    out = _cli(grid, "admin", "audit", "--hospital", HOSPITAL, "--action", "download", "--since", "1h", "--format", "json")
    assert out.returncode == 0, out.stderr
    downloads = [json.loads(line) for line in out.stdout.splitlines()]
    assert downloads and all(d["principal"] == HOSPITAL and d["role"] == "hospital" for d in downloads)
    assert any(d["objects"].get("artifact_id") == artifacts[0].artifact_id and d["outcome"] == "OK" for d in downloads)
    with grid.operator_client() as operator:
        entries = operator.audit(since_ms=module_start_ms)
        mine = [e for e in entries if e.principal == HOSPITAL]
        assert {"upload", "submit", "view", "download"} <= {e.action for e in mine}
        submit = next(e for e in mine if e.action == "submit" and e.objects.get("case_id") == case.case_id)
        assert submit.objects["job_id"] == job.job_id and submit.outcome == "OK" and submit.peer.startswith("ipv4:127.")
        denied = [e for e in entries if e.principal == OTHER and e.objects.get("job_id") == job.job_id]
        assert any(e.outcome == "NOT_FOUND" and e.action == "view" for e in denied)
        refused = [e for e in entries if e.action == "auth"]
        assert any(e.outcome == "UNAUTHENTICATED" for e in refused)
        assert any(e.outcome == "PERMISSION_DENIED" and e.role == "agent" for e in refused)
        assert any(e.action == "admin" and e.role == "operator" and e.method == "AdminService/AddHospital"
                   and e.objects.get("name") == OTHER for e in entries)
        # No token ever reaches the log.
        assert not any(grid.token in str(e) or other_token in str(e) for e in entries)
        later = operator.audit(since_ms=max(e.time_ms for e in entries) + 1)
        assert all(e.time_ms > max(x.time_ms for x in entries) for e in later)


def test_pseudonymized_upload_and_reidentified_results(grid, tmp_path):
    """Through the CLI: the grid never holds the patient's identity; results come back with it."""
    originals = with_identity(tmp_path / "patient")
    mapping = tmp_path / "hospital" / "pseudonyms.json"
    up = _cli(grid, "upload", *map(str, originals), "--pseudonymize", "--pseudonym-map", str(mapping), "--format", "json")
    assert up.returncode == 0, up.stderr
    case_id = json.loads(up.stdout)["case_id"]
    with grid.client() as client:
        job = client.submit(case_id, "contour", params={"shards": "2"})
        assert list(client.watch(job.job_id))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        case = client.call(client.hospital.GetCase, hospital_pb2.GetCaseRequest(case_id=case_id))
        assert case.label.startswith("RTG-")
    secrets_ = [v.encode() for v in IDENTITY.values()]
    for path in [*grid.data_dir.rglob("*")]:
        if path.is_file():
            raw = path.read_bytes()
            assert not any(s in raw for s in secrets_), path
    fetched = _cli(grid, "fetch", job.job_id, "--out", str(tmp_path / "results"), "--reidentify",
                   "--pseudonym-map", str(mapping), "--format", "json")
    assert fetched.returncode == 0, fetched.stderr
    rtstruct = next(json.loads(line)["path"] for line in fetched.stdout.splitlines()
                    if json.loads(line)["kind"] == "rtstruct")
    result = pydicom.dcmread(rtstruct)
    assert str(result.PatientName) == IDENTITY["PatientName"] and result.PatientID == IDENTITY["PatientID"]
    cts = [pydicom.dcmread(p) for p in originals if pydicom.dcmread(p).Modality == "CT"]
    referenced = {c.ReferencedSOPInstanceUID for roi in result.ROIContourSequence
                  for contour in roi.get("ContourSequence", []) for c in contour.get("ContourImageSequence", [])}
    assert referenced and referenced <= {ds.SOPInstanceUID for ds in cts}  # the hospital's own CT UIDs
    assert result.StudyInstanceUID == cts[0].StudyInstanceUID
    assert {r.ReferencedFrameOfReferenceUID for r in result.StructureSetROISequence} == {cts[0].FrameOfReferenceUID}


@pytest.mark.parametrize("name", ["", ".", "..", "/", "../escape.dcm", "results/RS.dcm", "..\\x.dcm", "nul\0.dcm",
                                  "x" * 300], ids=["empty", "dot", "dotdot", "slash", "parent", "subfolder",
                                                   "backslash", "nul", "too-long"])
def test_download_refuses_an_unsafe_artifact_name_and_leaves_nothing(grid, contoured, tmp_path, name):
    """Issue 17, defect 7: an artifact named "", "." or "/" made Client.download write
    `<out>.part` beside the output folder; a path name must not choose where a result lands."""
    real = contoured[2][0]
    renamed = common_pb2.Artifact()
    renamed.CopyFrom(real)
    renamed.name = name
    out = tmp_path / "out"
    with grid.hospital_client(grid.token) as client:
        with pytest.raises(ValueError, match="not a single safe file name"):
            client.download(renamed, out)
    assert list(tmp_path.iterdir()) == []  # not even the output folder


def test_store_and_data_folder_are_private(grid):
    """Issue 17, defect 8: rtgrid.sqlite (audit, orders, labels, token digests) was 0644."""
    assert stat.S_IMODE(grid.data_dir.stat().st_mode) == 0o700
    for path in grid.data_dir.glob("rtgrid.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
