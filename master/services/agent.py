"""Agent API servicer.

Store and blob calls run in threads (the caller's identity goes along in the context): every agent
beats every few seconds, and a commit waiting on the disk must not stall the master's event loop.
"""

from __future__ import annotations

import asyncio

from rtgrid.protos.v1 import agent_pb2, agent_pb2_grpc, common_pb2

from .. import agents, models
from ..config import DOWNLOAD_CHUNK_BYTES, MasterConfig
from ..convert import agent_to_proto, gpus_from_proto
from ..scheduler import Scheduler
from ..security.auth import current_principal
from ..store.base import Store
from ..store.records import DRAINING
from .common import stream, unary


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: Store, scheduler: Scheduler, config: MasterConfig, ray_address: str) -> None:
        self.store = store
        self.scheduler = scheduler
        self.config = config
        self.ray_address = ray_address

    @unary
    async def Register(self, request, context):
        agent = await asyncio.to_thread(lambda: agents.register(
            self.store, agent_id=request.agent_id, name=request.name, hostname=request.hostname, cpus=request.cpus,
            ram_bytes=request.ram_bytes, gpus=gpus_from_proto(request.gpus),
            engine_versions=dict(request.engine_versions), slots=request.slots, identity=current_principal().name,
        ))
        self.scheduler.wake()
        return agent_pb2.RegisterResponse(
            agent_id=agent.agent_id, ray_address=self.ray_address, ray_resource=agent.ray_resource,
            heartbeat_interval_s=self.config.heartbeat_interval_s, heartbeat_patience=self.config.heartbeat_patience,
        )

    def _own(self, agent_id: str) -> None:
        """Heartbeat, drain and deregister only the agent this certificate registered."""
        agent = self.store.get_agent(agent_id)
        if agent is not None:
            agents.check_identity(agent, current_principal().name)

    def _owned(self, action, agent_id: str):
        """``action(store, agent_id)`` for the agent this certificate registered."""
        self._own(agent_id)
        return action(self.store, agent_id)

    @unary
    async def Heartbeat(self, request, context):
        agent = await asyncio.to_thread(self._owned, agents.heartbeat, request.agent_id)
        if agent is None:
            return agent_pb2.HeartbeatResponse(known=False)
        self.scheduler.metrics.heartbeats.labels(agent.agent_id).inc()
        self.scheduler.wake()
        return agent_pb2.HeartbeatResponse(
            drain=agent.state == DRAINING, running_shards=self.scheduler.running_on(agent.agent_id), known=True
        )

    @unary
    async def Drain(self, request, context):
        agent = await asyncio.to_thread(self._owned, agents.drain, request.agent_id)
        return agent_to_proto(agent, self.scheduler.running_on(agent.agent_id))

    @unary
    async def Deregister(self, request, context):
        agent = await asyncio.to_thread(self._owned, agents.deregister, request.agent_id)
        return agent_to_proto(agent, self.scheduler.running_on(agent.agent_id))

    @stream
    async def FetchModel(self, request, context):
        model = await asyncio.to_thread(models.get, self.store, request.sha256)
        yield common_pb2.ModelPackageChunk(sha256=model.sha256, card_json=model.card_json.encode("utf-8"),
                                           weights_bytes=model.weights_bytes)
        chunks = self.scheduler.blobs.iter_chunks(model.weights_sha256, 0, DOWNLOAD_CHUNK_BYTES)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield common_pb2.ModelPackageChunk(data=chunk[1])
