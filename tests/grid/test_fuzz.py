"""Fuzzing the public protos: at least 10,000 generated requests against a real master.

Requests are generated from the proto descriptors of the hospital, admin and agent services by
hypothesis: random strings mixed with real and malformed ids, extreme integers, NaN and infinite
doubles, unknown enum values, random bytes, chunk streams with wrong offsets and checksums, and
oversized fields (strings beyond every field's limit, maps with hundreds of entries). Each
request must come back with a status within its deadline, never INTERNAL or UNKNOWN (an unhandled
error in the master) and never UNAVAILABLE (a dead server); one with an oversized field is
INVALID_ARGUMENT. At the end the master process is alive, healthy and serves a valid upload, and
the operator's listings of every job and every audit entry the fuzz made still work.

The master is a dedicated subprocess (its store fills with fuzz) on the session's Ray head, with
no agents: jobs the fuzz manages to submit only queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtgrid.client.sdk import Client
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.master.config import MAX_OPEN_CASES_PER_HOSPITAL
from rtgrid.protos.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, hospital_pb2, hospital_pb2_grpc

from .conftest import start_master, stop_process

BATCH = 50
EXAMPLES = 205  # x BATCH requests >= 10,000
CALL_DEADLINE_S = 10.0
WATCH_DEADLINE_S = 2.0  # a watch on a live job legitimately streams until its deadline
SERVICES = (
    (hospital_pb2, "HospitalService", hospital_pb2_grpc.HospitalServiceStub),
    (admin_pb2, "AdminService", admin_pb2_grpc.AdminServiceStub),
    (agent_pb2, "AgentService", agent_pb2_grpc.AgentServiceStub),
)
# An unhandled exception in the master, or a dead master.
CRASH_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
# What grpc's asyncio client says, in place of the server's status, when the server ended a
# client-streaming call before the client had sent every message (grpc/grpc#36066, fix proposed in
# grpc/grpc#43486). Such a call is sent again with the synchronous client, which reports the
# server's own status; a real crash still shows there.
AIO_CLIENT_WRITE_RACE = "Internal error from Core"


def _sync_client_stream(target: str, service: str, name: str, body) -> tuple[grpc.StatusCode, str]:
    stub = dict((n, s) for _, n, s in SERVICES)[service]
    with grpc.insecure_channel(target) as channel:
        try:
            answer = getattr(stub(channel), name)(iter(body), timeout=CALL_DEADLINE_S)
            if hasattr(answer, "__next__"):  # a bidirectional stream answers as it reads
                for _ in answer:
                    pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
HOSTILE_STRINGS = ["", " ", "../../etc/passwd", "a" * 5000, "\x00", "case-", "job-%s", "'; DROP TABLE jobs; --",
                   "ü∂\u202e", "auto", "auto:99999999999999999999", "contour", "plan", "full", "nan", "-1", "1e309"]
EXTREME_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**32 - 1]
# Beyond the limit of every string field (the largest, an order, is 64 KiB).
OVERSIZED = "o" * 70_000
HOSTILE_STRINGS.append(OVERSIZED)
BIG_MAP = {f"k{i}": "v" for i in range(200)}


@pytest.fixture(scope="module")
def fuzz_master(ray_cluster, tmp_path_factory):
    # In memory where the machine has it: the fuzz tests the server's answers, not the disk's
    # fsync latency (which would dominate the run time).
    shm = Path("/dev/shm")
    data_dir = Path(tempfile.mkdtemp(prefix="rtgrid-fuzz-", dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("fuzz")
    proc, target, _ = start_master(data_dir, ray_cluster.address, None)  # plaintext: the fuzz is for the services
    ct_dir = write_phantom_case(tmp_path_factory.mktemp("fuzz-ct"), shape=(4, 32, 32), spacing_mm=(8.0, 8.0, 4.0),
                                seed=1).ct_dir
    with Client(target) as client:
        committed = client.upload_folder(ct_dir).case.case_id
        job = client.submit(committed, "contour").job_id
        client.cancel(job)  # a real id whose watch ends at once (a live job's watch streams to its deadline)
        open_case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="open")).case_id
        data = next(ct_dir.iterdir()).read_bytes()
        upload = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
            case_id=open_case, file_name="slice.dcm", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
        devices = [d.device_id for d in client.call(client.admin.ListDevices, admin_pb2.ListDevicesRequest()).devices]
    ids = [committed, job, open_case, upload.upload_id, *devices[:2], "0" * 64]
    yield proc, target, ids
    stop_process(proc)
    shutil.rmtree(data_dir, ignore_errors=True)


def _scalar(field: FieldDescriptor, ids: list[str]) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(ids), st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=5000))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if t == FieldDescriptor.TYPE_DOUBLE else 32)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown values travel
    bits = 64 if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64) else 32
    unsigned = t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
                     FieldDescriptor.TYPE_FIXED64)
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.one_of(st.integers(low, high), st.sampled_from([v for v in EXTREME_INTS if low <= v <= high]),
                     st.integers(-2, 300).filter(lambda v: low <= v <= high))


def message_strategy(cls, ids: list[str], depth: int = 0) -> st.SearchStrategy:
    """Messages of ``cls`` with every field set or left out at random, nested up to two levels."""
    fields = {}
    for field in cls.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, value_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if value_f.message_type is None:  # the public protos map strings to scalars only
                fields[field.name] = st.one_of(st.dictionaries(_scalar(key_f, ids), _scalar(value_f, ids), max_size=3),
                                               st.just(BIG_MAP) if value_f.type == FieldDescriptor.TYPE_STRING
                                               else st.nothing())
            continue
        if field.message_type is not None:
            if depth >= 2:
                continue
            one = message_strategy(_message_class_of(field.message_type), ids, depth + 1)
        else:
            one = _scalar(field, ids)
        fields[field.name] = st.lists(one, max_size=3) if field.is_repeated else one
    optional = {name: st.one_of(st.none(), s) for name, s in fields.items()}
    return st.fixed_dictionaries(optional).map(lambda kw: cls(**{k: v for k, v in kw.items() if v is not None}))


def _upload_chunks(ids: list[str]) -> st.SearchStrategy:
    """Chunk streams: real or bogus upload ids, right or wrong offsets and checksums."""

    def chunk(upload_id: str, offset: int, data: bytes, good_crc: bool, crc: int) -> hospital_pb2.UploadChunk:
        return hospital_pb2.UploadChunk(upload_id=upload_id, offset=offset, data=data,
                                        crc32=zlib.crc32(data) if good_crc else crc)

    one = st.builds(chunk, st.one_of(st.sampled_from(ids), st.text(max_size=30)),
                    st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1]), st.integers(-(2**63), 2**63 - 1)),
                    st.binary(max_size=2000), st.booleans(), st.integers(0, 2**32 - 1))
    return st.lists(one, max_size=4)


def _message_class_of(descriptor):
    return message_factory.GetMessageClass(descriptor)


def _methods():
    """(service, method name, request class, streaming kind) for every RPC of the public services."""
    out = []
    for module, service_name, _ in SERVICES:
        service = module.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            request_cls = _message_class_of(method.input_type)
            kind = ("bidi_stream" if method.client_streaming and method.server_streaming else
                    "client_stream" if method.client_streaming else
                    "server_stream" if method.server_streaming else "unary")
            out.append((service_name, method.name, request_cls, kind))
    return out


METHODS = _methods()


def request_strategy(ids: list[str]) -> st.SearchStrategy:
    choices = []
    for service_name, name, cls, kind in METHODS:
        if kind == "client_stream":
            body = _upload_chunks(ids)
        elif kind == "bidi_stream":  # its own messages, or another type's bytes (a corrupt stream)
            body = st.one_of(st.lists(message_strategy(cls, ids), max_size=4), _upload_chunks(ids))
        else:
            body = message_strategy(cls, ids)
        choices.append(body.map(lambda b, s=service_name, n=name, k=kind: (s, n, k, b)))
    return st.one_of(choices)


async def _call(stubs, service: str, name: str, kind: str, body) -> tuple[grpc.StatusCode, str]:
    """The call's status code and details."""
    method = getattr(stubs[service], name)
    try:
        if kind == "server_stream":
            deadline = WATCH_DEADLINE_S if name == "WatchJob" else CALL_DEADLINE_S
            async for _ in method(body, timeout=deadline):
                pass
        elif kind == "client_stream":
            await method(iter(body), timeout=CALL_DEADLINE_S)
        elif kind == "bidi_stream":
            async for _ in method(iter(body), timeout=CALL_DEADLINE_S):
                pass
        else:
            await method(body, timeout=CALL_DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and name == "WatchJob":
            return grpc.StatusCode.OK, ""
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _oversized(body) -> bool:
    """Whether a request carries a field far beyond any limit (an OVERSIZED string or BIG_MAP)."""
    if not hasattr(body, "ListFields"):
        return False
    for field, value in body.ListFields():
        values = value.values() if isinstance(value, Mapping) else value if field.is_repeated else [value]
        if isinstance(value, Mapping) and len(value) >= len(BIG_MAP):
            return True
        if any(v == OVERSIZED or _oversized(v) for v in values) or (isinstance(value, Mapping) and OVERSIZED in value):
            return True
    return False


async def _gather(stubs, requests) -> list[tuple[grpc.StatusCode, str]]:
    return await asyncio.gather(*(_call(stubs, *r) for r in requests))


def test_fuzz_public_protos(fuzz_master):
    proc, target, ids = fuzz_master
    loop = asyncio.new_event_loop()

    async def open_channel() -> grpc.aio.Channel:  # an aio channel belongs to the loop it is made in
        return grpc.aio.insecure_channel(target)

    channel = loop.run_until_complete(open_channel())
    stubs = {name: stub(channel) for _, name, stub in SERVICES}
    codes: Counter = Counter()
    crashes: list[str] = []
    unlimited: list[str] = []  # oversized fields that were not refused
    started = time.monotonic()
    rpc_s = [0.0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(request_strategy(ids), min_size=BATCH, max_size=BATCH))
    def batch(requests):
        t0 = time.monotonic()
        results = loop.run_until_complete(_gather(stubs, requests))
        rpc_s[0] += time.monotonic() - t0
        for (service, name, kind, body), (code, details) in zip(requests, results):
            if kind in ("client_stream", "bidi_stream") and code == grpc.StatusCode.INTERNAL and details == AIO_CLIENT_WRITE_RACE:
                code, details = _sync_client_stream(target, service, name, body)
                codes["aio_write_race_resent"] += 1
            codes[code.name] += 1
            if code in CRASH_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                crashes.append(f"{service}.{name} -> {code.name} ({details[:200]}): {str(body)[:300]}")
            elif _oversized(body) and code != grpc.StatusCode.INVALID_ARGUMENT:
                unlimited.append(f"{service}.{name} -> {code.name}: {str(body)[:300]}")

    try:
        batch()
    finally:
        loop.run_until_complete(channel.close())
        loop.close()
    elapsed = time.monotonic() - started
    print(f"fuzz: {sum(codes.values())} requests in {elapsed:.1f} s ({rpc_s[0]:.1f} s in calls): {dict(codes)}")
    assert not crashes, crashes[:10]
    assert not unlimited, unlimited[:10]
    assert sum(codes.values()) >= 10_000
    assert proc.poll() is None, "the master died"
    with Client(target) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        # The fuzz may have filled the open-case limit; room is made the way a hospital would make it.
        open_cases = [c for c in client.call(client.hospital.ListCases, hospital_pb2.ListCasesRequest()).cases
                      if not c.committed]
        assert len(open_cases) <= MAX_OPEN_CASES_PER_HOSPITAL
        if open_cases:
            client.call(client.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=open_cases[0].case_id))
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="after the fuzz"))
        assert client.call(client.hospital.GetCase, hospital_pb2.GetCaseRequest(case_id=case.case_id)).label == "after the fuzz"
        # The operator reads every job and every audit entry the fuzz left, page by page.
        jobs, entries = client.jobs(), client.audit()
        assert jobs and len(entries) > 1000  # more than one page of either
        assert max(len(j.idempotency_key) for j in jobs) <= 128
        print(f"after the fuzz: {len(jobs)} jobs, {len(entries)} audit entries listed")
