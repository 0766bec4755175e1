"""The agent daemon on a compute box: register, join Ray as a worker node, heartbeat, drain.

Lifecycle: register with the master → start a Ray worker node (in-process, see ``ray_node``) that
advertises this agent's custom resource (one unit per slot) → create the agent's named actor on
it → heartbeat. On SIGTERM, or when the master says drain: tell the master, wait until none of
this agent's shards run, deregister, and stop the Ray node.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
import ray

from rtgrid.protos.grid_contract import RAY_NAMESPACE, agent_actor_name
from rtgrid.protos.v1 import agent_pb2, agent_pb2_grpc, common_pb2

from .channel import MasterLink
from .models import DEFAULT_CACHE
from .metrics import AgentMetrics
from .ray_node import start_worker_node, stop_node
from .worker import ShardWorker

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 10.0
RAY_NODE_START_TIMEOUT_S = 120.0
DRAIN_POLL_S = 0.5
DEFAULT_OBJECT_STORE_MB = 1024


@dataclass(frozen=True)
class AgentOptions:
    """What an agent offers. ``slots``: shards at once (default: its CPUs); ``model_cache``: where
    segmentation model packages fetched from the master are kept, by hash.

    ``ca``, ``cert`` and ``key`` are PEM files for mutual TLS with the master's internal port;
    without them the agent speaks plaintext (a master started with ``--insecure``).
    """

    master: str
    name: str = platform.node()
    cpus: int = os.cpu_count() or 1
    slots: int = 0
    node_ip: str = "127.0.0.1"
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB
    model_cache: str = str(DEFAULT_CACHE)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: a free port


def master_link(options: AgentOptions) -> MasterLink:
    """How this agent and its actors reach the master."""
    return MasterLink(options.master, options.ca, options.cert, options.key)


def home_resource(ray_resource: str) -> str:
    """A second resource of the agent's node that only its actor takes, so shards get every slot."""
    return f"{ray_resource}_home"


