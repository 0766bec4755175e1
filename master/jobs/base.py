"""What a job kind is: an ordered list of stages, each split into shards that run on agents.

A kind turns a job into shard calls (the name of an executor on the agents and its arguments) and
validates its parameters. The scheduler does the rest: ordering, placement, retries, events,
storing shard results and publishing artifacts. A shard result is a dict; the files it publishes
(``rtgrid.protos.grid_contract``) become downloadable artifacts of the job, stored once; a later
stage reads one with :meth:`JobContext.stage_file`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.protos.grid_contract import ShardArgs, SharedInput, file_key, stored_file_sha256

from ..blobs import BlobStore
from ..codec import series_from_bytes, unpack, volume_from_bytes
from ..errors import FailedPrecondition
from ..store.base import Store
from ..store.records import PLANNING_SERIES, SUCCEEDED, JobRecord, SeriesRecord, ShardRecord


@dataclass(frozen=True)
class ShardResources:
    """What one shard needs on an agent (mapped to Ray resources).

    ``model``: the package hash of a segmentation model the shard runs on; the agent serves such
    a shard from that model's warm actor. Whether a shard wants a GPU agent is the job kind's
    word (:meth:`JobKind.wants_gpu`), so the scheduler can place it without building its call.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int = 1024
    model: str = ""


@dataclass(frozen=True)
class ShardCall:
    """One unit of work: ``task`` names an executor on the agents (``rtgrid.agent.executors``).

    Job kinds build it from the contract's typed call (:meth:`of`); the scheduler and its shard
    runner see the task name and keyword arguments.
    """

    task: str
    kwargs: dict[str, Any]
    resources: ShardResources = field(default_factory=ShardResources)

    @classmethod
    def of(cls, call: ShardArgs, resources: ShardResources | None = None) -> "ShardCall":
        """The shard call of a typed call (``rtgrid.protos.grid_contract``: ``ContourSlabCall`` ...)."""
        return cls(call.task, call.kwargs(), resources or ShardResources())


@dataclass(frozen=True)
class StagePlan:
    """How a stage splits: one shard per entry of ``targets`` (``""`` where a shard needs none)."""

    targets: tuple[str, ...]

    @classmethod
    def count(cls, n: int) -> "StagePlan":
        return cls(("",) * n)


class VolumeCache:
    """The last few decoded CT volumes, so the shards of one job do not decode it again each."""

    def __init__(self, blobs: BlobStore, size: int = 2) -> None:
        self._blobs = blobs
        self._size = size
        self._volumes: OrderedDict[str, Volume] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> Volume:
        with self._lock:
            if sha256 in self._volumes:
                self._volumes.move_to_end(sha256)
                return self._volumes[sha256]
        volume = volume_from_bytes(self._blobs.read_bytes(sha256))
        with self._lock:
            self._volumes[sha256] = volume
            while len(self._volumes) > self._size:
                self._volumes.popitem(last=False)
        return volume


class lazy_attribute:
    """``functools.cached_property`` without its lock.

    On Python 3.11 that lock is one per property for *all* instances, held while the value is
    computed. Computing ``series_record`` takes the store's lock, and ``Scheduler.submit`` reads
    it inside a store transaction: two threads (a submit, a shard being prepared) then wait on
    each other for ever. Contexts are not shared between threads, so no lock is needed.
    """

    def __init__(self, func) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)
        return value


class JobContext:
    """Read access to a job's inputs and earlier stage results, loaded lazily and once."""

    def __init__(self, store: Store, blobs: BlobStore, job: JobRecord, volumes: "VolumeCache | None" = None) -> None:
        self.store = store
        self.blobs = blobs
        self.job = job
        self._volumes = volumes or VolumeCache(blobs, size=1)

    @lazy_attribute
    def series_record(self) -> SeriesRecord:
        """The case's planning CT (never one of the MR/PET series registered to it)."""
        series = [s for s in self.store.list_series(self.job.case_id) if s.role == PLANNING_SERIES]
        if not series:
            raise FailedPrecondition(f"case {self.job.case_id} has no committed planning CT series")
        return series[0]

    @lazy_attribute
    def volume(self) -> Volume:
        return self._volumes.get(self.series_record.volume_sha256)

    @lazy_attribute
    def series(self) -> ImageSeries:
        return series_from_bytes(self.blobs.read_bytes(self.series_record.meta_sha256), self.volume)

    def stage_results(self, stage: str) -> list[dict[str, Any]]:
        """Results of a finished stage, in shard order."""
        shards = self.store.list_shards(self.job.job_id, stage)
        if any(s.state != SUCCEEDED for s in shards):
            raise FailedPrecondition(f"stage {stage} of job {self.job.job_id} is not finished")
        return [unpack(self.blobs.read_bytes(s.result_sha256)) for s in shards]

    def shared_result(self, stage: str, index: int = 0) -> SharedInput:
        """The result of shard ``index`` of a finished stage, as an input many shards share (it is
        read from the blob store and put into Ray's object store once, not once per shard)."""
        shards = self.store.list_shards(self.job.job_id, stage)
        if index >= len(shards) or shards[index].state != SUCCEEDED:
            raise FailedPrecondition(f"stage {stage} of job {self.job.job_id} has no finished shard {index}")
        sha256 = shards[index].result_sha256
        return SharedInput(f"result:{sha256}", lambda: unpack(self.blobs.read_bytes(sha256)))

    def shared_series(self) -> SharedInput:
        """:attr:`series` as an input many shards share (put into Ray's object store once)."""
        record = self.series_record
        return SharedInput(f"series:{record.volume_sha256}:{record.meta_sha256}", lambda: self.series)

    def stage_file(self, stage: str, name: str, index: int = 0) -> bytes:
        """The bytes of file ``name`` that shard ``index`` of a finished stage published."""
        result = self.stage_results(stage)[index]
        if file_key(name) in result:  # a result stored by a master from before files were kept once
            return result[file_key(name)]
        return self.blobs.read_bytes(stored_file_sha256(result, name))


class JobKind(ABC):
    """A kind of job: its name, its stages, and how each stage splits into shard calls."""

    name: str
    stages: tuple[str, ...]

    def stages_for(self, params: dict[str, str]) -> tuple[str, ...]:
        """The stages of one job (some kinds add stages depending on the parameters)."""
        return self.stages

    def outcome(self, ctx: "JobContext", stage: str) -> str:
        """After each stage: ``""`` to go on (or succeed after the last), else why the job fails
        now (its later stages do not run)."""
        return ""

    def wants_gpu(self, job: JobRecord, shard: ShardRecord) -> bool:
        """True when the shard runs faster on a GPU (decided from the records alone, cheaply:
        the scheduler asks for every ready shard)."""
        return False

    def prepare_shard(self, ctx: "JobContext", shard: ShardRecord) -> str:
        """Called before a shard runs; may change ``shard.target``. Returns a notice for the job's
        watchers (``""``: nothing to say)."""
        return ""

    @abstractmethod
    def validate(self, params: dict[str, str], store: Store, blobs: BlobStore, case_id: str) -> dict[str, str]:
        """Check and normalise the parameters; raise ``InvalidArgument`` naming the bad one."""

    @abstractmethod
    def plan_stage(self, ctx: JobContext, stage: str) -> StagePlan:
        """How ``stage`` splits into shards (decided when the stage starts)."""

    @abstractmethod
    def shard_call(self, ctx: JobContext, shard: ShardRecord) -> ShardCall: ...
