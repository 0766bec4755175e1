"""A grid on this machine, as child processes: the one launcher of the demo, the benchmarks and the
end-to-end test fixtures.

``rtgrid up`` is the master (with SQLite or PostgreSQL, a blob folder and, unless given a Ray
address, its own Ray head); agents are ``python -m rtgrid.agent`` processes that join its Ray
cluster as worker nodes. Everything listens on 127.0.0.1. The deployment is the secure one when a
:class:`Pki` is given (a private CA from ``rtgrid certs``: TLS on the public port, mutual TLS for
agents and the operator on the internal port, hospital API tokens), else plaintext on loopback.

It imports neither the master nor Ray: it starts processes and talks to them through the SDK.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .sdk import Client

START_TIMEOUT_S = 180.0
AGENT_STATE_ALIVE = 1  # common_pb2.AGENT_STATE_ALIVE


def rtgrid_cmd(*args: str) -> list[str]:
    """The ``rtgrid`` command line of this interpreter (no console script needed)."""
    return [sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", *args]


@dataclass(frozen=True)
class Pki:
    """The PEM files ``rtgrid certs`` made for a deployment: the CA, the master's, one agent's and
    one operator's certificate and key."""

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

    def local_agent_args(self) -> list[str]:
        """The ``rtgrid up`` options of the agents it starts itself (``--agents N``)."""
        return ["--agent-cert", str(self.agent_cert), "--agent-key", str(self.agent_key)]


