"""Prometheus metrics of an agent daemon: heartbeats sent and failed, when the last one got
through, and the shards the master says run here; served at ``/metrics`` (127.0.0.1 by default).

Shard latency is measured where shards are placed, on the master (``rtgrid_shard_duration_seconds``).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class AgentMetrics:
    """The agent's registry and the metrics its daemon updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registrations = Counter("rtgrid_agent_registrations", "Registrations with the master.",
                                     registry=self.registry)
        self.heartbeats = Counter("rtgrid_agent_heartbeats_sent", "Heartbeats the master answered.",
                                  registry=self.registry)
        self.heartbeat_failures = Counter("rtgrid_agent_heartbeat_failures", "Heartbeats that got no answer.",
                                          registry=self.registry)
        self.last_heartbeat = Gauge("rtgrid_agent_last_heartbeat_timestamp_seconds",
                                    "Unix time of the last answered heartbeat (s).", registry=self.registry)
        self.running_shards = Gauge("rtgrid_agent_running_shards", "Shards running here, as the master counts them.",
                                    registry=self.registry)

    def beat(self, running_shards: int) -> None:
        """Count an answered heartbeat."""
        self.heartbeats.inc()
        self.last_heartbeat.set(time.time())
        self.running_shards.set(running_shards)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (``port=0`` picks a free one) from a daemon thread,
        which ends with the agent's process; returns the bound port."""
        return start_http_server(port, addr=host, registry=self.registry)[0].server_port
