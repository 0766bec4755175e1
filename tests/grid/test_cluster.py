"""The grid comes up: two agents on two Ray nodes, health checking and reflection on the master."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rtgrid.protos.v1 import common_pb2


def test_agents_register_on_their_own_ray_nodes(grid):
    import ray

    with grid.client() as client:
        agents = client.agents()
        status = client.cluster_status()
    assert len([a for a in agents if a.state == common_pb2.AGENT_STATE_ALIVE]) == 2
    assert {a.name for a in agents} >= {"agent-a", "agent-b"}
    assert all(a.cpus == 1 and a.slots == 1 and a.engine_versions["numpy"] for a in agents)
    assert status.ray_address == grid.ray_address
    # Each agent advertises its own resource on its own node; every node is on loopback.
    nodes = [n for n in ray.nodes() if n["Alive"]]
    holders = {r: n["NodeID"] for n in nodes for r in n["Resources"] if r.startswith("rtgrid_") and not r.endswith("_home")}
    assert set(holders) == {a.ray_resource for a in agents}
    assert len(set(holders.values())) == 2
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)


def test_health_and_reflection(grid):
    with grpc.secure_channel(grid.target, grpc.ssl_channel_credentials(grid.pki.ca.read_bytes())) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rtgrid.v1.HospitalService", "rtgrid.v1.AgentService", "rtgrid.v1.AdminService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"rtgrid.v1.HospitalService", "rtgrid.v1.AdminService", "grpc.health.v1.Health"} <= names


def test_ray_and_grpc_listen_on_loopback_only(grid):
    """No process of the grid listens on anything but 127.0.0.1 (the tests send no traffic elsewhere)."""
    import subprocess

    pids = {str(grid.master.pid), *(str(p.pid) for p in grid.agents)}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ours = [line for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids) or "raylet" in line
            or "gcs_server" in line]
    assert ours, "found no listening sockets of the grid"
    for line in ours:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")), line
