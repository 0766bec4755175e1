"""The scheduler on its own: a real SQLite store, blob store and event bus, shards run in this
process (:class:`InProcessRunner`), a small two-stage job kind. Stages, priorities, retries on
another agent, failure with the reason, drain and cancel, each in well under a second."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from rtgrid.master.blobs import BlobStore
from rtgrid.master.config import MasterConfig
from rtgrid.master.events import EventBus
from rtgrid.master.ids import now_ms
from rtgrid.master.jobs.base import JobContext, JobKind, ShardCall, StagePlan
from rtgrid.master.jobs.registry import KINDS
from rtgrid.master.scheduler import Scheduler
from rtgrid.master.shard_runner import InProcessRunner
from rtgrid.master.store.records import ALIVE, DRAINING, AgentRecord, CaseRecord, ShardRecord
from rtgrid.master.store.sqlite import SqliteStore

TIMEOUT_S = 10.0


class SquareThenSum(JobKind):
    """``split``: one shard per number (its square); ``join``: one shard (the sum), publishing a file."""

    name = "test.square-sum"
    stages = ("split", "join")

    def validate(self, params, store, blobs, case_id):
        return dict(params)

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        return StagePlan.count(int(ctx.job.params["n"]) if stage == "split" else 1)

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        if shard.stage == "split":
            return ShardCall("square", {"x": shard.index, "job": ctx.job.job_id})
        return ShardCall("sum", {"parts": ctx.shared_result("split", 0), "all": ctx.stage_results("split")})


def square(agent_id: str, x: int, job: str) -> dict[str, Any]:
    return {"y": x * x}


def total(agent_id: str, parts: dict, all: list[dict]) -> dict[str, Any]:
    value = sum(r["y"] for r in all)
    return {"artifacts": [{"name": "sum.txt", "kind": "report", "modality": ""}], "file:sum.txt": str(value).encode()}


@pytest.fixture(autouse=True)
def kind(monkeypatch):
    monkeypatch.setitem(KINDS, SquareThenSum.name, SquareThenSum())


class Grid:
    """A scheduler with its store and runner, on the test's event loop."""

    def __init__(self, tmp_path, tasks, agents: dict[str, int], max_attempts: int = 3) -> None:
        self.store = SqliteStore(tmp_path / "rtgrid.sqlite")
        self.blobs = BlobStore(tmp_path / "blobs")
        self.runner = InProcessRunner(tasks)
        self.events = EventBus(self.store, asyncio.get_running_loop())
        config = MasterConfig(data_dir=tmp_path, max_shard_attempts=max_attempts)
        self.scheduler = Scheduler(self.store, self.blobs, self.events, self.runner, config)
        self.store.add_case(CaseRecord("case-1", "test", True, now_ms(), "h1"))
        self.agents = agents

    def start(self, state: str = ALIVE) -> None:
        self.scheduler.start()  # marks agents it finds lost until they beat: they join after
        for agent_id, slots in self.agents.items():
            self.store.upsert_agent(AgentRecord(agent_id, agent_id, "localhost", 1, 1 << 30, [], {}, slots, state, now_ms(), ""))
            self.runner.add_agent(agent_id)
        self.scheduler.wake()

    async def finished(self, job_id: str) -> str:
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while (job := self.store.get_job(job_id)).state not in ("succeeded", "failed", "cancelled"):
            assert asyncio.get_running_loop().time() < deadline, f"job {job_id} still {job.state}"
            await asyncio.sleep(0.01)
        return job.state

    async def stop(self) -> None:
        await self.scheduler.stop()
        self.store.close()


def run(test) -> None:
    asyncio.run(asyncio.wait_for(test(), TIMEOUT_S * 2))


def test_stages_run_in_order_and_the_last_publishes_its_file_once(tmp_path):
    async def scenario():
        grid = Grid(tmp_path, {"square": square, "sum": total}, {"a1": 2})
        job = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "4"}, 0, "")
        grid.start()
        assert await grid.finished(job.job_id) == "succeeded"
        (artifact,) = grid.store.list_artifacts(job.job_id)
        assert grid.blobs.read_bytes(artifact.sha256) == b"14"  # 0 + 1 + 4 + 9
        events = grid.store.events_after(job.job_id, 0)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[0].state == "queued" and events[-1].state == "succeeded"
        assert [t for _, t, _ in grid.runner.calls] == ["square"] * 4 + ["sum"]
        # the join's shared input arrived as the first split shard's result
        assert grid.runner.calls[-1][2]["parts"]["y"] == 0
        await grid.stop()

    run(scenario)


def test_higher_priority_jobs_go_first(tmp_path):
    async def scenario():
        grid = Grid(tmp_path, {"square": square, "sum": total}, {"a1": 1})
        low = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "3"}, -5, "")
        high = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "3"}, 5, "")
        grid.start()
        await grid.finished(low.job_id)
        await grid.finished(high.job_id)
        order = [kw["job"] for _, t, kw in grid.runner.calls if t == "square"]
        assert order == [high.job_id] * 3 + [low.job_id] * 3
        await grid.stop()

    run(scenario)


