"""The agent registry: register, heartbeat, drain. Plain functions over the store."""

from __future__ import annotations

from .errors import InvalidArgument, NotFound, PermissionDenied
from .ids import new_id, now_ms
from .store.base import Store
from .store.records import ALIVE, DRAINED, DRAINING, LOST, AgentRecord


def ray_resource_name(agent_id: str) -> str:
    """The custom Ray resource an agent's node advertises; work pinned to it lands there only."""
    return f"rtgrid_{agent_id.replace('-', '_')}"


def register(store: Store, *, agent_id: str, name: str, hostname: str, cpus: int, ram_bytes: int, gpus: list[dict],
             engine_versions: dict[str, str], slots: int, identity: str = "") -> AgentRecord:
    """Add an agent, or bring back a known one (same id) after a restart of either side.

    ``identity`` is the certificate's CN; a known agent comes back only under the same one.
    """
    if cpus <= 0:
        raise InvalidArgument(f"agent {name!r}: cpus must be positive, got {cpus}")
    if slots < 0:
        raise InvalidArgument(f"agent {name!r}: slots must not be negative, got {slots}")
    if agent_id:
        known = store.get_agent(agent_id)
        if known is None:
            raise NotFound(f"no agent {agent_id!r} to re-register; register without an id")
        check_identity(known, identity)
    agent_id = agent_id or new_id("agent")
    agent = AgentRecord(agent_id, name or agent_id, hostname, cpus, ram_bytes, gpus, engine_versions,
                        slots or cpus, ALIVE, now_ms(), ray_resource_name(agent_id), identity)
    store.upsert_agent(agent)
    return agent


def check_identity(agent: AgentRecord, identity: str) -> AgentRecord:
    """An agent acts only for itself: the certificate it registered with must be the caller's."""
    if agent.identity and agent.identity != identity:
        raise PermissionDenied(f"agent {agent.agent_id} registered with another certificate than {identity!r}")
    return agent


def get(store: Store, agent_id: str) -> AgentRecord:
    agent = store.get_agent(agent_id)
    if agent is None:
        raise NotFound(f"no agent {agent_id!r}")
    return agent


def heartbeat(store: Store, agent_id: str) -> AgentRecord | None:
    """Record a beat; a lost agent that beats again is alive. ``None``: unknown agent."""
    agent = store.get_agent(agent_id)
    if agent is None:
        return None
    agent.last_heartbeat_ms = now_ms()
    if agent.state == LOST:
        agent.state = ALIVE
    store.upsert_agent(agent)
    return agent


def drain(store: Store, agent_id: str) -> AgentRecord:
    """Take no new shards for this agent; running ones finish."""
    agent = get(store, agent_id)
    if agent.state != DRAINED:
        agent.state = DRAINING
        store.upsert_agent(agent)
    return agent


def deregister(store: Store, agent_id: str) -> AgentRecord:
    agent = get(store, agent_id)
    agent.state = DRAINED
    store.upsert_agent(agent)
    return agent
