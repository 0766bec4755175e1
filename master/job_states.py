"""The job state machine: every transition of a job and its shards, in the store and nowhere else.

Submit (idempotency key, case checks, the kind's parameter check), the claim of a queued shard by
an agent, a shard's success (its result recorded, its files published, the job moved to its next
stage or ended) or failure (retried or the job failed), cancel, priority, and a failure of the
master itself. Each transition is one store transaction and announces itself on the event bus
after it is written, so a restarted master resumes where it stopped.

It knows nothing of agents, Ray or the event loop: the :class:`~rtgrid.master.scheduler.Scheduler`
decides *where* and *when* shards run and calls these transitions (from threads); unit tests drive
them directly on a real store.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from rtgrid.protos.grid_contract import detach_files

from .blobs import BlobStore, BlobWriteError
from .codec import pack
from .config import MAX_PRIORITY, MasterConfig
from .errors import FailedPrecondition, InvalidArgument, NotFound
from .events import EventBus
from .ids import new_id, now_ms
from .jobs.base import JobContext, ShardCall, VolumeCache
from .jobs.registry import get_kind
from .metrics import MasterMetrics
from .store.base import Store
from .store.records import (
    CANCELLED,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_JOB_STATES,
    ArtifactRecord,
    JobRecord,
    ShardRecord,
)

log = logging.getLogger(__name__)


def check_priority(priority: int) -> None:
    """Refuse a priority outside ``[-MAX_PRIORITY, MAX_PRIORITY]`` (``InvalidArgument``)."""
    if abs(priority) > MAX_PRIORITY:
        raise InvalidArgument(f"priority {priority} is outside [-{MAX_PRIORITY}, {MAX_PRIORITY}]")


class JobStates:
    """Job and shard transitions on a store; thread-safe as far as the store's transactions are.

    Parameters
    ----------
    store, blobs : Store, BlobStore
        Where records and result blobs are kept.
    events : EventBus
        Where each transition is announced (after it is written).
    config : MasterConfig
        ``max_shard_attempts``.
    metrics : MasterMetrics
        Job counters.
    """

    def __init__(self, store: Store, blobs: BlobStore, events: EventBus, config: MasterConfig,
                 metrics: MasterMetrics) -> None:
        self.store = store
        self.blobs = blobs
        self.events = events
        self.config = config
        self.metrics = metrics
        self.volumes = VolumeCache(blobs)
        # (job id, stage) -> when the stage started, for its ETA; only live jobs' current stages.
        self._stage_started: dict[tuple[str, str], float] = {}

    def get(self, job_id: str) -> JobRecord:
        """The job, or ``NotFound``."""
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def context(self, job: JobRecord) -> JobContext:
        """Read access to the job's inputs and finished stages (CT volumes cached across jobs)."""
        return JobContext(self.store, self.blobs, job, self.volumes)

    # --- jobs --------------------------------------------------------------------------------

    def submit(self, case_id: str, kind_name: str, params: dict[str, str], priority: int, key: str) -> JobRecord:
        """Create a job with its first stage's shards queued (or return the one made earlier with
        the same idempotency key)."""
        if key:
            existing = self.store.find_job_by_key(key)
            if existing is not None:
                return existing
        case = self.store.get_case(case_id)
        if case is None:
            raise NotFound(f"no case {case_id!r}")
        if not case.committed:
            raise FailedPrecondition(f"case {case_id} is not committed; commit it after uploading")
        check_priority(priority)
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
        return job

    def cancel(self, job_id: str) -> tuple[JobRecord, bool]:
        """End the job as cancelled; the job and whether this call ended it (False: it had ended)."""
        job = self.get(job_id)
        if job.state in TERMINAL_JOB_STATES:
            return job, False
        with self.store.transaction():
            self._end(job, CANCELLED, "cancelled by request")
        return job, True

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """Change a live job's priority (``FailedPrecondition`` once it has ended)."""
        job = self.get(job_id)
        check_priority(priority)
        if job.state in TERMINAL_JOB_STATES:
            raise FailedPrecondition(f"job {job_id} is {job.state}; its priority no longer matters")
        job.priority = priority
        with self.store.transaction():
            self.store.update_job(job)
            self.events.publish(job_id, "log", job.state, stage=job.stage, message=f"priority set to {priority}")
        return job

    def fail_on_master(self, job_id: str, shard: ShardRecord, reason: str) -> None:
        """A shard's work was done but the master could not keep it: the job fails with the reason."""
        job = self.get(job_id)
        if job.state in TERMINAL_JOB_STATES:
            return
        log.error("job %s fails: shard %s (%s #%d) could not be stored: %s", job_id, shard.shard_id, shard.stage,
                  shard.index, reason, extra={"job_id": job_id, "shard_id": shard.shard_id})
        with self.store.transaction():
            self._end(job, FAILED, f"shard {shard.stage}#{shard.index} could not be stored: {reason}")

    def _end(self, job: JobRecord, state: str, message: str) -> None:
        self._stage_started.pop((job.job_id, job.stage), None)  # earlier stages' went as each finished
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

    def _plan_stage(self, job: JobRecord, stage: str) -> int:
        plan = get_kind(job.kind).plan_stage(self.context(job), stage)
        self.store.add_shards(
            [ShardRecord(new_id("shard"), job.job_id, stage, i, QUEUED, target=t) for i, t in enumerate(plan.targets)]
        )
        self._stage_started[(job.job_id, stage)] = time.monotonic()
        return len(plan.targets)

    # --- shards ------------------------------------------------------------------------------

    def claim(self, shard: ShardRecord, agent_id: str) -> JobRecord | None:
        """Mark the shard running on the agent (and its job running, once); ``None`` when it is no
        longer queued. Checked inside the transaction: a cancel may have ended its job since the
        shard was read."""
        with self.store.transaction():
            job = self.get(shard.job_id)
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

    def shard_call(self, shard: ShardRecord, job: JobRecord) -> ShardCall | None:
        """The kind's last word on the shard (e.g. a reroute), then its call; ``None`` when the job
        has ended meanwhile (cancelled while the shard was placed)."""
        if self.get(job.job_id).state in TERMINAL_JOB_STATES:
            return None
        kind = get_kind(job.kind)
        ctx = self.context(job)
        notice = kind.prepare_shard(ctx, shard)
        if notice:
            with self.store.transaction():
                self.store.update_shard(shard)
                self.events.publish(job.job_id, "log", job.state, stage=shard.stage, message=notice)
        return kind.shard_call(ctx, shard)

    def shard_failed(self, shard: ShardRecord, agent_id: str, reason: str) -> bool:
        """Queue the shard again, or fail its job after ``max_shard_attempts``; True when it was
        queued again (the caller may then keep it away from ``agent_id``)."""
        job = self.get(shard.job_id)
        if job.state in TERMINAL_JOB_STATES:
            return False
        log.warning("shard %s (%s #%d) failed on %s: %s", shard.shard_id, shard.stage, shard.index, agent_id, reason,
                    extra={"job_id": job.job_id, "shard_id": shard.shard_id, "agent_id": agent_id})
        with self.store.transaction():
            shard.error = reason
            if shard.attempts < self.config.max_shard_attempts:
                shard.state, shard.agent_id = QUEUED, ""
                self.store.update_shard(shard)
                self.events.publish(
                    job.job_id, "log", job.state, stage=shard.stage,
                    message=f"shard {shard.stage}#{shard.index} failed on agent {agent_id} "
                    f"(attempt {shard.attempts} of {self.config.max_shard_attempts}); retrying: {reason}",
                )
                return True
            shard.state, shard.finished_ms = FAILED, now_ms()
            self.store.update_shard(shard)
            self._end(
                job, FAILED,
                f"shard {shard.stage}#{shard.index} failed {shard.attempts} times; last on agent {agent_id}: {reason}",
            )
        return False

    def keep_result(self, result: dict) -> tuple[dict, str]:
        """Store a shard's files (once each, by content) and the rest of its result, outside any
        transaction; the result as kept (files by hash,
        :func:`~rtgrid.protos.grid_contract.detach_files`) and its blob's hash.

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
            self.discard_unused(written)
            raise

    def discard_unused(self, shas: Sequence[str]) -> None:
        """Delete blobs no record refers to (a result the master did not keep)."""
        for sha in dict.fromkeys(shas):
            if not self.store.blob_in_use(sha):
                self.blobs.delete(sha)

    def shard_succeeded(self, shard: ShardRecord, result_sha: str, result: dict) -> bool:
        """Record a shard's result (kept by :meth:`keep_result`), publish its files, move the job on.

        Returns False when the job had already ended and the result was not recorded.
        """
        job = self.get(shard.job_id)
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
            failure = kind.outcome(self.context(job), shard.stage)
            if failure or position + 1 == len(stages):
                self._end(job, FAILED if failure else SUCCEEDED, failure or "done")
            else:
                self._stage_started.pop((job.job_id, shard.stage), None)
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
        for spec in result["artifacts"]:  # stored already, by keep_result
            artifact = ArtifactRecord(new_id("art"), job.job_id, spec["name"], spec["kind"], spec["modality"],
                                      spec["sha256"], spec["size"])
            self.store.add_artifact(artifact)
            self.events.publish(job.job_id, "artifact", job.state, stage=job.stage,
                                message=f"{artifact.kind} ready: {artifact.name} ({artifact.artifact_id})")

    # --- views -------------------------------------------------------------------------------

    def shard_progress(self, job_id: str) -> tuple[int, int]:
        """(shards succeeded, shards) of the job so far."""
        shards = self.store.list_shards(job_id)
        return sum(s.state == SUCCEEDED for s in shards), len(shards)

    def queue_depth(self) -> int:
        """Shards waiting for an agent."""
        return self.store.count_shards(QUEUED)

    def jobs_by_state(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return dict(Counter(j.state for j in self.store.list_jobs(limit=100_000)))
