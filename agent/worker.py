"""The agent's presence on Ray: one named actor per agent that runs shard tasks on its own node.

The master calls ``run(task, [kwargs_ref], resources)`` on ``rtgrid-agent-<id>``. The actor starts
the shard as a Ray task pinned to this agent's node by its custom resource (one unit per running
shard, so the node's resource count is the agent's slot count) and returns the task's result.
Keeping the actor thin lets shards run in separate worker processes in parallel, while the actor
is the place where warm state (loaded models) lives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from .executors import execute


@ray.remote(max_retries=0)
def run_shard(task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return execute(task, kwargs)


class ShardWorker:
    """Created by the agent daemon as a detached, named actor on the agent's node."""

    def __init__(self, agent_id: str, ray_resource: str) -> None:
        self.agent_id = agent_id
        self.ray_resource = ray_resource

    def ping(self) -> str:
        return self.agent_id

    async def run(self, task: str, kwargs_ref: list, resources: dict[str, float]) -> dict[str, Any]:
        """Run one shard on this node; ``kwargs_ref`` is ``[ObjectRef]`` so the actor never copies it."""
        options = {
            "resources": {self.ray_resource: 1},
            "num_cpus": 0,
            "num_gpus": resources.get("gpus", 0.0),
            "memory": int(resources.get("memory_mb", 0)) * 1024 * 1024 or None,
        }
        ref = run_shard.options(**{k: v for k, v in options.items() if v is not None}).remote(task, kwargs_ref[0])
        try:
            return await ref
        except asyncio.CancelledError:  # the master cancelled the job: free the slot now
            ray.cancel(ref, force=True)
            raise
