"""The secure grid for benchmarks: ``bench.grid.BenchGrid`` with TLS, as ``rtgrid up`` runs it.

A private CA from ``rtgrid certs``; the master serves TLS on its public port (hospitals, each with
its own API token) and mutual TLS on its internal port (agents and the operator); agents join with
their certificate. The same deployment as the secure test fixtures (``tests/grid/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from bench.grid import TERMINAL, BenchGrid, say
from rtgrid.client.local_grid import Pki
from rtgrid.client.sdk import Client


class SecureLocalGrid(BenchGrid):
    """:class:`~bench.grid.BenchGrid` with TLS and many hospitals, each with its own API token.

    ``target`` is the public port (hospitals: TLS + token), ``internal_target`` the internal one
    (agents and the operator: mutual TLS).
    """

    def __init__(self, data_dir: Path, log_dir: Path, head_object_store_mb: int, pki: Pki) -> None:
        super().__init__(data_dir, log_dir, head_object_store_mb, pki)
        self.tokens: dict[str, str] = {}  # hospital name -> its API token

    def tenant_client(self, name: str) -> Client:
        """Hospital ``name`` (made by :meth:`add_hospitals`) with only its token, on the public port."""
        return self.hospital_client(self.tokens[name])

    def add_hospitals(self, names: list[str]) -> None:
        """Make each hospital a tenant with its own API token (the admin RPC ``AddHospital``)."""
        for name in names:
            self.tokens[name] = self.add_hospital(name)

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
