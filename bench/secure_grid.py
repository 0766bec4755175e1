"""The secure grid for benchmarks: ``bench.grid.LocalGrid`` with TLS, as ``rtgrid up`` runs it.

A private CA from ``rtgrid certs``; the master serves TLS on its public port (hospitals, each with
its own API token) and mutual TLS on its internal port (agents and the operator); agents join with
their certificate. The same deployment as the secure test fixtures (``tests/grid/conftest.py``).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.grid import START_TIMEOUT_S, TERMINAL, BenchError, LocalGrid, _rtgrid_cmd, say
from rtgrid.client.sdk import Client


@dataclass(frozen=True)
class Pki:
    """The PEM files ``rtgrid certs`` made: the CA, the master's, one agent's, one operator's."""

    ca: Path
    server_cert: Path
    server_key: Path
    agent_cert: Path
    agent_key: Path
    operator_cert: Path
    operator_key: Path


def make_pki(folder: Path) -> Pki:
    """Run ``rtgrid certs`` into ``folder`` (an agent ``agent`` and an operator ``operator``)."""
    made = subprocess.run(_rtgrid_cmd("certs", "--out", str(folder), "--agent", "agent", "--operator", "operator"),
                          check=True, stdout=subprocess.PIPE, text=True, timeout=START_TIMEOUT_S)
    files = json.loads(made.stdout.strip().splitlines()[-1])
    return Pki(*(Path(files[k]) for k in ("ca", "server_cert", "server_key", "agent:agent:cert", "agent:agent:key",
                                          "operator:operator:cert", "operator:operator:key")))


class SecureLocalGrid(LocalGrid):
    """A Ray head in this process, a TLS master process and mutual-TLS agent processes.

    ``target`` is the public port (hospitals: TLS + token), ``internal_target`` the internal one
    (agents and the operator: mutual TLS).
    """

    def __init__(self, data_dir: Path, log_dir: Path, head_object_store_mb: int, pki: Pki) -> None:
        super().__init__(data_dir, log_dir, head_object_store_mb)
        self.pki = pki
        self.internal_target = ""
        self.tokens: dict[str, str] = {}  # hospital name -> its API token

    def start_master(self, ray_address: str) -> str:
        """Start ``rtgrid up`` with TLS on free ports; returns the public target once it is ready."""
        self.master = subprocess.Popen(
            _rtgrid_cmd("up", "--port", "0", "--internal-port", "0", "--data", str(self.data_dir),
                        "--ray-address", ray_address, "--agents", "0", "--tls-cert", str(self.pki.server_cert),
                        "--tls-key", str(self.pki.server_key), "--tls-ca", str(self.pki.ca)),
            stdout=subprocess.PIPE, stderr=self._log("master"), text=True, start_new_session=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.master.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if not line:
                break
            if line.startswith("{"):
                ready = json.loads(line)
                self.target, self.internal_target = ready["target"], ready["internal_target"]
                return self.target
        raise BenchError(f"the master printed no ready line within {START_TIMEOUT_S:.0f} s; "
                         f"see {self.log_dir / 'master.log'}")

    def start_agent(self, name: str, cpus: int) -> None:
        """An agent process on the internal port, with the agent certificate."""
        self.agents[name] = subprocess.Popen(
            [sys.executable, "-m", "rtgrid.agent", "--master", self.internal_target, "--name", name, "--cpus",
             str(cpus), "--ca", str(self.pki.ca), "--cert", str(self.pki.agent_cert), "--key", str(self.pki.agent_key)],
            stdout=self._log(name), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def operator_client(self) -> Client:
        """The operator alone (its certificate), on the internal port: the admin API."""
        return Client(self.internal_target, ca=self.pki.ca, cert=self.pki.operator_cert, key=self.pki.operator_key)

    def hospital_client(self, name: str) -> Client:
        """Hospital ``name`` (made by :meth:`add_hospitals`) with only its token, on the public port."""
        return Client(self.target, ca=self.pki.ca, token=self.tokens[name])

    def add_hospitals(self, names: list[str]) -> None:
        """Make each hospital a tenant with its own API token (the admin RPC ``AddHospital``)."""
        with self.operator_client() as operator:
            for name in names:
                self.tokens[name] = operator.add_hospital(name).token

    def cancel_jobs(self, jobs: dict[str, list[str]]) -> None:
        """Cancel jobs (hospital name -> its job ids) through each hospital's own token, so the
        agents drain; finished jobs are left as they are."""
        if not self.target or self.master is None or self.master.poll() is not None:
            return
        for name, job_ids in jobs.items():
            try:
                with Client(self.target, attempts=1, ca=self.pki.ca, token=self.tokens[name]) as client:
                    for job_id in job_ids:
                        if client.job(job_id).state not in TERMINAL:
                            client.cancel(job_id)
            except grpc.RpcError as exc:
                say(f"  could not cancel the leftover jobs of {name}: {exc.code()}")
