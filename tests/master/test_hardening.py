"""Hardening pieces without a grid: size limits of every request field, listing pages that never
outgrow their byte budget (the store's own pages and listings it returns whole), the rate limit of
authentication failures, and the expiry of abandoned uploads (on a real SQLite store and blob folder)."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor

from rtgrid.master.blobs import BlobStore
from rtgrid.master.config import MasterConfig
from rtgrid.master.convert import audit_to_proto, device_to_proto
from rtgrid.master.errors import InvalidArgument, ResourceExhausted
from rtgrid.master.intake import Intake, UploadReaper, create_case, start_upload, write_chunk
from rtgrid.master.security.auth import AuthFailureLimiter
from rtgrid.master.security.limits import PARAM_VALUE_LIMITS, check_request, clip
from rtgrid.master.services.common import listed, page_limit, paginate
from rtgrid.master.store.records import AuditRecord, DeviceRecord
from rtgrid.master.store.sqlite import SqliteStore
from rtgrid.protos.v1 import admin_pb2, agent_pb2, hospital_pb2

SERVICES = ((hospital_pb2, "HospitalService"), (admin_pb2, "AdminService"), (agent_pb2, "AgentService"))
HUGE = 2_000_000  # beyond every field's limit (the largest, a model card, is 1 MiB)
PAYLOADS = {"UploadChunk.data", "ModelPackageChunk.data", "VersionChunk.data"}  # bounded by max_chunk_bytes where received


def _request_types():
    seen = {}
    for module, service in SERVICES:
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            seen[method.input_type.full_name] = message_factory.GetMessageClass(method.input_type)
    return sorted(seen.items())


def _oversized(cls, field: FieldDescriptor):
    """A request of ``cls`` whose ``field`` is far over any limit."""
    message = cls()
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        getattr(message, field.name).update({f"k{i}": "v" for i in range(1000)})
    elif field.is_repeated:
        if field.message_type is not None:
            getattr(message, field.name).extend([field.message_type._concrete_class()] * 1000)
        else:
            getattr(message, field.name).extend([0] * 1000)
    elif field.type == FieldDescriptor.TYPE_STRING:
        setattr(message, field.name, "x" * HUGE)
    elif field.type == FieldDescriptor.TYPE_BYTES:
        setattr(message, field.name, b"x" * HUGE)
    else:
        return None
    return message


def test_every_request_field_has_a_limit_that_names_it():
    checked = 0
    for name, cls in _request_types():
        for field in cls.DESCRIPTOR.fields:
            if f"{cls.DESCRIPTOR.name}.{field.name}" in PAYLOADS:
                continue
            message = _oversized(cls, field)
            if message is None:
                continue
            with pytest.raises(InvalidArgument) as err:
                check_request(message)
            text = str(err.value)
            assert field.name in text and "limit is" in text and len(text) < 300, (name, text)
            checked += 1
    assert checked >= 40


def test_limits_in_detail():
    key = hospital_pb2.SubmitJobRequest(case_id="case-1", kind="contour", idempotency_key="k" * 1_200_000)
    with pytest.raises(InvalidArgument, match=r"field idempotency_key is 1200000 characters; the limit is 128"):
        check_request(key)
    with pytest.raises(InvalidArgument, match=r"field case_id is 1900000 characters; the limit is 64"):
        check_request(hospital_pb2.GetCaseRequest(case_id="c" * 1_900_000))
    order = hospital_pb2.SubmitJobRequest(params={"order": "x" * (PARAM_VALUE_LIMITS["order"] + 1)})
    with pytest.raises(InvalidArgument, match=r"params\['order'\].*65536"):
        check_request(order)
    with pytest.raises(InvalidArgument, match=r"params\['machine'\].*1024"):
        check_request(hospital_pb2.SubmitJobRequest(params={"machine": "m" * 2000}))
    gpus = agent_pb2.RegisterRequest(gpus=[{"name": "g" * 1000}])
    with pytest.raises(InvalidArgument, match=r"gpus\[0\]\.name"):
        check_request(gpus)
    # Within the limits: nothing to say (a real order, the largest ids).
    check_request(hospital_pb2.SubmitJobRequest(case_id="case-" + "f" * 16, kind="plan", idempotency_key="k" * 128,
                                                params={"order": "prescription: {}\n" * 3000}))
    check_request(hospital_pb2.UploadChunk(upload_id="a" * 24, data=b"\0" * (4 << 20)))  # chunks: their own limit
    assert clip("x" * 10, 20) == "x" * 10 and clip("x" * 1000, 20) == "x" * 20 + "...(1000 characters)"


def test_pages_stop_at_their_byte_budget_and_resume(tmp_path):
    store = SqliteStore(tmp_path / "rtgrid.sqlite")
    try:
        for i in range(40):  # entries of about 600 bytes
            store.add_audit(AuditRecord(f"audit-{i:04d}", 1000 + i // 3, "h", "hospital", "view", "M",
                                        {"case_id": "c"}, "OK", "d" * 500))
        fetch = lambda after, n: store.list_audit(limit=n, after_audit_id=after)  # noqa: E731
        seen, token, pages = [], "", 0
        while True:
            page, token = paginate(fetch, audit_to_proto, lambda e: e.audit_id, token, 1000, 5000)
            assert sum(p.ByteSize() for p in page) <= 5000 and page
            seen += [p.audit_id for p in page]
            pages += 1
            if not token:
                break
        assert seen == [f"audit-{i:04d}" for i in range(40)] and pages >= 5  # every entry once, in order
        page, token = paginate(fetch, audit_to_proto, lambda e: e.audit_id, "", 7, 1 << 20)
        assert len(page) == 7 and token == "audit-0006"
        page, token = paginate(fetch, audit_to_proto, lambda e: e.audit_id, "audit-0035", 7, 1 << 20)
        assert [p.audit_id for p in page] == [f"audit-{i:04d}" for i in range(36, 40)] and token == ""
        with pytest.raises(InvalidArgument, match="page_token"):
            paginate(fetch, audit_to_proto, lambda e: e.audit_id, "audit-nope", 7, 1 << 20)
        # One entry larger than the budget still makes a page on its own.
        page, _ = paginate(fetch, audit_to_proto, lambda e: e.audit_id, "", 7, 10)
        assert len(page) == 1
    finally:
        store.close()


def test_listings_the_store_returns_whole_page_the_same_way(tmp_path):
    """Devices (as agents, hospitals, models, shards, artifacts): read whole from the store, paged by
    ``listed`` through the one ``paginate``, each page within its byte budget."""
    store = SqliteStore(tmp_path / "rtgrid.sqlite")
    try:
        for i in range(120):
            store.upsert_device(DeviceRecord(f"linac-{i:03d}-" + "x" * 40, "hospital-" + "h" * 50, "varian-truebeam",
                                             "available", i, 1000 + i))
        records = store.list_devices()
        key = lambda d: d.device_id  # noqa: E731
        seen, token, pages = [], "", 0
        while True:  # each page fetches the listing again, as the servicer does
            page, token = paginate(listed(store.list_devices(), key), device_to_proto, key, token,
                                   page_limit(0, 1000), 2000)
            assert page and sum(p.ByteSize() for p in page) <= 2000
            seen += [p.device_id for p in page]
            pages += 1
            if not token:
                break
        assert seen == [d.device_id for d in records] and pages >= 5  # every device once, in the store's order
        page, token = paginate(listed(records, key), device_to_proto, key, "", page_limit(7, 1000), 1 << 20)
        assert len(page) == 7 and token == records[6].device_id
        page, token = paginate(listed(records, key), device_to_proto, key, records[115].device_id, 7, 1 << 20)
        assert [p.device_id for p in page] == [d.device_id for d in records[116:]] and token == ""
        with pytest.raises(InvalidArgument, match="page_token"):
            paginate(listed(records, key), device_to_proto, key, "linac-nope", 7, 1 << 20)
        with pytest.raises(InvalidArgument, match="limit must not be negative"):
            page_limit(-1, 1000)
        assert paginate(listed([], key), device_to_proto, key, "", 5, 1 << 20) == ([], "")
    finally:
        store.close()


def test_auth_failures_are_limited_per_key_and_window():
    now = [0.0]
    limiter = AuthFailureLimiter(per_window=3, window_s=60, clock=lambda: now[0])
    assert [limiter.fail(["address a"]) for _ in range(3)] == [None] * 3
    key, window = limiter.fail(["address a"])
    assert key == "address a" and window.failures == 4 and limiter.retry_after_s(window) == 60
    assert limiter.fail(["address b"]) is None  # another address has its own count
    assert limiter.fail(["address c", "token rtg_abcd..."]) is None
    for _ in range(3):
        over = limiter.fail(["address d", "token rtg_abcd..."])  # one token from many addresses
    assert over[0] == "token rtg_abcd..."
    now[0] = 61.0  # a new window
    assert limiter.fail(["address a"]) is None
    for i in range(AuthFailureLimiter.MAX_KEYS + 10):  # an attacker with many addresses cannot grow it unbounded
        limiter.fail([f"address {i}"])
    assert len(limiter) <= AuthFailureLimiter.MAX_KEYS + 1


def _intake(tmp_path: Path, **config) -> Intake:
    cfg = MasterConfig(data_dir=tmp_path, **config)
    return Intake(SqliteStore(cfg.db_path), BlobStore(cfg.blob_dir), cfg)


def test_abandoned_uploads_expire_with_their_partial_files(tmp_path):
    intake = _intake(tmp_path, upload_expiry_s=60)
    try:
        case = create_case(intake, "x", "st-luke")
        old = start_upload(intake, case.case_id, "a.dcm", 10, "a" * 64)
        fresh = start_upload(intake, case.case_id, "b.dcm", 10, "b" * 64)
        time.sleep(1.2)
        write_chunk(intake, fresh, 0, b"12345", zlib.crc32(b"12345"))  # its last chunk: 1.2 s after the first start
        orphan = intake.blobs.partial_path("deadbeef")  # a crash left it; no upload names it
        orphan.write_bytes(b"x")
        an_hour_ago = time.time() - 3600
        os.utime(orphan, (an_hour_ago, an_hour_ago))
        reaper = UploadReaper(intake)
        assert reaper.sweep(now=old.created_ms + 30_000) == 0  # not yet
        assert reaper.sweep(now=old.created_ms + 60_500) == 1  # the first expires; the other had a chunk since
        assert intake.store.get_upload(fresh.upload_id) is not None
        assert reaper.sweep(now=fresh.updated_ms + 61_000) == 1
        assert intake.store.get_upload(old.upload_id) is None and intake.store.get_upload(fresh.upload_id) is None
        assert not intake.blobs.partial_path(old.upload_id).exists() and not orphan.exists()
        assert reaper.expired == 2 and intake.store.count_open_uploads("st-luke") == 0
        assert intake.store.get_case(case.case_id) is not None  # the case stays; its uploads went
    finally:
        intake.store.close()


def test_open_cases_and_uploads_per_hospital(tmp_path):
    intake = _intake(tmp_path, max_open_cases_per_hospital=2, max_open_uploads_per_hospital=3)
    try:
        cases = [create_case(intake, "x", "st-luke") for _ in range(2)]
        with pytest.raises(ResourceExhausted, match=r"2 open \(uncommitted\) cases; the limit is 2 "
                                                    r"\(max_open_cases_per_hospital\)"):
            create_case(intake, "x", "st-luke")
        create_case(intake, "x", "county")  # per hospital
        for i in range(3):
            start_upload(intake, cases[i % 2].case_id, f"{i}.dcm", 10, f"{i}" * 64)
        with pytest.raises(ResourceExhausted, match=r"3 unfinished uploads; the limit is 3 "
                                                    r"\(max_open_uploads_per_hospital\)"):
            start_upload(intake, cases[0].case_id, "9.dcm", 10, "9" * 64)
        assert start_upload(intake, cases[0].case_id, "0.dcm", 10, "0" * 64).upload_id  # the same one: resumed
    finally:
        intake.store.close()


def test_text_with_a_nul_character_is_refused_by_field():
    # PostgreSQL cannot store U+0000: without this check a label with one failed there as INTERNAL.
    cases = [
        (hospital_pb2.CreateCaseRequest(label="neck\x00case"), r"field label contains a NUL character"),
        (hospital_pb2.SubmitJobRequest(case_id="c1", kind="plan", params={"order": "a\x00"}), r"field params contains a NUL"),
        (hospital_pb2.SubmitJobRequest(case_id="c1", kind="plan", params={"or\x00der": "a"}), r"field params contains a NUL"),
        (agent_pb2.RegisterRequest(gpus=[{"name": "g\x00"}]), r"field gpus\[0\]\.name contains a NUL"),
    ]
    for request, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            check_request(request)
    check_request(hospital_pb2.UploadChunk(upload_id="a" * 24, data=b"\0" * 64))  # bytes may hold anything
    check_request(hospital_pb2.CreateCaseRequest(label="neck case"))
    check_request(agent_pb2.RegisterRequest(hostname="box", cpus=16, slots=16))  # numbers, not text