def test_a_failed_shard_is_retried_on_another_agent(tmp_path):
    def square_but_not_on_a1(agent_id: str, x: int, job: str) -> dict[str, Any]:
        if agent_id == "a1":
            raise RuntimeError("a1's GPU fell off the bus")
        return square(agent_id, x, job)

    async def scenario():
        grid = Grid(tmp_path, {"square": square_but_not_on_a1, "sum": total}, {"a1": 1, "a2": 1})
        job = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "4"}, 0, "")
        grid.start()
        assert await grid.finished(job.job_id) == "succeeded"
        failed_on_a1 = [kw["x"] for agent, t, kw in grid.runner.calls if agent == "a1" and t == "square"]
        retried_on_a2 = [kw["x"] for agent, t, kw in grid.runner.calls if agent == "a2" and t == "square"]
        assert failed_on_a1 and set(failed_on_a1) <= set(retried_on_a2)
        logs = [e.message for e in grid.store.events_after(job.job_id, 0) if e.type == "log"]
        assert any("failed on agent a1" in m and "retrying: RuntimeError: a1's GPU fell off the bus" in m for m in logs)
        await grid.stop()

    run(scenario)


def test_a_shard_that_always_fails_fails_its_job_with_the_reason(tmp_path):
    def broken(agent_id: str, x: int, job: str) -> dict[str, Any]:
        raise ValueError(f"no square for {x}")

    async def scenario():
        grid = Grid(tmp_path, {"square": broken, "sum": total}, {"a1": 1, "a2": 1}, max_attempts=2)
        job = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "1"}, 0, "")
        grid.start()
        assert await grid.finished(job.job_id) == "failed"
        record = grid.store.get_job(job.job_id)
        assert "failed 2 times" in record.error and "ValueError: no square for 0" in record.error
        assert len(grid.runner.calls) == 2 and not grid.store.list_artifacts(job.job_id)
        await grid.stop()

    run(scenario)


def test_a_draining_agent_gets_no_new_shards(tmp_path):
    async def scenario():
        grid = Grid(tmp_path, {"square": square, "sum": total}, {"a1": 4})
        job = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "2"}, 0, "")
        grid.start(state=DRAINING)
        await asyncio.sleep(0.7)  # more than a scheduler tick
        assert grid.runner.calls == [] and grid.store.get_job(job.job_id).state == "queued"
        agent = grid.store.get_agent("a1")
        agent.state = ALIVE
        grid.store.upsert_agent(agent)
        grid.scheduler.wake()
        assert await grid.finished(job.job_id) == "succeeded"
        await grid.stop()

    run(scenario)


def test_cancel_stops_a_running_job_and_its_shards(tmp_path):
    release = threading.Event()

    def slow(agent_id: str, x: int, job: str) -> dict[str, Any]:
        release.wait(TIMEOUT_S)
        return square(agent_id, x, job)

    async def scenario():
        grid = Grid(tmp_path, {"square": slow, "sum": total}, {"a1": 1})
        job = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "3"}, 0, "")
        grid.start()
        while not grid.runner.calls:
            await asyncio.sleep(0.01)
        grid.scheduler.cancel(job.job_id)
        release.set()
        assert await grid.finished(job.job_id) == "cancelled"
        await asyncio.sleep(0.2)
        assert len(grid.runner.calls) == 1  # nothing more was placed
        assert all(s.state in ("cancelled",) for s in grid.store.list_shards(job.job_id))
        await grid.stop()

    run(scenario)


def test_a_shard_read_before_its_job_was_cancelled_is_not_claimed(tmp_path):
    # The tick reads ready shards and claims them in a thread while a cancel may run on the event
    # loop; a claim after the cancel must not leave a shard "running" in a cancelled job.
    async def scenario():
        grid = Grid(tmp_path, {"square": square, "sum": total}, {"a1": 1})
        job = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "2"}, 0, "")
        shard = grid.store.ready_shards()[0]
        grid.scheduler.cancel(job.job_id)
        assert grid.scheduler.jobs.claim(shard, "a1") is None
        assert {s.state for s in grid.store.list_shards(job.job_id)} == {"cancelled"}
        await grid.stop()

    run(scenario)


def test_finished_jobs_leave_no_retry_or_stage_bookkeeping(tmp_path):
    # A long-running master keeps nothing per finished job: memory stays flat over a soak.
    doomed: set[str] = set()

    def square_but_not_on_a1(agent_id: str, x: int, job: str) -> dict[str, Any]:
        if agent_id == "a1" or job in doomed:
            raise RuntimeError(f"no square of {x} on {agent_id}")
        return square(agent_id, x, job)

    async def scenario():
        grid = Grid(tmp_path, {"square": square_but_not_on_a1, "sum": total}, {"a1": 1, "a2": 1}, max_attempts=2)
        retried = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "3"}, 0, "")
        failing = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "1"}, 0, "")
        doomed.add(failing.job_id)
        cancelled = grid.scheduler.submit("case-1", SquareThenSum.name, {"n": "1"}, -1, "")
        grid.scheduler.cancel(cancelled.job_id)
        grid.start()
        assert await grid.finished(retried.job_id) == "succeeded"
        assert await grid.finished(failing.job_id) == "failed"
        assert any(agent == "a1" for agent, _, _ in grid.runner.calls)  # a shard was steered away from a1
        for _ in range(int(TIMEOUT_S / 0.01)):  # a failed shard's task ends just after its job
            if not grid.scheduler._avoid and not grid.scheduler.running_count():
                break
            await asyncio.sleep(0.01)
        assert grid.scheduler._avoid == {} and grid.scheduler.jobs._stage_started == {}
        await grid.stop()

    run(scenario)
