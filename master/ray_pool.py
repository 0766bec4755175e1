"""The master's side of Ray: start or join the cluster, and call the agents' shard workers.

Each agent runs one named, detached Ray actor (:func:`~rtgrid.protos.grid_contract.agent_actor_name`
in :data:`~rtgrid.protos.grid_contract.RAY_NAMESPACE`) on its own node; the master calls it by
name, so the master never imports agent code.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from rtgrid.protos.grid_contract import RAY_NAMESPACE, SharedInput, agent_actor_name

log = logging.getLogger(__name__)

SHARED_INPUTS_KEPT = 8
"""Shared inputs (plan set-ups, CT series) kept in the object store for later shards: a few jobs' worth."""
PUT_THREADS = 2
"""Threads that serialize shard inputs into the object store: off the event loop (a CT slab took
100 ms there, stalling every RPC) and out of the default pool (where uploads decode whole series)."""


class ShardTaskError(RuntimeError):
    """The shard's own code raised on the agent; the message is that error, without Ray's wrapping."""


def _root_cause(exc: BaseException) -> str:
    """``Type: message`` of the innermost error of a (nested) Ray task error."""
    while isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return f"{type(exc).__name__}: {exc}"


class RayPool:
    """Connects to Ray and sends shard calls to named agent actors.

    Parameters
    ----------
    address : str | None
        An existing cluster (``host:port`` of its GCS); ``None`` starts a local head in-process
        with no CPUs of its own, so all work lands on agents.
    """

    def __init__(self, address: str | None, shared_inputs: int = SHARED_INPUTS_KEPT) -> None:
        self._actors: dict[str, Any] = {}
        self._shared: OrderedDict[str, ray.ObjectRef] = OrderedDict()
        self._shared_limit = shared_inputs
        self._shared_lock = threading.Lock()
        self._put_pool = ThreadPoolExecutor(PUT_THREADS, thread_name_prefix="rtgrid-ray-put")
        if ray.is_initialized():
            self.address = ray.get_runtime_context().gcs_address
            return
        if address is None:
            # "local": always a new head, never a cluster some earlier process left recorded on disk.
            ray.init(
                address="local", namespace=RAY_NAMESPACE, num_cpus=0, include_dashboard=False, _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING, log_to_driver=False,
            )
        else:
            ray.init(address=address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
        self.address = ray.get_runtime_context().gcs_address
        log.info("ray cluster at %s", self.address)

    def actor(self, agent_id: str):
        """The agent's worker actor, or ``None`` when it is not (or not yet, or no longer) there."""
        if agent_id not in self._actors:
            try:
                self._actors[agent_id] = ray.get_actor(agent_actor_name(agent_id), namespace=RAY_NAMESPACE)
            except ValueError:
                return None
        return self._actors[agent_id]

    def forget(self, agent_id: str) -> None:
        """Drop a cached actor handle (after its agent failed), so the next lookup asks Ray again."""
        self._actors.pop(agent_id, None)

    async def call(self, agent_id: str, task: str, kwargs: dict[str, Any], resources: dict[str, float]) -> dict[str, Any]:
        """Run ``task`` on the agent and return its result dict.

        The arguments go into the object store once; the agent's actor passes the reference on to
        the task that runs the shard, so they are not copied through the actor.

        Raises
        ------
        RuntimeError
            When the agent has no worker actor.
        ray.exceptions.RayError
            When the task or the agent's node fails.
        """
        actor = self.actor(agent_id)
        if actor is None:
            raise RuntimeError(f"agent {agent_id} has no worker on the Ray cluster")
        loop = asyncio.get_running_loop()
        kwargs = {name: await loop.run_in_executor(self._put_pool, self._shared_ref, value)
                  if isinstance(value, SharedInput) else value for name, value in kwargs.items()}
        kwargs_ref = await loop.run_in_executor(self._put_pool, ray.put, kwargs)
        ref = actor.run.remote(task, [kwargs_ref], resources)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # the agent's actor stops the shard's task in turn
            raise
        except ray.exceptions.RayTaskError as exc:
            raise ShardTaskError(_root_cause(exc)) from None

    def _shared_ref(self, shared: SharedInput) -> ray.ObjectRef:
        """The object-store reference of a shared input, put there on first use; the last few stay."""
        with self._shared_lock:
            if shared.key in self._shared:
                self._shared.move_to_end(shared.key)
                return self._shared[shared.key]
        ref = ray.put(shared.load())
        with self._shared_lock:
            ref = self._shared.setdefault(shared.key, ref)
            self._shared.move_to_end(shared.key)
            while len(self._shared) > self._shared_limit:
                self._shared.popitem(last=False)  # Ray frees it once no running shard holds it
        return ref

    def shutdown(self) -> None:
        self._put_pool.shutdown(wait=False, cancel_futures=True)
        if ray.is_initialized():
            ray.shutdown()
