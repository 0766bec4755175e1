"""A job's event stream on its own: a real SQLite store, the job state machine publishing from
threads as the scheduler does, and :meth:`EventBus.follow` reading as WatchJob reads (the job,
then the events after the last one seen). No scheduler runs: what a watcher sees comes from the
transitions themselves, not from a tick."""

from __future__ import annotations

import asyncio

import pytest

from rtgrid.master.blobs import BlobStore
from rtgrid.master.config import MasterConfig
from rtgrid.master.errors import NotFound
from rtgrid.master.events import EventBus
from rtgrid.master.ids import now_ms
from rtgrid.master.job_states import JobStates
from rtgrid.master.jobs.base import JobContext, JobKind, ShardCall, StagePlan
from rtgrid.master.jobs.registry import KINDS
from rtgrid.master.metrics import MasterMetrics
from rtgrid.master.store.records import TERMINAL_JOB_STATES, CaseRecord, ShardRecord
from rtgrid.master.store.sqlite import SqliteStore

BOUND_S = 30.0  # every watch here ends long before; the bound only keeps a broken one from hanging
NEVER_S = 3600.0  # a poll that never comes: a watcher must be woken by the publish itself


class OneStage(JobKind):
    name = "test.one-stage"
    stages = ("work",)

    def validate(self, params, store, blobs, case_id):
        return dict(params)

    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        return StagePlan.count(int(ctx.job.params.get("n", "1")))

    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall:
        return ShardCall("noop", {})


@pytest.fixture(autouse=True)
def kind(monkeypatch):
    monkeypatch.setitem(KINDS, OneStage.name, OneStage())


class Jobs:
    """The state machine and its bus on the running loop; ``read`` is WatchJob's read, in a thread."""

    def __init__(self, tmp_path) -> None:
        self.store = SqliteStore(tmp_path / "rtgrid.sqlite")
        self.bus = EventBus(self.store, asyncio.get_running_loop())
        self.states = JobStates(self.store, BlobStore(tmp_path / "blobs"), self.bus,
                                MasterConfig(data_dir=tmp_path), MasterMetrics())
        self.store.add_case(CaseRecord("case-1", "test", True, now_ms(), "h1"))
        self.reads = 0

    def read_now(self, job_id: str, seq: int, page: int):
        job = self.states.get(job_id)  # first, as WatchJob: an ended job's last event is then in the read
        events = self.store.events_after(job_id, seq, limit=page)
        return events, job.state in TERMINAL_JOB_STATES and len(events) < page

    def reader(self, job_id: str, page: int = 1000):
        async def read(seq: int):
            self.reads += 1
            return await asyncio.to_thread(self.read_now, job_id, seq, page)
        return read

    async def watch(self, job_id: str, read=None, page: int = 1000, after_seq: int = 0) -> list:
        async def collect():
            read_page = read or self.reader(job_id, page)
            return [e async for e in self.bus.follow(job_id, after_seq, read_page, NEVER_S, page)]
        return await asyncio.wait_for(collect(), BOUND_S)

    def run_all(self, job_id: str) -> None:
        """Every shard claimed and succeeded, as the scheduler's threads do it."""
        for shard in self.store.list_shards(job_id):
            assert self.states.claim(shard, "a1") is not None
            kept, sha = self.states.keep_result({"artifacts": []})
            assert self.states.shard_succeeded(shard, sha, kept)


def run(scenario) -> None:
    asyncio.run(scenario())


def test_the_first_event_is_the_queued_one_stored_with_the_job(tmp_path):
    # No scheduler, no tick: the submit itself stores and announces the first event.
    async def scenario():
        jobs = Jobs(tmp_path)
        job = jobs.states.submit("case-1", OneStage.name, {"n": "3"}, 0, "")
        watching = asyncio.create_task(jobs.watch(job.job_id))
        await asyncio.to_thread(jobs.run_all, job.job_id)
        events = await watching
        first = events[0]
        assert (first.seq, first.type, first.state, first.stage) == (1, "state", "queued", "work")
        assert first.message == f"{OneStage.name} job queued"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.state for e in events][-1] == "succeeded" and "running" in [e.state for e in events]
        stored = jobs.store.events_after(job.job_id, 0)
        assert [(e.seq, e.type, e.message) for e in events] == [(e.seq, e.type, e.message) for e in stored]
        jobs.store.close()

    run(scenario)


def test_an_event_published_while_the_watcher_reads_wakes_it(tmp_path):
    # The publish lands after the watcher's read and before it waits: with no poll to fall back
    # on, only a wake-up that is not lost brings the cancellation to the watcher.
    async def scenario():
        jobs = Jobs(tmp_path)
        job = jobs.states.submit("case-1", OneStage.name, {}, 0, "")
        plain = jobs.reader(job.job_id)

        async def read_then_cancel(seq: int):
            page = await plain(seq)
            if jobs.reads == 1:
                await asyncio.to_thread(jobs.states.cancel, job.job_id)
            return page

        events = await jobs.watch(job.job_id, read_then_cancel)
        assert [(e.seq, e.state) for e in events] == [(1, "queued"), (2, "cancelled")]
        assert jobs.reads == 2  # woken once, read once more, ended
        jobs.store.close()

    run(scenario)


def test_a_watch_resumes_after_the_last_event_it_saw(tmp_path):
    async def scenario():
        jobs = Jobs(tmp_path)
        job = jobs.states.submit("case-1", OneStage.name, {"n": "2"}, 0, "")
        await asyncio.to_thread(jobs.run_all, job.job_id)
        everything = await jobs.watch(job.job_id)
        rest = await jobs.watch(job.job_id, after_seq=2)
        assert [e.seq for e in rest] == [e.seq for e in everything][2:] and rest[-1].state == "succeeded"
        jobs.store.close()

    run(scenario)


def test_a_full_page_is_followed_by_the_next_read_at_once(tmp_path):
    async def scenario():
        jobs = Jobs(tmp_path)
        job = jobs.states.submit("case-1", OneStage.name, {"n": "3"}, 0, "")
        await asyncio.to_thread(jobs.run_all, job.job_id)
        stored = jobs.store.events_after(job.job_id, 0)
        events = await jobs.watch(job.job_id, page=2)
        assert [e.seq for e in events] == [e.seq for e in stored] and len(stored) > 4
        assert jobs.reads == len(stored) // 2 + 1
        jobs.store.close()

    run(scenario)


def test_a_finished_or_refused_watch_leaves_no_subscription(tmp_path):
    async def scenario():
        jobs = Jobs(tmp_path)
        job = jobs.states.submit("case-1", OneStage.name, {}, 0, "")
        jobs.states.cancel(job.job_id)
        await jobs.watch(job.job_id)
        with pytest.raises(NotFound, match="no job 'job-missing'"):
            await jobs.watch("job-missing")
        # a watcher that goes away mid-watch (the client hung up) unsubscribes too
        live = jobs.states.submit("case-1", OneStage.name, {}, 0, "")
        watching = asyncio.create_task(jobs.watch(live.job_id))
        for _ in range(int(BOUND_S / 0.01)):
            if jobs.bus.watchers():
                break
            await asyncio.sleep(0.01)
        assert jobs.bus.watchers() == 1
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching
        assert jobs.bus.watchers() == 0 and not jobs.bus._waiters
        jobs.store.close()

    run(scenario)
