"""The agent's presence on Ray: one named actor per agent that runs shard tasks on its own node.

The master calls ``run(task, [kwargs_ref], resources)`` on ``rtgrid-agent-<id>``. The actor starts
the shard as a Ray task pinned to this agent's node by its custom resource (one unit per running
shard, so the node's resource count is the agent's slot count) and returns the task's result.
Keeping the actor thin lets shards run in separate worker processes in parallel, while the actor
is the place where warm state (loaded models) lives: a shard whose resources name a model
(``resources["model"]``, a package hash) runs on that model's warm actor on this node
(:class:`rtgrid.agent.models.ModelActor`), created on first use and kept for later jobs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rtgrid.engines.parallel import ENGINE_THREADS_ENV
from rtgrid.protos.grid_contract import RAY_NAMESPACE, model_actor_name

from .channel import MasterLink
from .executors import execute
from .models import ModelActor

# A model actor's share of one GPU: several models can stay warm on one card.
MODEL_GPU_SHARE = 0.25


def resolve_shared(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments with each shared input (an object-store reference, see
    :class:`rtgrid.protos.grid_contract.SharedInput`) replaced by its value."""
    return {name: ray.get(value) if isinstance(value, ray.ObjectRef) else value for name, value in kwargs.items()}


def shard_threads(cpus: int, running: int) -> int:
    """Engine threads for a shard that starts while ``running`` shards (itself included) run on
    an agent of ``cpus`` CPUs: the CPUs shared out, at least one each.

    Without the share, every shard took all the agent's CPUs, so an agent with as many slots as
    CPUs ran CPUs squared threads when full (4096 on a 64-core box).
    """
    return max(1, cpus // max(1, running))


@ray.remote(max_retries=0)
def run_shard(task: str, kwargs: dict[str, Any], threads: int = 0) -> dict[str, Any]:
    if threads:
        # This worker process runs one task at a time: the setting holds for this shard only.
        os.environ[ENGINE_THREADS_ENV] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return execute(task, resolve_shared(kwargs))


class ShardWorker:
    """Created by the agent daemon as a detached, named actor on the agent's node.

    Parameters
    ----------
    agent_id, ray_resource : str
        The agent and the custom resource of its node.
    master : MasterLink
        The master's agent API and how to reach it (model actors fetch packages there).
    model_cache : str
        Folder of this agent's model package cache.
    cpus, gpus : int
        CPUs and GPUs of this node: model actors use the CPUs' threads, and a share of one GPU
        when there is one (else they run on the CPU).
    """

    def __init__(self, agent_id: str, ray_resource: str, master: MasterLink | None = None, model_cache: str = "", cpus: int = 1,
                 gpus: int = 0) -> None:
        self.agent_id = agent_id
        self.ray_resource = ray_resource
        self.master = master
        self.model_cache = model_cache
        self.cpus = cpus
        self.gpus = gpus
        self._models: dict[str, Any] = {}
        self._running = 0  # shards started by run() and not yet finished

    def ping(self) -> str:
        return self.agent_id

    def _model_actor(self, sha256: str):
        """This node's warm actor for the model (created, and loaded, on first use)."""
        if sha256 not in self._models:
            node = ray.get_runtime_context().get_node_id()
            self._models[sha256] = (
                ray.remote(ModelActor)
                .options(
                    name=model_actor_name(self.agent_id, sha256), namespace=RAY_NAMESPACE, get_if_exists=True,
                    num_cpus=0, num_gpus=MODEL_GPU_SHARE if self.gpus else 0, max_restarts=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                )
                .remote(self.master, sha256, self.model_cache, self.cpus)
            )
        return self._models[sha256]

    async def run(self, task: str, kwargs_ref: list, resources: dict[str, Any]) -> dict[str, Any]:
        """Run one shard on this node; ``kwargs_ref`` is ``[ObjectRef]`` so the actor never copies it."""
        if resources.get("model"):
            return await self._run_on_model(task, kwargs_ref[0], resources["model"])
        options = {
            "resources": {self.ray_resource: 1},
            "num_cpus": 0,
            "num_gpus": resources.get("gpus", 0.0),
            "memory": int(resources.get("memory_mb", 0)) * 1024 * 1024 or None,
        }
        self._running += 1
        try:
            threads = shard_threads(self.cpus, self._running)
            ref = run_shard.options(**{k: v for k, v in options.items() if v is not None}).remote(task, kwargs_ref[0], threads)
            try:
                return await ref
            except asyncio.CancelledError:  # the master cancelled the job: free the slot now
                ray.cancel(ref, force=True)
                raise
        finally:
            self._running -= 1

    async def _run_on_model(self, task: str, kwargs_ref, sha256: str) -> dict[str, Any]:
        actor = self._model_actor(sha256)
        ref = actor.run.remote(task, kwargs_ref)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except ray.exceptions.RayActorError:
            # The model could not be loaded (or its actor died): the next shard builds a new one.
            self._models.pop(sha256, None)
            raise
