"""Faults with real processes: an agent's Ray node killed mid-job, the master killed mid-job and
started again on the same store (SQLite, and PostgreSQL). No job is lost, results equal an
undisturbed run, and the watcher sees every event once, in order."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest

from rtgrid.engines.dicomrt.rtstruct import read_rtstruct
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import common_pb2
from tests.postgres import running_postgres

from .conftest import HOSPITAL, Grid, start_master_with, stop_process


SHAPE, SPACING = (48, 96, 96), (3.0, 3.0, 3.0)
WAIT_S = 300


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory):
    return write_phantom_case(tmp_path_factory.mktemp("faults"), shape=SHAPE, spacing_mm=SPACING, seed=11).ct_dir


@pytest.fixture(scope="module")
def reference(grid, ct_dir, tmp_path_factory):
    """The undisturbed result to compare against."""
    out = tmp_path_factory.mktemp("reference")
    with grid.client() as client:
        case = client.upload_folder(ct_dir).case
        job = client.submit(case.case_id, "contour", params={"shards": "12"})
        assert list(client.watch(job.job_id))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
        return case.case_id, _masks(client, job.job_id, ct_dir, out)


def _masks(client, job_id, ct_dir, out):
    rtstruct = next(a for a in client.artifacts(job_id) if a.kind == "rtstruct")
    return read_rtstruct(pydicom.dcmread(client.download(rtstruct, out)), load_series_dir(ct_dir).volume)


def _wait_for(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _assert_same(masks, expected):
    assert set(masks) == set(expected)
    for name in expected:
        assert np.array_equal(masks[name], expected[name]), name


def test_killed_agent_node_its_shards_run_elsewhere(grid, reference, tmp_path):
    case_id, expected = reference
    victim = grid.start_agent("agent-victim")
    with grid.client() as client:
        victim_id = next(a.agent_id for a in client.agents() if a.name == "agent-victim" and a.state == 1)
        job = client.submit(case_id, "contour", params={"shards": "12"}, priority=10)
        _wait_for(lambda: any(s.agent_id == victim_id and s.state == common_pb2.SHARD_STATE_RUNNING
                              for s in client.shards(job.job_id)), "a shard running on the victim")
        os.killpg(victim.pid, signal.SIGKILL)  # the agent and its Ray node, without warning
        victim.wait()
        events = list(client.watch(job.job_id))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert any("retrying" in e.message and victim_id in e.message for e in events)
        shards = client.shards(job.job_id)
        assert all(s.agent_id != victim_id for s in shards if s.state == common_pb2.SHARD_STATE_SUCCEEDED
                   and s.attempts > 1)
        _assert_same(_masks(client, job.job_id, _CT_DIR[0], tmp_path), expected)
        lost = _wait_for(lambda: next(a for a in client.agents() if a.agent_id == victim_id).state
                         == common_pb2.AGENT_STATE_LOST, "the victim to be marked lost", 60)
        assert lost


_CT_DIR: list = []


@pytest.fixture(autouse=True, scope="module")
def _remember_ct(ct_dir):
    _CT_DIR.append(ct_dir)


@dataclass
class PostgresGrid(Grid):
    """A grid whose master keeps its jobs in PostgreSQL (``store``, a URL); blobs stay in data_dir."""

    store: str = ""

    def start_master(self, port: str = "0", internal_port: str = "0") -> str:
        self.master, ready = start_master_with(
            self.data_dir, self.ray_address, self.pki, port, internal_port,
            args=("--store", self.store, "--log-format", "json"), log_path=self.data_dir / "master.log",
        )
        self.target, self.internal_target = ready["target"], ready["internal_target"]
        return self.target


@pytest.fixture(scope="module")
def postgres_grid(ray_cluster, pki, tmp_path_factory):
    """A master on a throwaway PostgreSQL with one agent, beside the session's SQLite grid."""
    with running_postgres() as server:
        g = PostgresGrid(tmp_path_factory.mktemp("pg-grid"), ray_cluster.address, pki, store=server.new_database())
        g.start_master()
        try:
            with g.operator_client() as operator:
                g.token = operator.add_hospital(HOSPITAL).token
            g.start_agent("agent-pg", cpus=2)
            yield g
        finally:
            for proc in g.agents:
                stop_process(proc)
            stop_process(g.master)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_master_killed_and_restarted_mid_job(store, request, reference, ct_dir, tmp_path):
    case_id, expected = reference
    grid = request.getfixturevalue("grid" if store == "sqlite" else "postgres_grid")
    if store == "postgresql":  # the same CT on that grid; its masks must equal the SQLite grid's
        with grid.client() as client:
            case_id = client.upload_folder(ct_dir).case.case_id
    port, internal_port = grid.target.rsplit(":", 1)[1], grid.internal_target.rsplit(":", 1)[1]
    with grid.client() as client:
        job = client.submit(case_id, "contour", params={"shards": "12"})
        seen = []
        stream = client.watch(job.job_id)
        for event in stream:
            seen.append(event)
            if event.type == common_pb2.EVENT_TYPE_PROGRESS and event.shards_done >= 3:
                break
        done_before = {s.shard_id: s for s in client.shards(job.job_id) if s.state == common_pb2.SHARD_STATE_SUCCEEDED}
        os.killpg(grid.master.pid, signal.SIGKILL)
        grid.master.wait()
        target = grid.start_master(port=port, internal_port=internal_port)
        assert target == grid.target
        # The watcher resumes after the last event it saw; nothing is lost or repeated.
        rest = list(client.watch(job.job_id, after_seq=seen[-1].seq))
        events = seen + rest
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].message
        after = {s.shard_id: s for s in client.shards(job.job_id)}
        for shard_id, before in done_before.items():  # finished shards were not computed again
            assert after[shard_id].attempts == before.attempts and after[shard_id].started_ms == before.started_ms
        _assert_same(_masks(client, job.job_id, _CT_DIR[0], tmp_path), expected)
