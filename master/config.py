"""Master settings: one dataclass, passed explicitly (no global mutable settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .security.tls import TlsFiles

# Agents heartbeat every HEARTBEAT_INTERVAL_S; after HEARTBEAT_PATIENCE missed beats they are lost.
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_PATIENCE = 5
# A shard that fails is tried again on another agent, at most this many attempts in all.
MAX_SHARD_ATTEMPTS = 3
# Streaming sizes: chunks stay far below gRPC's 4 MiB default message limit.
MAX_CHUNK_BYTES = 1 << 20
DOWNLOAD_CHUNK_BYTES = 1 << 20
MAX_FILE_BYTES = 2 << 30
MAX_FILES_PER_CASE = 10_000
MAX_CASE_BYTES = 16 << 30
MAX_PRIORITY = 1000
# Queued plus running jobs one hospital may have at once; more is RESOURCE_EXHAUSTED.
MAX_ACTIVE_JOBS_PER_HOSPITAL = 16
# gRPC messages carry at most one chunk plus this much for the other fields.
MESSAGE_OVERHEAD_BYTES = 1 << 20


@dataclass(frozen=True)
class MasterConfig:
    """Where the master keeps its state and how it reaches Ray.

    Attributes
    ----------
    data_dir : Path
        Holds ``rtgrid.sqlite`` (the job store) and ``blobs/`` (content-addressed files).
    host, port : str, int
        gRPC listen address; ``port=0`` picks a free port.
    ray_address : str | None
        Join this Ray cluster; ``None`` starts a local Ray head in the master process.
    tls : TlsFiles | None
        Certificate, key and CA of the master; ``None`` is the insecure mode (plaintext, no
        authentication), refused unless ``host`` is a loopback address.
    internal_port : int
        The mutual-TLS port for agents and operators (``0`` picks a free port); unused when
        insecure (everything is served on ``port``).
    max_active_jobs_per_hospital : int
        Queued plus running jobs per hospital.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051
    ray_address: str | None = None
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    heartbeat_patience: int = HEARTBEAT_PATIENCE
    max_shard_attempts: int = MAX_SHARD_ATTEMPTS
    max_chunk_bytes: int = MAX_CHUNK_BYTES
    max_file_bytes: int = MAX_FILE_BYTES
    max_files_per_case: int = MAX_FILES_PER_CASE
    max_case_bytes: int = MAX_CASE_BYTES
    tls: TlsFiles | None = None
    internal_port: int = 50052
    max_active_jobs_per_hospital: int = MAX_ACTIVE_JOBS_PER_HOSPITAL

    @property
    def max_message_bytes(self) -> int:
        return self.max_chunk_bytes + MESSAGE_OVERHEAD_BYTES
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: a free port

    @property
    def db_path(self) -> Path:
        return self.data_dir / "rtgrid.sqlite"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
