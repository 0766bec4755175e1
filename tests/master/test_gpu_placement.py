"""GPU-aware placement: the rule, on agent records as the agent API stores them (real SQLite).

There is no GPU here, so agents *claim* GPUs the way a GPU box reports them at registration;
what is tested is the scheduler's choice, not a device.
"""

from __future__ import annotations

import pytest

from rtgrid.master import agents
from rtgrid.master.jobs.registry import get_kind
from rtgrid.master.scheduler import eligible_agents
from rtgrid.master.store.records import JobRecord, ShardRecord
from rtgrid.master.store.sqlite import SqliteStore

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_520_809_984}


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "rtgrid.sqlite")
    yield s
    s.close()


def _register(store, name: str, gpus: list[dict]) -> str:
    return agents.register(store, agent_id="", name=name, hostname=name, cpus=8, ram_bytes=1 << 34, gpus=gpus,
                           engine_versions={}, slots=2).agent_id


def test_gpu_shards_go_to_gpu_agents_when_one_is_live(store):
    cpu = _register(store, "cpu-box", [])
    gpu = _register(store, "gpu-box", [H100])
    live = store.list_agents()
    free = {cpu: 2, gpu: 1}
    assert eligible_agents(free, live, wants_gpu=True) == {gpu: 1}
    assert eligible_agents(free, live, wants_gpu=False) == {cpu: 2, gpu: 1}
    # The GPU agent is busy: the GPU shard waits for it rather than run on the CPU box.
    assert eligible_agents({cpu: 2, gpu: 0}, live, wants_gpu=True) == {}
    assert eligible_agents({cpu: 2, gpu: 0}, live, wants_gpu=False) == {cpu: 2}


def test_gpu_shards_fall_back_to_cpu_agents_when_no_gpu_agent_is_live(store):
    cpu_a = _register(store, "cpu-a", [])
    cpu_b = _register(store, "cpu-b", [])
    gpu = _register(store, "gpu-box", [H100])
    # The GPU agent is not live (lost, draining, or its worker is gone): not in the live list.
    live = [a for a in store.list_agents() if a.agent_id != gpu]
    assert eligible_agents({cpu_a: 1, cpu_b: 0}, live, wants_gpu=True) == {cpu_a: 1}


def test_contour_jobs_mark_their_model_shards_as_gpu_work():
    kind = get_kind("contour")
    job = JobRecord("job-1", "case-1", "contour", "running", 0, {"models": "m@1:" + "a" * 64}, "segment", 0)
    assert kind.wants_gpu(job, ShardRecord("s1", "job-1", "segment", 0, "queued"))
    assert not kind.wants_gpu(job, ShardRecord("s2", "job-1", "contour", 0, "queued"))
    assert not kind.wants_gpu(job, ShardRecord("s3", "job-1", "merge", 0, "queued"))
    assert kind.stages_for(job.params) == ("contour", "segment", "merge")
    assert kind.stages_for({}) == ("contour", "merge")
