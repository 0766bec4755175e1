"""Who is calling, and may they: one server interceptor in front of every servicer.

Credentials:

- a hospital sends its API token as ``authorization: Bearer <token>`` metadata;
- agents and operators present a client certificate signed by the grid's CA on the internal
  port, where TLS requires and verifies it (mutual TLS); its OU names the role (see :mod:`.certs`).

Each API needs one role: the hospital API a hospital, the admin API an operator, the agent API an
agent. A caller without any credential is UNAUTHENTICATED; one with credentials of another role is
PERMISSION_DENIED. Health and reflection are open. In insecure mode (plaintext, loopback only)
every caller is the one :data:`LOCAL` principal, with every role.

The interceptor also writes the audit log: who, role, action, objects, time and outcome of every
call that uploads, views, downloads, submits, cancels or administers, and of every refusal (upload
chunks and heartbeats included). Echoed objects and details are clipped, so no caller can grow
the log by sending long fields; every request field is checked against its size limit
(:mod:`.limits`) before any servicer runs. Repeated authentication failures from one address or
one token prefix are rate-limited (:class:`AuthFailureLimiter`): past the limit they are refused
with RESOURCE_EXHAUSTED and counted in one audit row per window instead of one row per try.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass

import grpc

from rtgrid.protos.v1 import admin_pb2, agent_pb2, hospital_pb2

from ..errors import MasterError
from ..ids import new_id, now_ms
from ..store.base import Store
from ..store.records import AuditRecord
from .certs import AGENT_ROLE, CLIENT_ROLES, OPERATOR_ROLE, client_role
from .limits import check_request, clip
from .tokens import TokenCache

log = logging.getLogger(__name__)

HOSPITAL_ROLE = "hospital"
LOCAL_ROLE = "local"
_HOSPITAL_API = hospital_pb2.DESCRIPTOR.services_by_name["HospitalService"].full_name
_ADMIN_API = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
_AGENT_API = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
SERVICE_ROLES = {_HOSPITAL_API: HOSPITAL_ROLE, _ADMIN_API: OPERATOR_ROLE, _AGENT_API: AGENT_ROLE}

# What the audit log calls each call. Every refusal is logged; the methods in _REFUSALS_ONLY are
# logged only when refused (starts, chunks, heartbeats: many per minute, and FinishUpload already
# records each file; an UploadFiles stream records each file it keeps).
_ACTIONS = {
    _HOSPITAL_API: {
        "CreateCase": "upload", "StartUpload": "upload", "UploadChunks": "upload", "FinishUpload": "upload",
        "UploadFiles": "upload",
        "CommitCase": "upload", "DeleteCase": "upload",
        "GetCase": "view", "ListCases": "view", "GetJob": "view", "WatchJob": "view", "ListArtifacts": "view",
        "SubmitJob": "submit", "CancelJob": "cancel", "DownloadArtifact": "download",
        "ListVersions": "view", "ListShares": "view", "ReviewVersion": "review", "AddVersion": "upload",
        "ShareCase": "share", "UnshareCase": "share",
    },
    _ADMIN_API: {"CancelJob": "cancel", "*": "admin"},
    _AGENT_API: {"*": "agent"},
}
_REFUSALS_ONLY = frozenset({"HospitalService/StartUpload", "HospitalService/UploadChunks", "HospitalService/UploadFiles",
                            "AgentService/Heartbeat", "AgentService/FetchModel"})
# Request and response fields that name objects, recorded with each audit entry.
_OBJECT_FIELDS = ("case_id", "job_id", "artifact_id", "upload_id", "file_id", "agent_id", "device_id", "name")
# Longest echo of an object id and of a refusal's message in an audit row.
AUDIT_OBJECT_CHARS = 128
AUDIT_DETAIL_CHARS = 500
# Authentication failures one address or token prefix may make per window before they are
# refused outright and summarised (one audit row per window) instead of logged one by one.
AUTH_FAILURES_PER_WINDOW = 30
AUTH_FAILURE_WINDOW_S = 60.0
# A token's first characters name it in the rate limit ("rtg_" and 4 of its 43 random characters).
TOKEN_PREFIX_CHARS = 8
# Token lookups and audit writes have threads of their own: every call needs them, and in the
# default pool they waited behind uploads decoding whole series (p99 0.8 s per call in bench-load).
# Apart from each other: an audit write waits its turn for the store's write lock, and a lookup
# (a read) must not wait behind it.
AUTH_THREADS = 4
AUDIT_THREADS = 4
_auth_pool = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="rtgrid-auth")
_audit_pool = ThreadPoolExecutor(AUDIT_THREADS, thread_name_prefix="rtgrid-audit")


async def _in_auth_thread(func: Callable, *args):
    return await asyncio.get_running_loop().run_in_executor(_auth_pool, func, *args)


async def _in_audit_thread(func: Callable, *args):
    return await asyncio.get_running_loop().run_in_executor(_audit_pool, func, *args)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a hospital (by name), an agent or an operator (by certificate CN)."""

    name: str
    role: str


