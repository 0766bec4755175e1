"""A real grid for end-to-end tests: a Ray head from Ray's cluster utilities, a master process
serving gRPC on 127.0.0.1 with SQLite and a blob folder, and two agent processes that each join
the Ray cluster as their own worker node.

The grid is the secure deployment: a private CA from `rtgrid certs`, TLS on the master's public
port, mutual TLS on its internal port (agents and the operator), and a hospital API token. Every
end-to-end test goes through that path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rtgrid.client.sdk import Client
from rtgrid.protos.grid_contract import RAY_NAMESPACE, agent_actor_name

START_TIMEOUT_S = 180.0


def rtgrid_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", *args]


@dataclass(frozen=True)
class Pki:
    """The PEM files `rtgrid certs` made for the test deployment."""

    ca: Path
    server_cert: Path
    server_key: Path
    agent_cert: Path
    agent_key: Path
    operator_cert: Path
    operator_key: Path

    def master_args(self) -> list[str]:
        return ["--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key), "--tls-ca", str(self.ca)]

    def agent_args(self) -> list[str]:
        return ["--ca", str(self.ca), "--cert", str(self.agent_cert), "--key", str(self.agent_key)]


def make_pki(folder: Path) -> Pki:
    made = subprocess.run(rtgrid_cmd("certs", "--out", str(folder), "--agent", "agent", "--operator", "operator"),
                          check=True, stdout=subprocess.PIPE, text=True)
    files = json.loads(made.stdout.strip().splitlines()[-1])
    return Pki(*(Path(files[k]) for k in ("ca", "server_cert", "server_key", "agent:agent:cert", "agent:agent:key",
                                          "operator:operator:cert", "operator:operator:key")))


HOSPITAL = "hospital-a"


@dataclass
class Grid:
    target: str  # the public port (hospitals: TLS + token)
    internal_target: str  # the internal port (agents and the operator: mutual TLS)
    data_dir: Path
    ray_address: str
    master: subprocess.Popen | None
    pki: Pki | None  # None: a plaintext master (--insecure, loopback), where every caller may do anything
    token: str = ""  # HOSPITAL's API token
    agents: list[subprocess.Popen] = field(default_factory=list)
    metrics: str = ""  # the master's /metrics HOST:PORT
    agent_metrics: dict[str, str] = field(default_factory=dict)  # agent name -> its /metrics HOST:PORT

    def client(self) -> Client:
        """The hospital (its token, on the public port) and the operator (its certificate, admin API)."""
        if self.pki is None:
            return Client(self.target)
        return Client(self.target, ca=self.pki.ca, token=self.token, cert=self.pki.operator_cert,
                      key=self.pki.operator_key, admin_target=self.internal_target)

    def hospital_client(self, token: str, target: str | None = None) -> Client:
        """A hospital with only its token."""
        return Client(target or self.target, ca=self.pki.ca, token=token)

    def env(self) -> dict[str, str]:
        """The environment the CLI reads to be this grid's hospital and operator."""
        return {"RTGRID_TARGET": self.target, "RTGRID_ADMIN_TARGET": self.internal_target, "RTGRID_CA": str(self.pki.ca),
                "RTGRID_TOKEN": self.token, "RTGRID_CERT": str(self.pki.operator_cert),
                "RTGRID_KEY": str(self.pki.operator_key)}

    def operator_client(self) -> Client:
        """The operator alone, on the internal port."""
        if self.pki is None:
            return Client(self.target)
        return Client(self.internal_target, ca=self.pki.ca, cert=self.pki.operator_cert, key=self.pki.operator_key)

    def start_master(self, port: str = "0", internal_port: str = "0") -> str:
        """Start this grid's master (again, e.g. after killing it, on the same store); returns its
        public target. Metrics on a free port; the log as JSON lines appended to data_dir/master.log."""
        self.master, ready = start_master_with(
            self.data_dir, self.ray_address, self.pki, port, internal_port,
            args=("--metrics-port", "0", "--log-format", "json"), log_path=self.data_dir / "master.log",
        )
        self.target, self.internal_target, self.metrics = ready["target"], ready["internal_target"], ready["metrics"]
        return self.target

    def start_agent(self, name: str, cpus: int = 1, tries: int = 3) -> subprocess.Popen:
        """Start an agent process and wait until its worker is up on its own Ray node.

        Ray gives a new node 30 s to register; on a loaded 2-core machine that is sometimes
        missed, and the agent then exits with that error. Such an agent is started again.
        """
        for attempt in range(1, tries + 1):
            metrics = f"127.0.0.1:{free_port()}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "rtgrid.agent", "--master", self.internal_target, "--name", name,
                 "--cpus", str(cpus), "--metrics-port", metrics.rpartition(":")[2],
                 *(self.pki.agent_args() if self.pki else ["--insecure"])],
                start_new_session=True,
                # Model packages are fetched into this grid's own cache, not the user's.
                env={**os.environ, "RTGRID_MODEL_CACHE": str(self.data_dir / "model-cache")},
            )
            self.agent_metrics[name] = metrics
            self.agents.append(proc)
            if self._wait_ready(name, proc):
                return proc
        raise RuntimeError(f"agent {name} did not start in {tries} tries")

    def _wait_ready(self, name: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.operator_client() as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                ready = [a for a in client.agents() if a.name == name and a.state == 1 and _actor_ready(a.agent_id)]
                if ready:
                    return True
                time.sleep(0.5)
        raise TimeoutError(f"agent {name} not ready after {timeout_s} s")


def _actor_ready(agent_id: str) -> bool:
    import ray

    try:
        ray.get_actor(agent_actor_name(agent_id), namespace=RAY_NAMESPACE)
        return True
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_master(data_dir: Path, ray_address: str, pki: Pki | None, port: str = "0", internal_port: str = "0",
                 *extra: str) -> tuple[subprocess.Popen, str, str]:
    """A master (TLS with ``pki``, else plaintext); returns the process, its public and internal target."""
    proc, ready = start_master_with(data_dir, ray_address, pki, port, internal_port, args=extra)
    return proc, ready["target"], ready["internal_target"]


def start_master_with(data_dir: Path, ray_address: str, pki: Pki | None, port: str = "0", internal_port: str = "0",
                      args: tuple[str, ...] = (), log_path: Path | None = None) -> tuple[subprocess.Popen, dict]:
    """A master process (TLS with ``pki``, else plaintext); returns it with its ready line (targets,
    and metrics when asked for). ``log_path``: its stderr (the log) goes to this file instead."""
    proc = subprocess.Popen(
        rtgrid_cmd("up", "--port", port, "--internal-port", internal_port, "--data", str(data_dir),
                   "--ray-address", ray_address, "--agents", "0", *(pki.master_args() if pki else ["--insecure"]),
                   *args),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        stderr=log_path.open("a") if log_path is not None else None,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            return proc, json.loads(line)
    proc.kill()
    raise RuntimeError("master did not start")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
    g = Grid("", "", data_dir, ray_cluster.address, None, pki)
    g.start_master()
    with g.operator_client() as operator:
        g.token = operator.add_hospital(HOSPITAL).token
    # One after the other: two raylets starting at once on 2 busy cores can miss Ray's 30 s start limit.
    g.start_agent("agent-a")
    g.start_agent("agent-b")
    yield g
    for proc in g.agents:
        stop_process(proc)
    stop_process(g.master)
