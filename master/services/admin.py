"""Admin API servicer (operators)."""

from __future__ import annotations

import asyncio

from rtgrid.protos.v1 import admin_pb2, admin_pb2_grpc

from .. import agents, devices, models
from ..convert import (
    agent_state_to_proto,
    audit_to_proto,
    hospital_to_proto,
    agent_to_proto,
    catalog_entry_to_proto,
    device_status_from_proto,
    device_to_proto,
    job_state_from_proto,
    job_to_proto,
    model_to_proto,
    shard_to_proto,
)
from ..errors import InvalidArgument, NotFound
from ..intake import UploadReaper
from ..ray_pool import RayPool
from ..scheduler import Scheduler
from ..security import tokens
from ..store.base import Store
from .common import PAGE_BYTES, listed, page_limit, paginate, threaded, unary

DEFAULT_JOB_PAGE = 100
DEFAULT_AUDIT_PAGE = 1000
# Agents, shards, devices, models, hospitals: an old client's request (no limit) gets them all in
# one page, as long as they fit the page's bytes.
DEFAULT_PAGE = 1000


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: Store, scheduler: Scheduler, pool: RayPool, token_cache: tokens.TokenCache,
                 reaper: UploadReaper | None = None) -> None:
        self.store = store
        self.token_cache = token_cache  # the interceptor's: forgotten when a token is issued or revoked
        self.scheduler = scheduler
        self.pool = pool
        self.reaper = reaper
        # A page leaves room for the reply's other fields within the message limit.
        self.page_bytes = min(PAGE_BYTES, scheduler.config.max_message_bytes // 2)

    def _page(self, request, records, to_proto, key) -> tuple[list, str]:
        """One page of a listing the store returns whole (``request``: its limit and page token)."""
        return paginate(listed(records, key), to_proto, key, request.page_token,
                        page_limit(request.limit, DEFAULT_PAGE), self.page_bytes)

    @unary
    @threaded
    def ListAgents(self, request, context):
        agents, token = self._page(request, self.store.list_agents(),
                                   lambda a: agent_to_proto(a, self.scheduler.running_on(a.agent_id)),
                                   lambda a: a.agent_id)
        return admin_pb2.ListAgentsResponse(agents=agents, next_page_token=token)

    @unary
    @threaded
    def ListJobs(self, request, context):
        try:
            states = [job_state_from_proto(s) for s in request.states]
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if request.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {request.limit}")
        jobs, token = paginate(
            lambda after, n: self.store.list_jobs(states, n, after),
            lambda j: job_to_proto(j, *self.scheduler.shard_progress(j.job_id)), lambda j: j.job_id,
            request.page_token, request.limit or DEFAULT_JOB_PAGE, self.page_bytes,
        )
        return admin_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    @unary
    @threaded
    def ListShards(self, request, context):
        if self.store.get_job(request.job_id) is None:
            raise NotFound(f"no job {request.job_id!r}")
        shards, token = self._page(request, self.store.list_shards(request.job_id), shard_to_proto,
                                   lambda s: s.shard_id)
        return admin_pb2.ListShardsResponse(shards=shards, next_page_token=token)

    @unary
    @threaded
    def CancelJob(self, request, context):
        job = self.scheduler.cancel(request.job_id)
        return job_to_proto(job, *self.scheduler.shard_progress(job.job_id))

    @unary
    @threaded
    def SetJobPriority(self, request, context):
        job = self.scheduler.set_priority(request.job_id, request.priority)
        return job_to_proto(job, *self.scheduler.shard_progress(job.job_id))

    @unary
    @threaded
    def DrainAgent(self, request, context):
        agent = agents.drain(self.store, request.agent_id)
        return agent_to_proto(agent, self.scheduler.running_on(agent.agent_id))

    @unary
    @threaded
    def GetClusterStatus(self, request, context):
        return admin_pb2.ClusterStatus(
            queue_depth=self.scheduler.queue_depth(),
            jobs_by_state=self.scheduler.jobs_by_state(),
            agents=[
                admin_pb2.AgentLoad(agent_id=a.agent_id, state=agent_state_to_proto(a.state),
                                    running_shards=self.scheduler.running_on(a.agent_id), slots=a.slots)
                for a in self.store.list_agents()
            ],
            ray_address=self.pool.address,
            open_cases=self.store.count_open_cases(),
            open_uploads=self.store.count_open_uploads(),
            expired_uploads=self.reaper.expired if self.reaper is not None else 0,
        )

    @unary
    @threaded
    def ListDevices(self, request, context):
        found, token = self._page(request, self.store.list_devices(), device_to_proto, lambda d: d.device_id)
        # The catalog is a few models: it rides on the first page.
        catalog = [] if request.page_token else [catalog_entry_to_proto(e) for e in devices.catalog()]
        return admin_pb2.ListDevicesResponse(devices=found, catalog=catalog, next_page_token=token)

    @unary
    @threaded
    def SetDevice(self, request, context):
        device = devices.set_device(
            self.store, request.device_id, hospital=request.hospital, model_id=request.model_id,
            status=device_status_from_proto(request.status), queue_length=request.queue_length,
        )
        self.scheduler.wake()
        return device_to_proto(device)

    @unary
    async def RegisterModel(self, request_iterator, context):
        receiver = None
        try:
            async for chunk in request_iterator:
                if receiver is None:
                    receiver = models.PackageReceiver(self.store, self.scheduler.blobs, chunk.sha256, chunk.card_json,
                                                      chunk.weights_bytes)
                elif chunk.sha256 or chunk.card_json:
                    raise InvalidArgument("only the first message of a model package names it (sha256, card_json)")
                if chunk.data:
                    await asyncio.to_thread(receiver.write, chunk.data)
            if receiver is None:
                raise InvalidArgument("the model package stream carried no messages")
            record = await asyncio.to_thread(receiver.finish)
        finally:
            if receiver is not None:
                receiver.discard()
        return model_to_proto(record)

    @unary
    @threaded
    def ListModels(self, request, context):
        found, token = self._page(request, self.store.list_models(), model_to_proto, lambda m: m.sha256)
        return admin_pb2.ListModelsResponse(models=found, next_page_token=token)

    @unary
    @threaded
    def AddHospital(self, request, context):
        record, token = tokens.add_hospital(self.store, request.name)
        self.token_cache.forget()
        return admin_pb2.AddHospitalResponse(hospital=hospital_to_proto(record), token=token)

    @unary
    @threaded
    def ListHospitals(self, request, context):
        hospitals, token = self._page(request, self.store.list_hospitals(), hospital_to_proto, lambda h: h.name)
        return admin_pb2.ListHospitalsResponse(hospitals=hospitals, next_page_token=token)

    @unary
    @threaded
    def RevokeHospital(self, request, context):
        record = tokens.revoke_hospital(self.store, request.name)
        self.token_cache.forget()
        return hospital_to_proto(record)

    @unary
    @threaded
    def ListAudit(self, request, context):
        if request.limit < 0 or request.since_ms < 0:
            raise InvalidArgument("limit and since_ms must not be negative")
        entries, token = paginate(
            lambda after, n: self.store.list_audit(request.principal, request.action, request.since_ms, n, after),
            audit_to_proto, lambda e: e.audit_id, request.page_token, request.limit or DEFAULT_AUDIT_PAGE,
            self.page_bytes,
        )
        return admin_pb2.ListAuditResponse(entries=entries, next_page_token=token)