LOCAL = Principal("local", LOCAL_ROLE)
_current: ContextVar[Principal | None] = ContextVar("rtgrid_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being served (set by :class:`AuthInterceptor`)."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no caller identity: the servicer runs without the auth interceptor")
    return principal


@functools.lru_cache(maxsize=256)
def _certificate_principal(cert_pem: bytes) -> Principal:
    """The role a CA-signed certificate names; only agent and operator certificates carry one."""
    role, name = client_role(cert_pem)
    return Principal(name, role if role in CLIENT_ROLES else "")


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _objects(message) -> dict[str, str]:
    message = getattr(message, "first", message)  # a request stream: its first message names the objects
    if message is None or not hasattr(message, "DESCRIPTOR"):
        return {}
    return {f: clip(getattr(message, f), AUDIT_OBJECT_CHARS) for f in _OBJECT_FIELDS
            if f in message.DESCRIPTOR.fields_by_name and getattr(message, f)}


def _peer_host(context) -> str:
    """The caller's address without its port (a new connection gets a new port)."""
    peer = context.peer() or ""
    return peer.rpartition(":")[0] or peer


@dataclass
class _Window:
    start: float
    failures: int = 0
    limited: int = 0  # failures refused outright, past the limit
    summary_id: str = ""  # the one audit row that counts them


class AuthFailureLimiter:
    """Counts authentication failures per key (an address, a token prefix) in fixed windows.

    Parameters
    ----------
    per_window : int
        Failures a key may make in one window; later ones in that window are rate-limited.
    window_s : float
        Length of a window (s).
    clock : callable
        Monotonic seconds (tests pass their own).
    """

    MAX_KEYS = 10_000  # windows kept at most; expired ones go first

    def __init__(self, per_window: int = AUTH_FAILURES_PER_WINDOW, window_s: float = AUTH_FAILURE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window, self.window_s, self.clock = per_window, window_s, clock
        self._windows: dict[str, _Window] = {}

    def fail(self, keys: list[str]) -> tuple[str, _Window] | None:
        """Count one failure for each key; returns the first key over its limit with its window."""
        now = self.clock()
        if len(self._windows) > self.MAX_KEYS:  # expired windows go; then, if still too many, the oldest half
            live = sorted(((w.start, k) for k, w in self._windows.items() if now - w.start < self.window_s))
            self._windows = {k: self._windows[k] for _, k in live[-self.MAX_KEYS // 2:]}
        over = None
        for key in keys:
            window = self._windows.get(key)
            if window is None or now - window.start >= self.window_s:
                window = self._windows[key] = _Window(now)
            window.failures += 1
            if over is None and window.failures > self.per_window:
                over = (key, window)
        return over

    def __len__(self) -> int:
        """Windows held (keys with failures in the last window, at most about MAX_KEYS)."""
        return len(self._windows)

    def retry_after_s(self, window: _Window) -> int:
        return max(1, int(window.start + self.window_s - self.clock() + 0.999))


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every call, sets :func:`current_principal`, audits.

    Parameters
    ----------
    store : Store
        Where hospital token digests and the audit log live.
    tokens : TokenCache
        The hospitals of the tokens seen, over ``store``; shared with the admin service, which
        issues and revokes tokens.
    insecure : bool
        Plaintext loopback mode: every caller is :data:`LOCAL` (no credentials checked).
    limiter : AuthFailureLimiter | None
        Rate limit of authentication failures; default :data:`AUTH_FAILURES_PER_WINDOW` a minute.
    """

    def __init__(self, store: Store, tokens: TokenCache, insecure: bool = False,
                 limiter: AuthFailureLimiter | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.insecure = insecure
        self.limiter = limiter if limiter is not None else AuthFailureLimiter()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        role = SERVICE_ROLES.get(service)
        if handler is None or role is None:
            return handler
        actions = _ACTIONS.get(service, {})
        name = f"{service.rpartition('.')[2]}/{method}"  # e.g. HospitalService/GetCase
        return _guarded(handler, functools.partial(self._admit, name, role),
                        functools.partial(self._audit, name, actions.get(method, actions.get("*", "")),
                                          name in _REFUSALS_ONLY))

    # who (the store is read and written in threads: never on the event loop every call shares)
    async def _identify(self, context: grpc.aio.ServicerContext) -> list[Principal]:
        found = []
        cert = (context.auth_context() or {}).get("x509_pem_cert")
        if cert:  # present only where TLS asked for it and verified it against the CA
            found.append(_certificate_principal(cert[0]))
        token = _bearer(context)
        if token is not None:
            hospital = self.tokens.cached(token) or await _in_auth_thread(self.tokens.lookup, token)
            if hospital is None:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "the API token is unknown or revoked")
            found.append(Principal(hospital.name, HOSPITAL_ROLE))
        return found

    async def _admit(self, method: str, role: str, context) -> Principal:
        if self.insecure:
            return LOCAL
        callers: list[Principal] = []
        try:
            callers = await self._identify(context)
            if not callers:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                               "no credentials: a hospital sends its API token (--token / RTGRID_TOKEN); agents "
                               "and operators connect with a client certificate to the internal port")
            for caller in callers:
                if caller.role == role:
                    return caller
            who = " and ".join(f"{c.role} {c.name!r}" for c in callers)
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"{who} may not call {method}: it needs the {role} role")
        except _Refused as refused:
            code, message = await self._refusal(callers[0] if callers else Principal("", ""), method, refused, context)
            await context.abort(code, message)
            raise  # abort raises; this line is never reached

    async def _refusal(self, caller: Principal, method: str, refused: _Refused, context) -> tuple[grpc.StatusCode, str]:
        """Audit a refusal at the door and say how to answer it: as refused, or, past the rate
        limit of its address or token prefix, RESOURCE_EXHAUSTED counted in the window's one
        summary row."""
        token = _bearer(context)
        keys = [f"address {_peer_host(context)}", *([f"token {token[:TOKEN_PREFIX_CHARS]}..."] if token else [])]
        over = self.limiter.fail(keys)
        if over is None:
            await self._write(caller, method, "auth", {}, refused.code.name, str(refused), context.peer() or "")
            return refused.code, str(refused)
        key, window = over
        window.limited += 1
        summary = (f"{window.limited} authentication failures from {key} rate-limited (more than "
                   f"{self.limiter.per_window} in {self.limiter.window_s:g} s); the last: {refused}")
        if window.summary_id:
            await _in_audit_thread(self._update, window.summary_id, summary)
        else:
            window.summary_id = await self._write(caller, method, "auth", {}, "RESOURCE_EXHAUSTED", summary,
                                                  context.peer() or "")
        return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed authentications from {key}; try again in {self.limiter.retry_after_s(window)} s")

    # what
    async def _audit(self, method: str, action: str, refusals_only: bool, principal: Principal, request, response,
                     error: BaseException | None, context, peer: str) -> None:
        if not action or (refusals_only and error is None):
            return
        going_away = isinstance(error, (asyncio.CancelledError, GeneratorExit))
        if error is None:
            outcome, detail = "OK", ""
        elif going_away:  # the caller went away
            outcome, detail = "CANCELLED", "the call ended before it completed"
        else:
            code = context.code()
            outcome = code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"
            detail = context.details() or type(error).__name__
        # A call being torn down may not await any more: its (rare) entry is written here and now.
        await self._write(principal, method, action, {**_objects(request), **_objects(response)}, outcome, detail,
                          peer, in_thread=not going_away)

    async def _write(self, principal: Principal, method: str, action: str, objects: dict[str, str], outcome: str,
                     detail: str, peer: str, in_thread: bool = True) -> str:
        entry = AuditRecord(new_id("audit"), now_ms(), principal.name, principal.role, action, method, objects,
                            outcome, clip(detail, AUDIT_DETAIL_CHARS), clip(peer, 100))
        try:
            if in_thread:
                await _in_audit_thread(self.store.add_audit, entry)
            else:
                self.store.add_audit(entry)
        except Exception:  # the audit log must not take the API down with it; the log says so loudly
            log.exception("could not write audit entry %s", entry)
        return entry.audit_id

    def _update(self, audit_id: str, detail: str) -> None:
        try:
            self.store.update_audit_detail(audit_id, clip(detail, AUDIT_DETAIL_CHARS))
        except Exception:
            log.exception("could not update audit entry %s", audit_id)


class _CheckedStream:
    """A request stream whose every message is checked against the size limits; remembers the
    first message (it names the objects for the audit)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.first = None

    def __aiter__(self) -> "_CheckedStream":
        return self

    async def __anext__(self):
        message = await self.inner.__anext__()
        if self.first is None:
            self.first = message
        check_request(message)  # InvalidArgument: the servicer maps it to its status
        return message


async def _checked(request, context):
    """The request, checked against the size limits (a stream: checked as it is read)."""
    if not hasattr(request, "DESCRIPTOR"):
        return _CheckedStream(request)
    try:
        check_request(request)
    except MasterError as exc:
        await context.abort(exc.status, str(exc))
    return request


def _guarded(handler: grpc.RpcMethodHandler, admit, audit) -> grpc.RpcMethodHandler:
    """The same handler, admitting the caller first, checking the request's sizes and auditing
    the outcome."""
    serde = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request, context):
            peer = context.peer() or ""  # read while the call is alive (see stream_response)
            principal = await admit(context)
            _current.set(principal)
            try:
                request = await _checked(request, context)
                response = await inner(request, context)
            except BaseException as exc:
                await audit(principal, request, None, exc, context, peer)
                raise
            await audit(principal, request, response, None, context, peer)
            return response

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary_response, **serde)

    inner = handler.unary_stream or handler.stream_stream
    if not inspect.isasyncgenfunction(inner):
        raise TypeError(f"{inner!r}: streaming servicer methods must be async generators")

    async def stream_response(request, context):
        # The peer is read now: asked for while a stream a client cancelled is being torn down,
        # grpc's context.peer() crashed the master (SIGSEGV in bench-grid's cancelled watches).
        peer = context.peer() or ""
        principal = await admit(context)
        _current.set(principal)
        try:
            request = await _checked(request, context)
            async for item in inner(request, context):
                yield item
        except BaseException as exc:
            await audit(principal, request, None, exc, context, peer)
            raise
        await audit(principal, request, None, None, context, peer)

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(stream_response, **serde)
