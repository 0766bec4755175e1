"""The master's queue: jobs become shards, shards go to agents by priority, results come back.

Ray has no priorities, so the order lives here: ready shards are taken highest job priority
first, then oldest job, then shard index, and placed on live, non-draining agents with a free
slot; shards that want a GPU go to GPU agents when any is live (:func:`eligible_agents`). A failed shard is tried again on another agent up to ``max_shard_attempts``; then its job
fails with the reason. Everything that changes is written to the store before it is announced,
so a restarted master resumes where it stopped (finished shards are never recomputed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rtgrid.protos.grid_contract import detach_files

from .blobs import BlobStore, BlobWriteError
from .codec import pack
from .config import MAX_PRIORITY, MasterConfig
from .errors import FailedPrecondition, InvalidArgument, NotFound
from .events import EventBus
from .ids import new_id, now_ms
from .jobs.base import JobContext, VolumeCache
from .jobs.registry import get_kind
from .metrics import MasterMetrics
from .ray_pool import ShardTaskError
from .shard_runner import ShardRunner
from .store.base import Store
from .store.records import (
    ALIVE,
    CANCELLED,
    DRAINING,
    FAILED,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_JOB_STATES,
    AgentRecord,
    ArtifactRecord,
    JobRecord,
    ShardRecord,
)

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


def _check_priority(priority: int) -> None:
    if abs(priority) > MAX_PRIORITY:
        raise InvalidArgument(f"priority {priority} is outside [-{MAX_PRIORITY}, {MAX_PRIORITY}]")


@dataclass
class _Running:
    shard_id: str
    job_id: str
    agent_id: str
    task: asyncio.Task
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    """Owns job and shard state transitions; one per master."""

    def __init__(self, store: Store, blobs: BlobStore, events: EventBus, pool: ShardRunner, config: MasterConfig,
                 metrics: MasterMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or MasterMetrics()
        self.blobs = blobs
        self.events = events
        self.pool = pool
        self.config = config
        self._running: dict[str, _Running] = {}
        self._avoid: dict[str, str] = {}  # shard id -> agent it last failed on
        self._stage_started: dict[tuple[str, str], float] = {}
        self._wake = asyncio.Event()
        self._event_loop = asyncio.get_running_loop()  # made on the server's loop
        self._loop_task: asyncio.Task | None = None
        self._volumes = VolumeCache(blobs)
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
        try:
            on_loop = asyncio.get_running_loop() is self._event_loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._wake.set()
        else:
            self._event_loop.call_soon_threadsafe(self._wake.set)

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

    # jobs
    def submit(self, case_id: str, kind_name: str, params: dict[str, str], priority: int, key: str) -> JobRecord:
        """Create a job (or return the one made earlier with the same idempotency key)."""
        if key:
            existing = self.store.find_job_by_key(key)
            if existing is not None:
                return existing
        case = self.store.get_case(case_id)
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        if not case.committed:
            raise FailedPrecondition(f"case {case_id} is not committed; commit it after uploading")
        _check_priority(priority)
        kind = get_kind(kind_name)
        params = kind.validate(dict(params), self.store, self.blobs, case_id)
        first = kind.stages_for(params)[0]
        job = JobRecord(new_id("job"), case_id, kind.name, QUEUED, priority, params, first, now_ms(),
                        idempotency_key=key)
        with self.store.transaction():
            # Checked again inside the transaction: two submits with one key race to here.
            existing = self.store.find_job_by_key(key) if key else None
            if existing is not None:
                return existing
            self.store.add_job(job)
            self._plan_stage(job, first)
            self.events.publish(job.job_id, "state", QUEUED, stage=job.stage, message=f"{kind.name} job queued")
        self.metrics.jobs_submitted.labels(kind.name).inc()
        log.info("job %s (%s) queued on case %s", job.job_id, kind.name, case_id, extra={"job_id": job.job_id})
        self.wake()
        return job

    def _plan_stage(self, job: JobRecord, stage: str) -> int:
        ctx = JobContext(self.store, self.blobs, job, self._volumes)
        plan = get_kind(job.kind).plan_stage(ctx, stage)
        self.store.add_shards(
            [ShardRecord(new_id("shard"), job.job_id, stage, i, QUEUED, target=t) for i, t in enumerate(plan.targets)]
        )
        self._stage_started[(job.job_id, stage)] = time.monotonic()
        return len(plan.targets)

    def cancel(self, job_id: str) -> JobRecord:
        job = self._job(job_id)
        if job.state in TERMINAL_JOB_STATES:
            return job
        with self.store.transaction():
            self._end_job(job, CANCELLED, "cancelled by request")
        for running in [r for r in self._running.values() if r.job_id == job_id]:
            running.task.cancel()
        return job

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        job = self._job(job_id)
        _check_priority(priority)
        if job.state in TERMINAL_JOB_STATES:
            raise FailedPrecondition(f"job {job_id} is {job.state}; its priority no longer matters")
        job.priority = priority
        with self.store.transaction():
            self.store.update_job(job)
            self.events.publish(job_id, "log", job.state, stage=job.stage, message=f"priority set to {priority}")
        self.wake()
        return job

    def _job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def _end_job(self, job: JobRecord, state: str, message: str) -> None:
        job.state = state
        job.finished_ms = now_ms()
        if state == FAILED:
            job.error = message
        self.store.update_job(job)
        for shard in self.store.list_shards(job.job_id):
            if shard.state in (PENDING, QUEUED, RUNNING):
                shard.state = CANCELLED
                self.store.update_shard(shard)
        self.events.publish(job.job_id, "state", state, stage=job.stage, message=message)
        self.metrics.jobs_finished.labels(job.kind, state).inc()
        log.info("job %s %s: %s", job.job_id, state, message, extra={"job_id": job.job_id})

    def shard_progress(self, job_id: str) -> tuple[int, int]:
        shards = self.store.list_shards(job_id)
        return sum(s.state == SUCCEEDED for s in shards), len(shards)

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
            job = jobs.get(shard.job_id) or jobs.setdefault(shard.job_id, self._job(shard.job_id))
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
            job = self._claim(shard, agent_id)
            if job is None:
                continue
            self._last_placed[agent_id] = time.monotonic()
            free[agent_id] -= 1
            claimed.append((shard, job, agent_id))
        return claimed

    def _claim(self, shard: ShardRecord, agent_id: str) -> JobRecord | None:
        """Mark the shard running on the agent (and its job running, once); ``None`` when it is no
        longer queued. Checked inside the transaction: a cancel on the event loop may have ended
        its job since the shard was read."""
        with self.store.transaction():
            job = self._job(shard.job_id)
            current = self.store.get_shard(shard.shard_id)
            if job.state in TERMINAL_JOB_STATES or current is None or current.state != QUEUED:
                return None
            shard.state, shard.agent_id, shard.attempts, shard.started_ms = RUNNING, agent_id, current.attempts + 1, now_ms()
            self.store.update_shard(shard)
            if job.state == QUEUED:
                job.state, job.started_ms = RUNNING, now_ms()
                self.store.update_job(job)
                self.events.publish(job.job_id, "state", RUNNING, stage=job.stage, message="running")
        return job

    def _start(self, shard: ShardRecord, job: JobRecord, agent_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run_shard(shard, job, agent_id))
        self._running[shard.shard_id] = _Running(shard.shard_id, job.job_id, agent_id, task)

    async def _run_shard(self, shard: ShardRecord, job: JobRecord, agent_id: str) -> None:
        started = time.monotonic()
        ids = {"job_id": job.job_id, "shard_id": shard.shard_id, "agent_id": agent_id}
        log.info("shard %s (%s #%d) of job %s started on %s", shard.shard_id, shard.stage, shard.index, job.job_id,
                 agent_id, extra=ids)
        try:
            call = await asyncio.to_thread(self._prepare_call, shard, job)
            if call is None:  # its job ended while the shard was being placed
                self._running.pop(shard.shard_id, None)
                return
            result = await self.pool.call(agent_id, call.task, call.kwargs, dataclasses.asdict(call.resources))
            result, result_sha = await asyncio.to_thread(self._keep_result, result)
        except asyncio.CancelledError:
            self._running.pop(shard.shard_id, None)
            raise
        except BlobWriteError as exc:  # the master's disk, not the agent: no retry helps
            self._running.pop(shard.shard_id, None)
            self.metrics.shard_seconds.labels(shard.stage, "failed").observe(time.monotonic() - started)
            await asyncio.to_thread(self._fail_on_master, job.job_id, shard, str(exc))
        except Exception as exc:  # a failed shard is data: retried or reported
            self._running.pop(shard.shard_id, None)
            self.pool.forget(agent_id)
            reason = str(exc) if isinstance(exc, ShardTaskError) else f"{type(exc).__name__}: {exc}"
            self.metrics.shard_seconds.labels(shard.stage, "failed").observe(time.monotonic() - started)
            await asyncio.to_thread(self._shard_failed, shard, agent_id, reason.strip()[:2000])
        else:
            self._running.pop(shard.shard_id, None)
            seconds = time.monotonic() - started
            self.metrics.shard_seconds.labels(shard.stage, "succeeded").observe(seconds)
            log.info("shard %s (%s #%d) of job %s succeeded on %s in %.2f s", shard.shard_id, shard.stage, shard.index,
                     job.job_id, agent_id, seconds, extra=ids)
            try:
                kept = await asyncio.to_thread(self._shard_succeeded, shard, result_sha, result)
            except BlobWriteError as exc:  # the store's transaction was rolled back
                kept = False
                await asyncio.to_thread(self._fail_on_master, job.job_id, shard, str(exc))
            if not kept:
                await asyncio.to_thread(self._discard_unused, [result_sha, *(a["sha256"] for a in result["artifacts"])])
        self.wake()

    def _fail_on_master(self, job_id: str, shard: ShardRecord, reason: str) -> None:
        """A shard's work was done but the master could not keep it: the job fails with the reason."""
        job = self._job(job_id)
        if job.state in TERMINAL_JOB_STATES:
            return
        log.error("job %s fails: shard %s (%s #%d) could not be stored: %s", job_id, shard.shard_id, shard.stage,
                  shard.index, reason, extra={"job_id": job_id, "shard_id": shard.shard_id})
        with self.store.transaction():
            self._end_job(job, FAILED, f"shard {shard.stage}#{shard.index} could not be stored: {reason}")

    def _keep_result(self, result: dict) -> tuple[dict, str]:
        """Store a shard's files (once each, by content) and the rest of its result; the result as
        kept (files by hash, :func:`~rtgrid.protos.grid_contract.detach_files`) and its blob's hash.

        Raises
        ------
        BlobWriteError
            The master's disk took not all of it; what it took of this result is removed again.
        """
        written: list[str] = []

        def put(data: bytes) -> str:
            written.append(self.blobs.put_bytes(data))
            return written[-1]

        try:
            kept = detach_files(result, put)
            return kept, put(pack(kept))
        except BlobWriteError:
            self._discard_unused(written)
            raise

    def _discard_unused(self, shas: Sequence[str]) -> None:
        """Delete blobs no record refers to (a result the master did not keep)."""
        for sha in dict.fromkeys(shas):
            if not self.store.blob_in_use(sha):
                self.blobs.delete(sha)

    def _prepare_call(self, shard: ShardRecord, job: JobRecord):
        """The kind's last word on the shard (e.g. a reroute), then its call; ``None`` when the job
        has ended meanwhile (cancelled while the shard was placed)."""
        if self._job(job.job_id).state in TERMINAL_JOB_STATES:
            return None
        kind = get_kind(job.kind)
        ctx = JobContext(self.store, self.blobs, job, self._volumes)
        notice = kind.prepare_shard(ctx, shard)
        if notice:
            with self.store.transaction():
                self.store.update_shard(shard)
                self.events.publish(job.job_id, "log", job.state, stage=shard.stage, message=notice)
        return kind.shard_call(ctx, shard)

    def _shard_failed(self, shard: ShardRecord, agent_id: str, reason: str) -> None:
        job = self._job(shard.job_id)
        if job.state in TERMINAL_JOB_STATES:
            return
        log.warning("shard %s (%s #%d) failed on %s: %s", shard.shard_id, shard.stage, shard.index, agent_id, reason,
                    extra={"job_id": job.job_id, "shard_id": shard.shard_id, "agent_id": agent_id})
        with self.store.transaction():
            shard.error = reason
            if shard.attempts < self.config.max_shard_attempts:
                shard.state, shard.agent_id = QUEUED, ""
                self._avoid[shard.shard_id] = agent_id
                self.store.update_shard(shard)
                self.events.publish(
                    job.job_id, "log", job.state, stage=shard.stage,
                    message=f"shard {shard.stage}#{shard.index} failed on agent {agent_id} "
                    f"(attempt {shard.attempts} of {self.config.max_shard_attempts}); retrying: {reason}",
                )
            else:
                shard.state, shard.finished_ms = FAILED, now_ms()
                self.store.update_shard(shard)
                self._end_job(
                    job, FAILED,
                    f"shard {shard.stage}#{shard.index} failed {shard.attempts} times; last on agent {agent_id}: {reason}",
                )

    def _shard_succeeded(self, shard: ShardRecord, result_sha: str, result: dict) -> bool:
        """Record a shard's result (kept by :meth:`_keep_result`), publish its files, move the job on.

        Returns False when the job had already ended and the result was not recorded.
        """
        job = self._job(shard.job_id)
        if job.state in TERMINAL_JOB_STATES:
            return False
        kind = get_kind(job.kind)
        with self.store.transaction():
            shard.state, shard.result_sha256, shard.finished_ms, shard.error = SUCCEEDED, result_sha, now_ms(), ""
            self.store.update_shard(shard)
            stage_shards = self.store.list_shards(job.job_id, shard.stage)
            done = sum(s.state == SUCCEEDED for s in stage_shards)
            self.events.publish(
                job.job_id, "progress", job.state, stage=shard.stage, shards_done=done, shards_total=len(stage_shards),
                eta_s=self._eta(job.job_id, shard.stage, done, len(stage_shards)),
                message=f"{shard.stage} {done}/{len(stage_shards)}",
            )
            self._publish_artifacts(job, result)
            if done < len(stage_shards):
                return True
            stages = kind.stages_for(job.params)
            position = stages.index(shard.stage)
            failure = kind.outcome(JobContext(self.store, self.blobs, job, self._volumes), shard.stage)
            if failure or position + 1 == len(stages):
                self._end_job(job, FAILED if failure else SUCCEEDED, failure or "done")
            else:
                job.stage = stages[position + 1]
                self.store.update_job(job)
                total = self._plan_stage(job, job.stage)
                self.events.publish(job.job_id, "progress", job.state, stage=job.stage, shards_done=0,
                                    shards_total=total, message=f"stage {job.stage} started")
        return True

    def _eta(self, job_id: str, stage: str, done: int, total: int) -> float:
        started = self._stage_started.get((job_id, stage))
        if started is None or done == 0:
            return -1.0
        return (time.monotonic() - started) / done * (total - done)

    def _publish_artifacts(self, job: JobRecord, result: dict) -> None:
        for spec in result["artifacts"]:  # stored already, by _keep_result
            artifact = ArtifactRecord(new_id("art"), job.job_id, spec["name"], spec["kind"], spec["modality"],
                                      spec["sha256"], spec["size"])
            self.store.add_artifact(artifact)
            self.events.publish(job.job_id, "artifact", job.state, stage=job.stage,
                                message=f"{artifact.kind} ready: {artifact.name} ({artifact.artifact_id})")

    # cluster view
    def queue_depth(self) -> int:
        return self.store.count_shards(QUEUED)

    def jobs_by_state(self) -> dict[str, int]:
        return dict(Counter(j.state for j in self.store.list_jobs(limit=100_000)))

