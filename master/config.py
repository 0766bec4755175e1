"""Master settings: one dataclass, passed explicitly (no global mutable settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
MAX_PRIORITY = 1000


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
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: a free port

    @property
    def db_path(self) -> Path:
        return self.data_dir / "rtgrid.sqlite"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