def _engine_versions() -> dict[str, str]:
    versions = {}
    for package in ("rtgrid", "numpy", "scipy", "pydicom", "SimpleITK", "torch", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gpus() -> list[common_pb2.GpuInfo]:
    """GPUs seen by torch (CUDA), if torch and a GPU are present."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [
        common_pb2.GpuInfo(name=torch.cuda.get_device_name(i), memory_bytes=torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    ]


class Agent:
    """One agent daemon. :meth:`run` blocks until the agent has drained."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self._channel = master_link(options).channel()
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._stop = threading.Event()
        self._ray_node = None
        self.agent_id = ""
        self.registration: agent_pb2.RegisterResponse | None = None
        self.metrics = AgentMetrics()

    def request_drain(self, *_: object) -> None:
        """SIGTERM handler: finish running shards, take no new ones, then exit."""
        self._stop.set()

    def register(self) -> agent_pb2.RegisterResponse:
        gpus = _gpus()
        response = self._stub.Register(
            agent_pb2.RegisterRequest(
                name=self.options.name, hostname=platform.node(), cpus=self.options.cpus, ram_bytes=_ram_bytes(),
                gpus=gpus, engine_versions=_engine_versions(), slots=self.options.slots or self.options.cpus,
                agent_id=self.agent_id,
            ),
            timeout=RPC_TIMEOUT_S,
        )
        self.agent_id = response.agent_id
        self.registration = response
        self.metrics.registrations.inc()
        return response

    def _start_ray_node(self, reg: agent_pb2.RegisterResponse) -> None:
        slots = self.options.slots or self.options.cpus
        self._ray_node = start_worker_node(
            reg.ray_address, self.options.node_ip, self.options.cpus, len(_gpus()),
            {reg.ray_resource: slots, home_resource(reg.ray_resource): 1},
            self.options.object_store_mb,
        )
        log.info("ray worker node %s joined %s", self._ray_node.node_id, reg.ray_address)

    def _create_worker(self, reg: agent_pb2.RegisterResponse):
        ray.init(address=reg.ray_address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
        deadline = time.monotonic() + RAY_NODE_START_TIMEOUT_S
        while ray.cluster_resources().get(reg.ray_resource, 0) <= 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray worker node for {self.agent_id} did not join {reg.ray_address}")
            time.sleep(0.2)
        actor = (
            ray.remote(ShardWorker)
            .options(
                name=agent_actor_name(self.agent_id), namespace=RAY_NAMESPACE, lifetime="detached",
                resources={home_resource(reg.ray_resource): 1}, num_cpus=0, max_concurrency=1000, get_if_exists=True,
                max_restarts=0,
            )
            .remote(self.agent_id, reg.ray_resource, master_link(self.options), self.options.model_cache, self.options.cpus,
                    len(_gpus()))
        )
        ray.get(actor.ping.remote(), timeout=RAY_NODE_START_TIMEOUT_S)
        return actor

    def run(self) -> int:
        reg = self.register()
        log.info("registered as %s; joining ray at %s", self.agent_id, reg.ray_address, extra={"agent_id": self.agent_id})
        if self.options.metrics_port is not None:
            port = self.metrics.serve(self.options.metrics_host, self.options.metrics_port)
            log.info("metrics at http://%s:%d/metrics", self.options.metrics_host, port, extra={"agent_id": self.agent_id})
        # Heartbeats start at once: joining Ray can take longer than the master's patience.
        beats = threading.Thread(target=self._heartbeat_until_drained, args=(reg,), name="heartbeat", daemon=True)
        beats.start()
        actor = None
        try:
            self._start_ray_node(reg)
            actor = self._create_worker(reg)
            log.info("agent %s ready (%s)", self.agent_id, reg.ray_resource)
            while beats.is_alive():  # short joins keep the main thread free for signal handlers
                beats.join(DRAIN_POLL_S)
        finally:
            self._stop.set()
            beats.join(timeout=RPC_TIMEOUT_S)
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:  # the node may already be gone
                    pass
            ray.shutdown()
            self._stop_ray_node()
            self._channel.close()
        return 0

    def _heartbeat_until_drained(self, reg: agent_pb2.RegisterResponse) -> None:
        """Beat until drained. Leaves early when the master forgot this agent, or when it is
        unreachable for longer than its patience while this agent is stopping."""
        draining = False
        unreachable_since: float | None = None
        patience_s = reg.heartbeat_interval_s * reg.heartbeat_patience
        while True:
            try:
                if self._stop.is_set() and not draining:
                    self._stub.Drain(agent_pb2.AgentDrainRequest(agent_id=self.agent_id), timeout=RPC_TIMEOUT_S)
                    draining = True
                    log.info("draining: finishing running shards")
                beat = self._stub.Heartbeat(agent_pb2.HeartbeatRequest(agent_id=self.agent_id), timeout=RPC_TIMEOUT_S)
                unreachable_since = None
                self.metrics.beat(beat.running_shards)
            except grpc.RpcError as exc:
                self.metrics.heartbeat_failures.inc()
                unreachable_since = unreachable_since or time.monotonic()
                if self._stop.is_set() and time.monotonic() - unreachable_since > patience_s:
                    log.warning("master unreachable while stopping; leaving")
                    return
                log.warning("heartbeat failed (%s); master unreachable, retrying", exc.code())
                time.sleep(reg.heartbeat_interval_s)
                continue
            if not beat.known:
                log.error("the master does not know agent %s (its store was reset?); leaving", self.agent_id)
                return
            if beat.drain and not draining:
                draining = True
                log.info("the master asked this agent to drain")
            if draining and beat.running_shards == 0:
                self._stub.Deregister(agent_pb2.DeregisterRequest(agent_id=self.agent_id), timeout=RPC_TIMEOUT_S)
                log.info("drained; leaving")
                return
            if draining:
                time.sleep(DRAIN_POLL_S)
            else:
                self._stop.wait(reg.heartbeat_interval_s)

    def _stop_ray_node(self) -> None:
        if self._ray_node is not None:
            stop_node(self._ray_node)
            self._ray_node = None
