"""Job life over the real grid: idempotent submit, live and replayed watch, cancel, bounded
retries ending in a failure that says why, operators' drain, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import common_pb2, hospital_pb2

from .conftest import HOSPITAL, rtgrid_cmd

SHAPE, SPACING = (16, 64, 64), (3.0, 3.0, 3.0)
WATCHES_HUNG_UP = 30
BOUND_S = 60


@pytest.fixture(scope="module")
def case_id(grid, tmp_path_factory) -> str:
    ct_dir = write_phantom_case(tmp_path_factory.mktemp("jobs"), shape=SHAPE, spacing_mm=SPACING, seed=5).ct_dir
    with grid.client() as client:
        return client.upload_folder(ct_dir).case.case_id


def test_idempotency_key_makes_one_job(grid, case_id):
    with grid.client() as client:
        first = client.submit(case_id, "contour", idempotency_key="hospital-a/req-1")
        second = client.submit(case_id, "contour", idempotency_key="hospital-a/req-1")
        assert first.job_id == second.job_id
        assert list(client.watch(first.job_id))[-1].state == common_pb2.JOB_STATE_SUCCEEDED


def test_watch_replays_from_any_sequence(grid, case_id):
    with grid.client() as client:
        job = client.submit(case_id, "contour", params={"shards": "2"})
        live = list(client.watch(job.job_id))
        assert [e.seq for e in live] == list(range(1, len(live) + 1))
        assert live[0].state == common_pb2.JOB_STATE_QUEUED and live[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        # A client that reconnects after event k gets exactly the rest.
        k = len(live) // 2
        assert [e.seq for e in client.watch(job.job_id, after_seq=k)] == [e.seq for e in live[k:]]
        assert [e.message for e in client.watch(job.job_id, after_seq=k)] == [e.message for e in live[k:]]


def test_cancel_stops_a_job(grid, case_id):
    with grid.client() as client:
        job = client.submit(case_id, "contour", params={"shards": "16"}, priority=-5)
        cancelled = client.cancel(job.job_id)
        assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_CANCELLED
        assert all(s.state in (common_pb2.SHARD_STATE_CANCELLED, common_pb2.SHARD_STATE_SUCCEEDED)
                   for s in client.shards(job.job_id))


def test_watches_a_client_hangs_up_on_leave_the_master_standing_and_audited(grid, case_id):
    # bench-grid's latency loop: watch until RUNNING, hang up, cancel. The audit of a stream being
    # torn down asked grpc for the caller's address, and the master died of SIGSEGV (3 of 3 runs).
    since_ms = int(time.time() * 1000)
    with grid.client() as client:
        for _ in range(WATCHES_HUNG_UP):
            job = client.submit(case_id, "contour", params={"shards": "1"})
            stream = client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job.job_id), timeout=BOUND_S)
            for event in stream:
                if event.state != common_pb2.JOB_STATE_QUEUED:
                    break
            stream.cancel()
            client.cancel(job.job_id)
        assert grid.master.poll() is None, "the master died"
        assert client.job(job.job_id).state == common_pb2.JOB_STATE_CANCELLED
    with grid.operator_client() as operator:
        watches = [e for e in operator.audit(principal=HOSPITAL, since_ms=since_ms)
                   if e.method.endswith("/WatchJob")]
    assert len(watches) >= WATCHES_HUNG_UP
    assert all(e.peer.startswith("ipv") for e in watches)  # the caller's address, read while it was there
    assert any(e.outcome == "CANCELLED" for e in watches)


def test_failed_shard_is_retried_then_job_fails_with_reason(grid, tmp_path):
    ct_dir = write_phantom_case(tmp_path, shape=SHAPE, spacing_mm=SPACING, seed=6).ct_dir
    with grid.client() as client:
        case = client.upload_folder(ct_dir).case
        # Lose the stored volume behind the master's back: every attempt of the shard fails.
        from rtgrid.master.store.sqlite import SqliteStore

        store = SqliteStore(grid.data_dir / "rtgrid.sqlite")
        volume_sha = store.list_series(case.case_id)[0].volume_sha256
        store.close()
        (grid.data_dir / "blobs" / volume_sha[:2] / volume_sha[2:]).unlink()
        job = client.submit(case.case_id, "contour", params={"shards": "1"})
        events = list(client.watch(job.job_id))
    retries = [e for e in events if e.type == common_pb2.EVENT_TYPE_LOG and "retrying" in e.message]
    assert len(retries) == 2  # three attempts in all
    assert events[-1].state == common_pb2.JOB_STATE_FAILED
    assert "failed 3 times" in events[-1].message and "FileNotFoundError" in events[-1].message
    with grid.client() as client:
        assert client.job(job.job_id).error == events[-1].message


def _cli(grid, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **grid.env()}
    return subprocess.run(rtgrid_cmd(*args), capture_output=True, text=True, env=env, timeout=300)


def test_cli_upload_submit_watch_fetch(grid, tmp_path):
    ct_dir = write_phantom_case(tmp_path / "p", shape=SHAPE, spacing_mm=SPACING, seed=7).ct_dir
    up = _cli(grid, "upload", str(ct_dir), "--format", "json")
    assert up.returncode == 0, up.stderr
    case_id = json.loads(up.stdout)["case_id"]
    sub = _cli(grid, "submit", case_id, "--kind", "contour", "--priority", "3", "--format", "json")
    assert sub.returncode == 0, sub.stderr
    job_id = json.loads(sub.stdout)["job_id"]
    watched = _cli(grid, "watch", job_id, "--format", "json")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert events[-1]["state"] == "JOB_STATE_SUCCEEDED"
    fetched = _cli(grid, "fetch", job_id, "--out", str(tmp_path / "out"), "--format", "json")
    assert fetched.returncode == 0, fetched.stderr
    files = [json.loads(line) for line in fetched.stdout.splitlines()]
    assert {f["modality"] for f in files if f["kind"] == "rtstruct"} == {"RTSTRUCT"}
    assert all(os.path.exists(f["path"]) for f in files)
    jobs = [json.loads(line) for line in _cli(grid, "admin", "jobs", "--format", "json").stdout.splitlines()]
    assert any(j["job_id"] == job_id and j["state"] == "succeeded" for j in jobs)
    status = json.loads(_cli(grid, "admin", "status", "--format", "json").stdout)
    assert status["ray_address"] == grid.ray_address and len(status["agents"]) >= 2
    bad = _cli(grid, "submit", "case-nope")
    assert bad.returncode == 3 and "NOT_FOUND" in bad.stderr


def test_priority_changes_and_drain(grid, case_id):
    agent = grid.start_agent("agent-drain")
    with grid.client() as client:
        drained = next(a for a in client.agents() if a.name == "agent-drain")
        job = client.submit(case_id, "contour", params={"shards": "4"})
        assert _cli(grid, "admin", "priority", job.job_id, "7").returncode == 0
        assert client.job(job.job_id).priority == 7
        out = _cli(grid, "admin", "drain", drained.agent_id, "--format", "json")
        assert json.loads(out.stdout)["state"] in ("draining", "drained")
        assert agent.wait(timeout=120) == 0  # it finished its shards and left on its own
        assert list(client.watch(job.job_id))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        state = next(a for a in client.agents() if a.agent_id == drained.agent_id).state
        assert state == common_pb2.AGENT_STATE_DRAINED
        later = client.submit(case_id, "contour", params={"shards": "3"})
        list(client.watch(later.job_id))
        assert drained.agent_id not in {s.agent_id for s in client.shards(later.job_id)}
