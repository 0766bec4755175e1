"""The master's queue: jobs become shards, shards go to agents by priority, results come back.

Ray has no priorities, so the order lives here: ready shards are taken highest job priority
first, then oldest job, then shard index, and placed on live, non-draining agents with a free
slot; shards that want a GPU go to GPU agents when any is live (:func:`eligible_agents`). A failed
shard is tried again on another agent up to ``max_shard_attempts``; then its job fails with the
reason. The transitions themselves (and the rule that everything is written to the store before
it is announced, so a restarted master resumes where it stopped) are the state machine's,
:mod:`rtgrid.master.job_states`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .blobs import BlobStore, BlobWriteError
from .config import MasterConfig
from .events import EventBus
from .ids import now_ms
from .job_states import JobStates
from .jobs.registry import get_kind
from .metrics import MasterMetrics
from .ray_pool import ShardTaskError
from .shard_runner import ShardRunner
from .store.base import Store
from .store.records import ALIVE, DRAINING, LOST, AgentRecord, JobRecord, ShardRecord

log = logging.getLogger(__name__)
TICK_S = 0.5


def eligible_agents(free: dict[str, int], live: Sequence[AgentRecord], wants_gpu: bool) -> dict[str, int]:
    """The agents a shard may go to now, with their free slots.

    The rule: a shard that wants a GPU goes only to agents that reported GPUs whenever at least
    one such agent is live (it waits for a free slot there rather than run slowly on a CPU);
    when no GPU agent is live it goes to CPU agents, where it runs on the CPU. Other shards go
    to any agent.

    Parameters
    ----------
    free : dict of str to int
        Free slots per live agent id.
    live : sequence of AgentRecord
        The live agents (alive, with a worker on the Ray cluster); ``gpus`` as they reported.
    wants_gpu : bool
        Whether the shard wants a GPU (``JobKind.wants_gpu``).

    Returns
    -------
    dict of str to int
        Agent id to free slots (> 0), possibly empty.
    """
    candidates = {agent_id: n for agent_id, n in free.items() if n > 0}
    if not wants_gpu:
        return candidates
    gpu_agents = {a.agent_id for a in live if a.gpus}
    if not gpu_agents:
        return candidates
    return {agent_id: n for agent_id, n in candidates.items() if agent_id in gpu_agents}


@dataclass
class _Running:
    shard_id: str
    job_id: str
    agent_id: str
    task: asyncio.Task
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    """Places shards on agents and runs them; one per master. Job and shard transitions are the
    store-only state machine's (:attr:`jobs`, :class:`~rtgrid.master.job_states.JobStates`)."""

    def __init__(self, store: Store, blobs: BlobStore, events: EventBus, pool: ShardRunner, config: MasterConfig,
                 metrics: MasterMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or MasterMetrics()
        self.blobs = blobs
        self.events = events
        self.pool = pool
        self.config = config
        self.jobs = JobStates(store, blobs, events, config, self.metrics)
        self._running: dict[str, _Running] = {}
        self._avoid: dict[str, str] = {}  # queued or running shard id -> agent it last failed on
        self._wake = asyncio.Event()
        self._event_loop = asyncio.get_running_loop()  # made on the server's loop
        self._loop_task: asyncio.Task | None = None
        self._last_placed: dict[str, float] = {}  # agent id -> when it last got a shard

    # lifecycle
    def start(self) -> None:
        requeued = self.store.requeue_running_shards()
        if requeued:
            log.info("requeued %d shards that were running when the master stopped", requeued)
        for agent in self.store.list_agents():
            if agent.state in (ALIVE, DRAINING):
                # Until it heartbeats again we cannot know it is there.
                agent.state = LOST
                self.store.upsert_agent(agent)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for running in list(self._running.values()):
            running.task.cancel()
        await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)

    def wake(self) -> None:
        """Place shards now, not at the next tick (callable from any thread: submit runs in one)."""
        self._on_loop(self._wake.set)

    def _on_loop(self, action) -> None:
        """Run ``action`` on the scheduler's event loop: now when called there, else soon."""
        try:
            on_loop = asyncio.get_running_loop() is self._event_loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            action()
        else:
            self._event_loop.call_soon_threadsafe(action)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                # The store's reads and commits run in a thread, off the event loop every RPC shares.
                await asyncio.to_thread(self._mark_lost_agents)
                running = {r.shard_id: r.agent_id for r in self._running.values()}
                for shard, job, agent_id in await asyncio.to_thread(self._claim_ready_shards, running):
                    self._start(shard, job, agent_id)
            except Exception:  # the loop must outlive any one bad tick
                log.exception("scheduler tick failed")

    # jobs: the transitions are the state machine's; the scheduler wakes up or stops running work
    def submit(self, case_id: str, kind_name: str, params: dict[str, str], priority: int, key: str) -> JobRecord:
        """Create a job (or return the one made earlier with the same idempotency key); place it now."""
        job = self.jobs.submit(case_id, kind_name, params, priority, key)
        self.wake()
        return job

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job and stop its running shards (callable from any thread)."""
        job, ended = self.jobs.cancel(job_id)
        if ended:
            for running in [r for r in list(self._running.values()) if r.job_id == job_id]:
                self._on_loop(running.task.cancel)
        return job

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        job = self.jobs.set_priority(job_id, priority)
        self.wake()
        return job

    def shard_progress(self, job_id: str) -> tuple[int, int]:
        return self.jobs.shard_progress(job_id)

    # agents
    def running_count(self) -> int:
        return len(self._running)

    def running_on(self, agent_id: str) -> int:
        return sum(r.agent_id == agent_id for r in self._running.values())

    def _mark_lost_agents(self) -> None:
        patience_ms = self.config.heartbeat_interval_s * self.config.heartbeat_patience * 1000
        for agent in self.store.list_agents():
            if agent.state in (ALIVE, DRAINING) and now_ms() - agent.last_heartbeat_ms > patience_ms:
                log.warning("agent %s missed %d heartbeats: lost", agent.agent_id, self.config.heartbeat_patience)
                agent.state = LOST
                self.store.upsert_agent(agent)

    def _live_agents(self) -> list[AgentRecord]:
        """Agents that can take work: alive, with their worker on the Ray cluster."""
        return [a for a in self.store.list_agents() if a.state == ALIVE and self.pool.actor(a.agent_id) is not None]

    # placement
    def _claim_ready_shards(self, running: dict[str, str]) -> list[tuple[ShardRecord, JobRecord, str]]:
        """Choose agents for ready shards and mark them running in the store (in a thread).

        ``running`` maps the shards running now to their agents. Returns ``(shard, job, agent)``
        for :meth:`_start`, in placement order.
        """
        live = self._live_agents()
        busy = Counter(running.values())
        free = {a.agent_id: a.slots - busy[a.agent_id] for a in live}
        jobs: dict[str, JobRecord] = {}
        claimed: list[tuple[ShardRecord, JobRecord, str]] = []
        for shard in self.store.ready_shards():
            if shard.shard_id in running:
                continue
            if not any(n > 0 for n in free.values()):
                break
            job = jobs.get(shard.job_id) or jobs.setdefault(shard.job_id, self.jobs.get(shard.job_id))
            wants_gpu = get_kind(job.kind).wants_gpu(job, shard)
            candidates = eligible_agents(free, live, wants_gpu)
            if not candidates:
                continue  # it waits for a GPU agent's slot; other shards may still go elsewhere
            avoid = self._avoid.get(shard.shard_id)
            if avoid in candidates:
                if len(candidates) > 1:
                    del candidates[avoid]
                elif len(eligible_agents(dict.fromkeys(free, 1), live, wants_gpu)) > 1:
                    continue  # another agent will free a slot: a retry does not go back where it failed
            # Most free slots first; among equals the one idle longest, so every agent stays warm.
            agent_id = max(candidates, key=lambda a: (candidates[a], -self._last_placed.get(a, 0.0), a))
            job = self.jobs.claim(shard, agent_id)
            if job is None:
                continue
            self._last_placed[agent_id] = time.monotonic()
            free[agent_id] -= 1
            claimed.append((shard, job, agent_id))
        return claimed

    def _start(self, shard: ShardRecord, job: JobRecord, agent_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run_shard(shard, job, agent_id))
        self._running[shard.shard_id] = _Running(shard.shard_id, job.job_id, agent_id, task)

    async def _run_shard(self, shard: ShardRecord, job: JobRecord, agent_id: str) -> None:
        started = time.monotonic()
        ids = {"job_id": job.job_id, "shard_id": shard.shard_id, "agent_id": agent_id}
        log.info("shard %s (%s #%d) of job %s started on %s", shard.shard_id, shard.stage, shard.index, job.job_id,
                 agent_id, extra=ids)
        try:
            call = await asyncio.to_thread(self.jobs.shard_call, shard, job)
            if call is None:  # its job ended while the shard was being placed
                self._running.pop(shard.shard_id, None)
                return
            result = await self.pool.call(agent_id, call.task, call.kwargs, dataclasses.asdict(call.resources))
            result, result_sha = await asyncio.to_thread(self.jobs.keep_result, result)
        except asyncio.CancelledError:
            self._running.pop(shard.shard_id, None)
            self._avoid.pop(shard.shard_id, None)
            raise
        except BlobWriteError as exc:  # the master's disk, not the agent: no retry helps
            self._running.pop(shard.shard_id, None)
            self.metrics.shard_seconds.labels(shard.stage, "failed").observe(time.monotonic() - started)
            await asyncio.to_thread(self.jobs.fail_on_master, job.job_id, shard, str(exc))
        except Exception as exc:  # a failed shard is data: retried or reported
            self._running.pop(shard.shard_id, None)
            self.pool.forget(agent_id)
            reason = str(exc) if isinstance(exc, ShardTaskError) else f"{type(exc).__name__}: {exc}"
            self.metrics.shard_seconds.labels(shard.stage, "failed").observe(time.monotonic() - started)
            # Before the shard is queued again: a tick in another thread may place it at once.
            self._avoid[shard.shard_id] = agent_id  # a retry does not go back where it failed
            if not await asyncio.to_thread(self.jobs.shard_failed, shard, agent_id, reason.strip()[:2000]):
                self._avoid.pop(shard.shard_id, None)  # not queued again: nothing left to steer
        else:
            self._running.pop(shard.shard_id, None)
            self._avoid.pop(shard.shard_id, None)
            seconds = time.monotonic() - started
            self.metrics.shard_seconds.labels(shard.stage, "succeeded").observe(seconds)
            log.info("shard %s (%s #%d) of job %s succeeded on %s in %.2f s", shard.shard_id, shard.stage, shard.index,
                     job.job_id, agent_id, seconds, extra=ids)
            try:
                kept = await asyncio.to_thread(self.jobs.shard_succeeded, shard, result_sha, result)
            except BlobWriteError as exc:  # the store's transaction was rolled back
                kept = False
                await asyncio.to_thread(self.jobs.fail_on_master, job.job_id, shard, str(exc))
            if not kept:
                await asyncio.to_thread(self.jobs.discard_unused, [result_sha, *(a["sha256"] for a in result["artifacts"])])
        self.wake()

    # cluster view
    def queue_depth(self) -> int:
        return self.jobs.queue_depth()

    def jobs_by_state(self) -> dict[str, int]:
        return self.jobs.jobs_by_state()

