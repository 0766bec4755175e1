"""Prometheus metrics of the master: jobs by state, queue depth, shard latency, agent heartbeats,
bytes in and out, served over HTTP at ``/metrics`` (127.0.0.1 unless configured otherwise).

Gauges that describe the store (jobs by state, queue depth, agents) are read from it at scrape
time, so they are right after a restart; counters and the latency histogram count what this
process saw. Each master owns its registry (several masters may live in one test process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .store.records import QUEUED, RUNNING

if TYPE_CHECKING:
    from .intake import UploadReaper
    from .scheduler import Scheduler
    from .store.base import Store

# Shard wall times run from a second (a contour slab) to many minutes (a dose influence block).
SHARD_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class MasterMetrics:
    """The counters and histograms the master's code updates; one per master."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_submitted = Counter("rtgrid_jobs_submitted", "Jobs created, by kind.", ["kind"],
                                      registry=self.registry)
        self.jobs_finished = Counter("rtgrid_jobs_finished", "Jobs that reached a final state.", ["kind", "state"],
                                     registry=self.registry)
        self.shard_seconds = Histogram(
            "rtgrid_shard_duration_seconds", "Wall time of one shard attempt on an agent (s).", ["stage", "outcome"],
            buckets=SHARD_SECONDS_BUCKETS, registry=self.registry,
        )
        self.heartbeats = Counter("rtgrid_agent_heartbeats", "Heartbeats received, by agent.", ["agent_id"],
                                  registry=self.registry)
        self.bytes_received = Counter("rtgrid_bytes_received", "Payload bytes received, by what carried them.",
                                      ["what"], registry=self.registry)
        self.bytes_sent = Counter("rtgrid_bytes_sent", "Payload bytes sent, by what carried them.", ["what"],
                                  registry=self.registry)
        self._server = None

    def watch(self, scheduler: "Scheduler") -> None:
        """Add the gauges read from the store and the scheduler at scrape time."""
        self.registry.register(_StateCollector(scheduler))

    def watch_uploads(self, store: "Store", reaper: "UploadReaper") -> None:
        """Add the open cases and uploads (read at scrape time) and the expired uploads."""
        self.registry.register(_UploadCollector(store, reaper))

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (``port=0`` picks a free one); returns the bound port."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StateCollector(Collector):
    def __init__(self, scheduler: "Scheduler") -> None:
        self._scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []  # read at scrape time; nothing to describe ahead

    def collect(self) -> Iterator[Metric]:
        scheduler, store = self._scheduler, self._scheduler.store
        jobs = GaugeMetricFamily("rtgrid_jobs", "Jobs in the store, by state.", labels=["state"])
        by_state = scheduler.jobs_by_state()
        for state in sorted(set(by_state) | {QUEUED, RUNNING}):
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("rtgrid_queue_depth", "Shards ready and waiting for an agent.",
                                value=scheduler.queue_depth())
        yield GaugeMetricFamily("rtgrid_shards_running", "Shards running on agents now.",
                                value=scheduler.running_count())
        agents = store.list_agents()
        states = GaugeMetricFamily("rtgrid_agents", "Agents known to the master, by state.", labels=["state"])
        for state in sorted({a.state for a in agents}):
            states.add_metric([state], sum(a.state == state for a in agents))
        yield states
        seen = GaugeMetricFamily("rtgrid_agent_last_heartbeat_seconds",
                                 "Seconds since each agent's last heartbeat.", labels=["agent_id", "name", "state"])
        now_s = time.time()
        for agent in agents:
            seen.add_metric([agent.agent_id, agent.name, agent.state], max(0.0, now_s - agent.last_heartbeat_ms / 1000))
        yield seen


class _UploadCollector(Collector):
    def __init__(self, store: "Store", reaper: "UploadReaper") -> None:
        self._store, self._reaper = store, reaper

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("rtgrid_cases_open", "Uncommitted cases, all hospitals.",
                                value=self._store.count_open_cases())
        yield GaugeMetricFamily("rtgrid_uploads_open", "Started, unfinished uploads, all hospitals.",
                                value=self._store.count_open_uploads())
        yield CounterMetricFamily("rtgrid_uploads_expired", "Abandoned uploads removed by expiry since the start.",
                                  value=self._reaper.expired)
