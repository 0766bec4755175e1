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
# Uncommitted cases and unfinished uploads one hospital may hold at once; more is RESOURCE_EXHAUSTED.
MAX_OPEN_CASES_PER_HOSPITAL = 100
MAX_OPEN_UPLOADS_PER_HOSPITAL = 1000
# An upload stream that sends no chunk for this long is closed (the client resumes);
# an upload with no chunk for UPLOAD_EXPIRY_S is removed with its partial file.
UPLOAD_IDLE_S = 60.0
UPLOAD_EXPIRY_S = 24 * 3600.0
# A connection with no call for this long is closed (GOAWAY); the server pings every KEEPALIVE_S
# and drops a connection that does not answer within KEEPALIVE_TIMEOUT_S; a connection must finish
# its TLS handshake within HANDSHAKE_TIMEOUT_S (or the idle timeout, if shorter).
IDLE_TIMEOUT_S = 300.0
KEEPALIVE_S = 60.0
KEEPALIVE_TIMEOUT_S = 20.0
HANDSHAKE_TIMEOUT_S = 20.0
# Authentication failures per address or token prefix and minute before they are rate-limited.
MAX_AUTH_FAILURES_PER_MINUTE = 30


@dataclass(frozen=True)
class MasterConfig:
    """Where the master keeps its state and how it reaches Ray.

    Attributes
    ----------
    data_dir : Path
        Holds ``rtgrid.sqlite`` (the job store, unless ``store`` names another) and ``blobs/``
        (content-addressed files).
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
    max_open_cases_per_hospital, max_open_uploads_per_hospital : int
        Uncommitted cases and unfinished uploads per hospital.
    upload_idle_s, upload_expiry_s : float
        Longest silence (s) of an upload stream, and of an upload before it is removed.
    idle_timeout_s, keepalive_s : float
        Connections with no call for ``idle_timeout_s`` are closed; keepalive pings every ``keepalive_s``.
    max_auth_failures_per_minute : int
        Authentication failures per address or token prefix and minute before they are rate-limited.
    store : str
        The job store: a SQLite file path or a ``postgresql://USER@HOST:PORT/DB`` URL; empty:
        ``data_dir/rtgrid.sqlite``.
    require_approval : bool
        Plans (RTPLAN) leave the grid only once approved: a download, and so a gateway's push to
        a device, of an unapproved plan is FAILED_PRECONDITION (``rtgrid.master.approval``).
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
    max_open_cases_per_hospital: int = MAX_OPEN_CASES_PER_HOSPITAL
    max_open_uploads_per_hospital: int = MAX_OPEN_UPLOADS_PER_HOSPITAL
    upload_idle_s: float = UPLOAD_IDLE_S
    upload_expiry_s: float = UPLOAD_EXPIRY_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    keepalive_s: float = KEEPALIVE_S
    max_auth_failures_per_minute: int = MAX_AUTH_FAILURES_PER_MINUTE

    @property
    def max_message_bytes(self) -> int:
        return self.max_chunk_bytes + MESSAGE_OVERHEAD_BYTES

    def grpc_options(self) -> list[tuple[str, int]]:
        """Server options: message limits, keepalive, and the reaping of idle connections."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(min(HANDSHAKE_TIMEOUT_S, self.idle_timeout_s) * 1000)),
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients may ping (e.g. a long watch behind a NAT) but not flood: at most every 10 s.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: a free port
    store: str = ""
    require_approval: bool = False

    @property
    def store_location(self) -> str:
        """Where the job store is: ``store``, or the SQLite file in ``data_dir``."""
        return self.store or str(self.db_path)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "rtgrid.sqlite"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
