"""The job state machine on its own: a real SQLite store and blob store, no agents, no Ray, no
event loop running; each transition is called as the scheduler would call it."""

from __future__ import annotations

import asyncio

import pytest

from rtgrid.master.blobs import BlobStore
from rtgrid.master.config import MasterConfig
from rtgrid.master.errors import FailedPrecondition, InvalidArgument, NotFound
from rtgrid.master.events import EventBus
from rtgrid.master.ids import now_ms
from rtgrid.master.job_states import JobStates
from rtgrid.master.jobs.base import JobContext, JobKind, ShardCall, StagePlan
from rtgrid.master.jobs.registry import KINDS
from rtgrid.master.metrics import MasterMetrics
from rtgrid.master.store.records import CaseRecord, ShardRecord
from rtgrid.master.store.sqlite import SqliteStore


class TwoStages(JobKind):
    """``split``: ``n`` shards; ``join``: one shard. The join fails the job when told to."""

    name = "test.two-stages"
    stages = ("split", "join")

    def validate(self, params, store, blobs, case_id):
        if not params.get("n", "").isdigit():
            raise InvalidArgument(f"n must be a count, got {params.get('n')!r}")
        return dict(params)

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        return StagePlan.count(int(ctx.job.params["n"]) if stage == "split" else 1)

    def outcome(self, ctx: JobContext, stage: str) -> str:
        return "the join says no" if stage == "join" and ctx.job.params.get("refuse") else ""

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        return ShardCall("noop", {"index": shard.index})


@pytest.fixture(autouse=True)
def kind(monkeypatch):
    monkeypatch.setitem(KINDS, TwoStages.name, TwoStages())


@pytest.fixture
def states(tmp_path):
    store = SqliteStore(tmp_path / "rtgrid.sqlite")
    loop = asyncio.new_event_loop()  # the bus only queues wake-ups on it
    states = JobStates(store, BlobStore(tmp_path / "blobs"), EventBus(store, loop),
                       MasterConfig(data_dir=tmp_path, max_shard_attempts=2), MasterMetrics())
    store.add_case(CaseRecord("case-1", "test", True, now_ms(), "h1"))
    store.add_case(CaseRecord("case-open", "test", False, now_ms(), "h1"))
    yield states
    store.close()
    loop.close()


def _run_stage(states: JobStates, job_id: str, stage: str, result: dict | None = None) -> None:
    for shard in states.store.list_shards(job_id, stage):
        assert states.claim(shard, "a1") is not None
        kept, sha = states.keep_result(result or {"artifacts": []})
        assert states.shard_succeeded(shard, sha, kept)


def test_submit_queues_the_first_stage_once_per_key(states):
    job = states.submit("case-1", TwoStages.name, {"n": "3"}, 0, "key-1")
    assert job.state == "queued" and job.stage == "split"
    assert [s.state for s in states.store.list_shards(job.job_id)] == ["queued"] * 3
    assert states.submit("case-1", TwoStages.name, {"n": "3"}, 0, "key-1").job_id == job.job_id
    assert len(states.store.list_shards(job.job_id)) == 3
    assert [e.state for e in states.store.events_after(job.job_id, 0)] == ["queued"]


@pytest.mark.parametrize("case, params, priority, error, message", [
    ("case-9", {"n": "1"}, 0, NotFound, "no case 'case-9'"),
    ("case-open", {"n": "1"}, 0, FailedPrecondition, "not committed"),
    ("case-1", {"n": "x"}, 0, InvalidArgument, "n must be a count"),
    ("case-1", {"n": "1"}, 10**6, InvalidArgument, "outside"),
])
def test_a_refused_submit_names_the_problem_and_stores_nothing(states, case, params, priority, error, message):
    with pytest.raises(error, match=message):
        states.submit(case, TwoStages.name, params, priority, "")
    assert states.store.list_jobs(limit=10) == []


def test_stages_follow_each_other_and_files_are_published_once(states):
    job = states.submit("case-1", TwoStages.name, {"n": "2"}, 0, "")
    _run_stage(states, job.job_id, "split")
    assert states.get(job.job_id).stage == "join" and states.get(job.job_id).state == "running"
    report = {"artifacts": [{"name": "r.txt", "kind": "report", "modality": ""}], "file:r.txt": b"done"}
    _run_stage(states, job.job_id, "join", report)
    assert states.get(job.job_id).state == "succeeded"
    (artifact,) = states.store.list_artifacts(job.job_id)
    assert states.blobs.read_bytes(artifact.sha256) == b"done"
    assert states.shard_progress(job.job_id) == (3, 3) and states.queue_depth() == 0


def test_the_kinds_verdict_fails_the_job_after_its_stage(states):
    job = states.submit("case-1", TwoStages.name, {"n": "1", "refuse": "1"}, 0, "")
    _run_stage(states, job.job_id, "split")
    _run_stage(states, job.job_id, "join")
    assert states.get(job.job_id).state == "failed" and states.get(job.job_id).error == "the join says no"


def test_a_failed_shard_is_retried_then_fails_its_job_with_the_reason(states):
    job = states.submit("case-1", TwoStages.name, {"n": "2"}, 0, "")
    shard = states.store.list_shards(job.job_id)[0]
    assert states.claim(shard, "a1") is not None
    assert states.shard_failed(shard, "a1", "out of memory") is True
    assert states.store.get_shard(shard.shard_id).state == "queued"
    assert states.claim(shard, "a2") is not None
    assert states.shard_failed(shard, "a2", "out of memory again") is False
    job = states.get(job.job_id)
    assert job.state == "failed" and "failed 2 times; last on agent a2: out of memory again" in job.error
    assert sorted(s.state for s in states.store.list_shards(job.job_id)) == ["cancelled", "failed"]


def test_after_a_cancel_nothing_is_claimed_or_recorded(states):
    job = states.submit("case-1", TwoStages.name, {"n": "2"}, 0, "")
    first, second = states.store.list_shards(job.job_id)
    assert states.claim(first, "a1") is not None
    assert states.cancel(job.job_id)[1] is True and states.cancel(job.job_id)[1] is False
    assert states.claim(second, "a1") is None
    kept, sha = states.keep_result({"artifacts": []})
    assert states.shard_succeeded(first, sha, kept) is False  # the caller discards the result
    states.discard_unused([sha])
    assert not states.blobs.exists(sha)
    with pytest.raises(FailedPrecondition, match="cancelled; its priority no longer matters"):
        states.set_priority(job.job_id, 3)
