"""The master process: gRPC (hospital, agent, admin, health, reflection) + store + scheduler + Ray."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rtgrid.protos.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, hospital_pb2, hospital_pb2_grpc

from .blobs import BlobStore
from .config import MasterConfig
from .devices import seed_from_catalog
from .events import EventBus
from .intake import Intake, UploadReaper
from .metrics import MasterMetrics
from .models import register_builtin_models
from .prechecks import Prechecks
from .ray_pool import RayPool
from .scheduler import Scheduler
from .security.auth import AuthFailureLimiter, AuthInterceptor
from .security.tls import check_insecure_host
from .security.tokens import TokenCache
from .services.admin import AdminService
from .services.agent import AgentService
from .services.hospital import HospitalService
from .store.factory import open_store

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    hospital_pb2.DESCRIPTOR.services_by_name["HospitalService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


class Master:
    """One master: call :meth:`start` inside a running event loop, then :meth:`stop`.

    Parameters
    ----------
    config : MasterConfig
        Where the state lives, where to listen, which Ray cluster to use.
    """

    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self.port = 0
        self.internal_port = 0
        self.store = open_store(config.store_location)
        self.blobs = BlobStore(config.blob_dir)
        self.pool: RayPool | None = None
        self.scheduler: Scheduler | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.metrics = MasterMetrics()
        self.metrics_port = 0
        self._reaping: asyncio.Task | None = None
        self.prechecks: Prechecks | None = None

    @property
    def address(self) -> str:
        """The public port: hospitals (TLS + API token)."""
        return f"{self.config.host}:{self.port}"

    @property
    def internal_address(self) -> str:
        """The internal port: agents and operators (mutual TLS); the public one when insecure."""
        return f"{self.config.host}:{self.internal_port}"

    async def start(self) -> int:
        """Start Ray, the scheduler and the gRPC server; returns the bound port."""
        loop = asyncio.get_running_loop()
        if self.config.tls is None:
            check_insecure_host(self.config.host)
        self.pool = RayPool(self.config.ray_address)
        seeded = seed_from_catalog(self.store)
        if seeded:
            log.info("device registry was empty: one device per catalog model (%d)", seeded)
        builtin = register_builtin_models(self.store, self.blobs)
        if builtin:
            log.info("model registry was empty: registered the built-in models %s",
                     ", ".join(f"{m.name}@{m.version}" for m in builtin))
        events = EventBus(self.store, loop)
        self.scheduler = Scheduler(self.store, self.blobs, events, self.pool, self.config, self.metrics)
        self.metrics.watch(self.scheduler)
        limiter = AuthFailureLimiter(self.config.max_auth_failures_per_minute)
        token_cache = TokenCache(self.store)
        self._server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.store, token_cache, insecure=self.config.tls is None, limiter=limiter)],
            options=self.config.grpc_options(),
        )
        self.prechecks = Prechecks()
        self.prechecks.start()
        intake = Intake(self.store, self.blobs, self.config, prechecks=self.prechecks)
        reaper = UploadReaper(intake)
        self.metrics.watch_uploads(self.store, reaper)
        hospital_pb2_grpc.add_HospitalServiceServicer_to_server(
            HospitalService(intake, self.scheduler, events), self._server
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(self.store, self.scheduler, self.config, self.pool.address), self._server
        )
        admin = AdminService(self.store, self.scheduler, self.pool, token_cache, reaper)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self._listen()
        await self._server.start()
        self.scheduler.start()
        self._reaping = loop.create_task(reaper.run())
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
            log.info("metrics at http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)
        # Everything made so far (Ray, gRPC, pydicom, torch and the registries: about 240 000
        # objects) lives as long as the master: out of the collector's sight, a full collection
        # no longer walks it. In a wave of 50 hospitals those collections stopped every RPC for
        # 130-260 ms each; frozen, 25-60 ms (bench.load, 2-core machine, 2026-12-05).
        gc.freeze()
        for name in ("", *SERVICE_NAMES):
            await _set_serving(self._health, name, health_pb2.HealthCheckResponse.SERVING)
        log.info("master listening on %s, internal %s (%s; data in %s, ray at %s)", self.address, self.internal_address,
                 "TLS" if self.config.tls else "INSECURE: plaintext, no authentication", self.config.data_dir,
                 self.pool.address)
        return self.port

    def _listen(self) -> None:
        host, tls = self.config.host, self.config.tls

        def bind(port: int, credentials: grpc.ServerCredentials | None) -> int:
            address = f"{host}:{port}"
            bound = (self._server.add_secure_port(address, credentials) if credentials
                     else self._server.add_insecure_port(address))
            if bound == 0:
                raise RuntimeError(f"could not listen on {address}")
            return bound

        if tls is None:
            self.port = self.internal_port = bind(self.config.port, None)
            return
        self.port = bind(self.config.port, tls.server_credentials(require_client_cert=False))
        self.internal_port = bind(self.config.internal_port, tls.server_credentials(require_client_cert=True))

    async def stop(self, grace_s: float = 2.0) -> None:
        for name in ("", *SERVICE_NAMES):
            await _set_serving(self._health, name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._reaping is not None:
            self._reaping.cancel()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self.scheduler is not None:
            await self.scheduler.stop()
        self.metrics.stop()
        if self.prechecks is not None:
            self.prechecks.close()
        self.store.close()
        if self.pool is not None:
            self.pool.shutdown()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _set_serving(servicer: health.aio.HealthServicer, name: str, status: int) -> None:
    await servicer.set(name, status)


async def serve(config: MasterConfig, ready: "asyncio.Future[str] | None" = None) -> None:
    """Run a master until SIGINT or SIGTERM."""
    master = Master(config)
    await master.start()
    if ready is not None:
        ready.set_result(master.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await master.stop()
