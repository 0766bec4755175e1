"""A real grid for end-to-end tests: a Ray head from Ray's cluster utilities, a master process
serving gRPC on 127.0.0.1 with SQLite and a blob folder, and two agent processes that each join
the Ray cluster as their own worker node.

The grid is the secure deployment: a private CA from `rtgrid certs`, TLS on the master's public
port, mutual TLS on its internal port (agents and the operator), and a hospital API token. Every
end-to-end test goes through that path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rtgrid.client.local_grid import (
    LocalGrid,
    Pki,
    free_port,
    make_pki,
    rtgrid_cmd,
    start_master_with,
    stop_process,
)
from rtgrid.protos.grid_contract import RAY_NAMESPACE, agent_actor_name

__all__ = ["HOSPITAL", "Grid", "Pki", "free_port", "make_pki", "rtgrid_cmd", "start_master", "start_master_with",
           "stop_process"]

HOSPITAL = "hospital-a"


def actor_ready(agent_id: str) -> bool:
    """Whether the agent's shard worker is up on the Ray cluster (this process is a Ray driver)."""
    import ray

    try:
        ray.get_actor(agent_actor_name(agent_id), namespace=RAY_NAMESPACE)
        return True
    except ValueError:
        return False


@dataclass
class Grid(LocalGrid):
    """The tests' :class:`LocalGrid`: agents count as ready once their worker is up on Ray; the
    master logs JSON lines into data_dir/master.log and serves /metrics on a free port."""

    def __post_init__(self) -> None:
        self.actor_ready = self.actor_ready or actor_ready

    def start_master(self, port: str = "0", internal_port: str = "0", args=(), log_path: Path | None = None,
                     agents: int = 0) -> str:
        return super().start_master(port, internal_port, ("--metrics-port", "0", "--log-format", "json", *args),
                                    log_path or self.data_dir / "master.log", agents)


def start_master(data_dir: Path, ray_address: str, pki: Pki | None, port: str = "0", internal_port: str = "0",
                 *extra: str):
    """A master (TLS with ``pki``, else plaintext); returns the process, its public and internal target."""
    proc, ready = start_master_with(data_dir, ray_address, pki, port, internal_port, args=extra)
    return proc, ready["target"], ready["internal_target"]


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray head (no CPUs of its own) from Ray's cluster utilities; the test process is a driver."""
    import ray
    from ray.cluster_utils import Cluster

    # The master's driver lives on the head: shard inputs go through its object store (Ray's
    # cluster utilities default to 150 MiB, which spills a big CT to disk).
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
                                      "object_store_memory": 1 << 30})
    ray.init(address=cluster.address, namespace="rtgrid-tests", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def grid(ray_cluster, pki, tmp_path_factory) -> Grid:
    """Master + two agents (two Ray worker nodes) on a Ray head, all on 127.0.0.1, with TLS."""
    data_dir = tmp_path_factory.mktemp("grid")
    g = Grid(data_dir, ray_cluster.address, pki)
    g.start_master()
    g.add_hospital(HOSPITAL)
    # One after the other: two raylets starting at once on 2 busy cores can miss Ray's 30 s start limit.
    g.start_agent("agent-a")
    g.start_agent("agent-b")
    yield g
    g.stop()
