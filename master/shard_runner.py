"""Where the scheduler's shards run: the Ray pool on a grid, or this process for its unit tests.

The scheduler decides which shard goes to which agent and when; a :class:`ShardRunner` only
reaches an agent and runs one shard call there. :class:`~rtgrid.master.ray_pool.RayPool` is the
runner of a real grid. :class:`InProcessRunner` runs shard tasks as Python callables in this
process's threads, with named agents that come and go, so the scheduling rules (stages, priorities,
placement, retries, drain, cancel) are tested in milliseconds without a Ray cluster.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rtgrid.protos.grid_contract import SharedInput

ShardTask = Callable[..., dict[str, Any]]


class ShardRunner(Protocol):
    """What the scheduler needs of the place where shards run."""

    def actor(self, agent_id: str) -> object | None:
        """The agent's worker (any handle), or ``None`` when the agent cannot take work now."""

    def forget(self, agent_id: str) -> None:
        """Drop a cached handle after the agent failed a shard (the next lookup asks again)."""

    async def call(self, agent_id: str, task: str, kwargs: dict[str, Any], resources: dict[str, float]) -> dict[str, Any]:
        """Run shard ``task`` with ``kwargs`` on the agent; its result, or the error it raised."""


class InProcessRunner:
    """A :class:`ShardRunner` that runs tasks in this process, one thread per shard.

    Parameters
    ----------
    tasks : mapping of str to callable
        Task name to ``task(agent_id, **kwargs) -> dict``: the agent id lets a task behave as a
        particular agent would (fail there, say). :class:`SharedInput` arguments arrive loaded.

    Attributes
    ----------
    calls : list of (str, str, dict)
        ``(agent_id, task, kwargs)`` of every call, in the order the scheduler made them.
    """

    def __init__(self, tasks: Mapping[str, ShardTask]) -> None:
        self.tasks = dict(tasks)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._agents: set[str] = set()
        self._lock = threading.Lock()

    def add_agent(self, agent_id: str) -> None:
        with self._lock:
            self._agents.add(agent_id)

    def remove_agent(self, agent_id: str) -> None:
        """The agent's worker is gone (its node died): calls to it fail, and it takes no work."""
        with self._lock:
            self._agents.discard(agent_id)

    def actor(self, agent_id: str) -> object | None:
        with self._lock:
            return agent_id if agent_id in self._agents else None

    def forget(self, agent_id: str) -> None:
        pass  # no cached handles

    async def call(self, agent_id: str, task: str, kwargs: dict[str, Any], resources: dict[str, float]) -> dict[str, Any]:
        if self.actor(agent_id) is None:
            raise RuntimeError(f"agent {agent_id} has no worker")
        if task not in self.tasks:
            raise KeyError(f"no task {task!r}; known: {sorted(self.tasks)}")
        kwargs = {k: v.load() if isinstance(v, SharedInput) else v for k, v in kwargs.items()}
        with self._lock:
            self.calls.append((agent_id, task, kwargs))
        return await asyncio.to_thread(self.tasks[task], agent_id, **kwargs)