def make_pki(folder: Path, agent: str = "agent", operator: str = "operator") -> Pki:
    """A private CA with the master's, an agent's and an operator's certificates, in ``folder``."""
    made = subprocess.run(rtgrid_cmd("certs", "--out", str(folder), "--agent", agent, "--operator", operator),
                          check=True, stdout=subprocess.PIPE, text=True)
    files = json.loads(made.stdout.strip().splitlines()[-1])
    return Pki(*(Path(files[k]) for k in ("ca", "server_cert", "server_key", f"agent:{agent}:cert",
                                          f"agent:{agent}:key", f"operator:{operator}:cert", f"operator:{operator}:key")))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    """Signal a process (SIGTERM: agents drain, the master stops cleanly) and wait; kill its whole
    session when it does not end in ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_master_with(data_dir: Path, ray_address: str, pki: Pki | None, port: str = "0", internal_port: str = "0",
                      args: Sequence[str] = (), log_path: Path | None = None, agents: int = 0,
                      timeout_s: float = START_TIMEOUT_S) -> tuple[subprocess.Popen, dict]:
    """Start ``rtgrid up`` and wait for its ready line.

    Parameters
    ----------
    data_dir : Path
        The master's store and blobs.
    ray_address : str
        The Ray cluster to join; ``""``: the master starts its own head.
    pki : Pki or None
        TLS as described by it, or plaintext on loopback (``--insecure``).
    port, internal_port : str
        Ports (``"0"``: free ones).
    args : sequence of str
        More ``rtgrid up`` options.
    log_path : Path, optional
        Where its stderr (the log) is appended; by default it goes to this process's stderr.
    agents : int
        Agents ``rtgrid up`` starts itself (with the PKI's agent certificate).

    Returns
    -------
    (subprocess.Popen, dict)
        The process (in its own session) and its ready line: ``target``, ``internal_target`` and
        ``metrics`` when asked for.

    Raises
    ------
    RuntimeError
        It exited or printed no ready line within ``timeout_s``.
    """
    tls = (pki.master_args() + (pki.local_agent_args() if agents else [])) if pki else ["--insecure"]
    proc = subprocess.Popen(
        rtgrid_cmd("up", "--port", port, "--internal-port", internal_port, "--data", str(data_dir),
                   *(["--ray-address", ray_address] if ray_address else []), "--agents", str(agents), *tls, *args),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        stderr=log_path.open("a") if log_path is not None else None,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            return proc, json.loads(line)
    proc.kill()
    raise RuntimeError(f"rtgrid up printed no ready line within {timeout_s:.0f} s"
                       + (f"; see {log_path}" if log_path is not None else ""))


@dataclass
class LocalGrid:
    """A master and its agents on this machine.

    Attributes
    ----------
    data_dir : Path
        The master's data; agents keep their model cache under it too.
    ray_address : str
        The Ray cluster the master and agents join (``""``: the master's own head).
    pki : Pki or None
        The secure deployment's files; None for plaintext on loopback, where anyone may do anything.
    actor_ready : callable, optional
        ``agent_id -> bool``: whether an agent's shard worker is up on Ray (a caller with Ray
        checks it; without it an agent counts as ready once the master lists it alive).
    """

    data_dir: Path
    ray_address: str = ""
    pki: Pki | None = None
    actor_ready: Callable[[str], bool] | None = None
    target: str = ""  # the public port (hospitals: TLS + token)
    internal_target: str = ""  # the internal port (agents and the operator: mutual TLS)
    master: subprocess.Popen | None = None
    token: str = ""  # the first hospital's API token (:meth:`add_hospital`)
    agents: list[subprocess.Popen] = field(default_factory=list)
    metrics: str = ""  # the master's /metrics HOST:PORT, when asked for
    agent_metrics: dict[str, str] = field(default_factory=dict)  # agent name -> its /metrics HOST:PORT

    # --- callers -------------------------------------------------------------------------------

    def client(self) -> Client:
        """The hospital (its token, on the public port) and the operator (its certificate, admin API)."""
        if self.pki is None:
            return Client(self.target)
        return Client(self.target, ca=self.pki.ca, token=self.token, cert=self.pki.operator_cert,
                      key=self.pki.operator_key, admin_target=self.internal_target)

    def hospital_client(self, token: str, target: str | None = None) -> Client:
        """A hospital with only its token."""
        return Client(target or self.target, ca=self.pki.ca if self.pki else None, token=token)

    def operator_client(self) -> Client:
        """The operator alone, on the internal port."""
        if self.pki is None:
            return Client(self.target)
        return Client(self.internal_target, ca=self.pki.ca, cert=self.pki.operator_cert, key=self.pki.operator_key)

    def env(self) -> dict[str, str]:
        """The environment the CLI reads to be this grid's hospital and operator."""
        if self.pki is None:
            return {"RTGRID_TARGET": self.target}
        return {"RTGRID_TARGET": self.target, "RTGRID_ADMIN_TARGET": self.internal_target, "RTGRID_CA": str(self.pki.ca),
                "RTGRID_TOKEN": self.token, "RTGRID_CERT": str(self.pki.operator_cert),
                "RTGRID_KEY": str(self.pki.operator_key)}

    def add_hospital(self, name: str) -> str:
        """Issue a hospital's API token (the operator's call); the first becomes :attr:`token`."""
        with self.operator_client() as operator:
            token = operator.add_hospital(name).token
        self.token = self.token or token
        return token

    # --- processes -----------------------------------------------------------------------------

    def start_master(self, port: str = "0", internal_port: str = "0", args: Sequence[str] = (),
                     log_path: Path | None = None, agents: int = 0) -> str:
        """Start (or start again, on the same store) the master; returns its public target."""
        self.master, ready = start_master_with(self.data_dir, self.ray_address, self.pki, port, internal_port,
                                               args=args, log_path=log_path, agents=agents)
        self.target, self.internal_target = ready["target"], ready["internal_target"]
        self.metrics = ready.get("metrics") or ""
        return self.target

    def start_agent(self, name: str, cpus: int = 1, tries: int = 3, args: Sequence[str] = (),
                    log: IO | None = None, timeout_s: float = START_TIMEOUT_S) -> subprocess.Popen:
        """Start an agent process (metrics on a free port) and wait until it is ready.

        Ray gives a new node 30 s to register; on a loaded 2-core machine that is sometimes
        missed, and the agent then exits with that error. Such an agent is started again.
        """
        for _ in range(tries):
            metrics = f"127.0.0.1:{free_port()}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "rtgrid.agent", "--master", self.internal_target or self.target, "--name", name,
                 "--cpus", str(cpus), "--metrics-port", metrics.rpartition(":")[2],
                 *(self.pki.agent_args() if self.pki else ["--insecure"]), *args],
                start_new_session=True, stdout=log, stderr=subprocess.STDOUT if log is not None else None,
                # Model packages are fetched into this grid's own cache, not the user's.
                env={**os.environ, "RTGRID_MODEL_CACHE": str(self.data_dir / "model-cache")},
            )
            self.agent_metrics[name] = metrics
            self.agents.append(proc)
            if self.wait_agent(name, proc, timeout_s):
                return proc
        raise RuntimeError(f"agent {name} did not start in {tries} tries")

    def wait_agent(self, name: str | None = None, proc: subprocess.Popen | None = None,
                   timeout_s: float = START_TIMEOUT_S) -> bool:
        """Until agent ``name`` (None: any agent) is alive, and its worker up when
        :attr:`actor_ready` can tell; False when its process ``proc`` exited first.

        Raises
        ------
        TimeoutError
            Not ready after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self.operator_client() as client:
            while time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    return False
                if any(name in (None, a.name) and a.state == AGENT_STATE_ALIVE
                       and (self.actor_ready is None or self.actor_ready(a.agent_id)) for a in client.agents()):
                    return True
                time.sleep(0.5)
        raise TimeoutError(f"agent {name} not ready after {timeout_s} s")

    def stop(self) -> None:
        """Stop the agents (they drain), then the master."""
        for proc in self.agents:
            stop_process(proc)
        if self.master is not None:
            stop_process(self.master)
