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
call that uploads, views, downloads, submits, cancels or administers, and of every refusal.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from contextvars import ContextVar
from dataclasses import dataclass

import grpc

from rtgrid.protos.v1 import admin_pb2, agent_pb2, hospital_pb2

from ..ids import new_id, now_ms
from ..store.base import Store
from ..store.records import AuditRecord
from .certs import AGENT_ROLE, CLIENT_ROLES, OPERATOR_ROLE, client_role
from .tokens import hospital_for_token

log = logging.getLogger(__name__)

HOSPITAL_ROLE = "hospital"
LOCAL_ROLE = "local"
_HOSPITAL_API = hospital_pb2.DESCRIPTOR.services_by_name["HospitalService"].full_name
_ADMIN_API = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
_AGENT_API = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
SERVICE_ROLES = {_HOSPITAL_API: HOSPITAL_ROLE, _ADMIN_API: OPERATOR_ROLE, _AGENT_API: AGENT_ROLE}

# What the audit log calls each call; methods not named here are logged only when refused
# (chunks, heartbeats: many per minute and nothing an auditor asks about).
_ACTIONS = {
    _HOSPITAL_API: {
        "CreateCase": "upload", "FinishUpload": "upload", "CommitCase": "upload", "DeleteCase": "upload",
        "GetCase": "view", "ListCases": "view", "GetJob": "view", "WatchJob": "view", "ListArtifacts": "view",
        "SubmitJob": "submit", "CancelJob": "cancel", "DownloadArtifact": "download",
    },
    _ADMIN_API: {"CancelJob": "cancel", "*": "admin"},
    _AGENT_API: {"Register": "agent", "Drain": "agent", "Deregister": "agent"},
}
# Request and response fields that name objects, recorded with each audit entry.
_OBJECT_FIELDS = ("case_id", "job_id", "artifact_id", "upload_id", "file_id", "agent_id", "device_id", "name")


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
    if message is None or not hasattr(message, "DESCRIPTOR"):
        return {}
    return {f: str(getattr(message, f)) for f in _OBJECT_FIELDS if f in message.DESCRIPTOR.fields_by_name
            and getattr(message, f)}


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
    insecure : bool
        Plaintext loopback mode: every caller is :data:`LOCAL` (no credentials checked).
    """

    def __init__(self, store: Store, insecure: bool = False) -> None:
        self.store = store
        self.insecure = insecure

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        role = SERVICE_ROLES.get(service)
        if handler is None or role is None:
            return handler
        actions = _ACTIONS.get(service, {})
        name = f"{service.rpartition('.')[2]}/{method}"  # e.g. HospitalService/GetCase
        return _guarded(handler, functools.partial(self._admit, name, role),
                        functools.partial(self._audit, name, actions.get(method, actions.get("*", ""))))

    # who
    def _identify(self, context: grpc.aio.ServicerContext) -> list[Principal]:
        found = []
        cert = (context.auth_context() or {}).get("x509_pem_cert")
        if cert:  # present only where TLS asked for it and verified it against the CA
            found.append(_certificate_principal(cert[0]))
        token = _bearer(context)
        if token is not None:
            hospital = hospital_for_token(self.store, token)
            if hospital is None:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "the API token is unknown or revoked")
            found.append(Principal(hospital.name, HOSPITAL_ROLE))
        return found

    async def _admit(self, method: str, role: str, context) -> Principal:
        if self.insecure:
            return LOCAL
        callers: list[Principal] = []
        try:
            callers = self._identify(context)
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
            caller = callers[0] if callers else Principal("", "")
            self._write(caller, method, "auth", {}, refused.code.name, str(refused), context)
            await context.abort(refused.code, str(refused))
            raise  # abort raises; this line is never reached

    # what
    def _audit(self, method: str, action: str, principal: Principal, request, response, error: BaseException | None,
               context) -> None:
        if not action:
            return
        if error is None:
            outcome, detail = "OK", ""
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the caller went away
            outcome, detail = "CANCELLED", "the call ended before it completed"
        else:
            code = context.code()
            outcome = code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"
            detail = context.details() or type(error).__name__
        self._write(principal, method, action, {**_objects(request), **_objects(response)}, outcome, detail, context)

    def _write(self, principal: Principal, method: str, action: str, objects: dict[str, str], outcome: str,
               detail: str, context) -> None:
        entry = AuditRecord(new_id("audit"), now_ms(), principal.name, principal.role, action, method, objects,
                            outcome, str(detail)[:500], context.peer() or "")
        try:
            self.store.add_audit(entry)
        except Exception:  # the audit log must not take the API down with it; the log says so loudly
            log.exception("could not write audit entry %s", entry)


def _guarded(handler: grpc.RpcMethodHandler, admit, audit) -> grpc.RpcMethodHandler:
    """The same handler, admitting the caller first and auditing the outcome."""
    serde = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request, context):
            principal = await admit(context)
            _current.set(principal)
            try:
                response = await inner(request, context)
            except BaseException as exc:
                audit(principal, request, None, exc, context)
                raise
            audit(principal, request, response, None, context)
            return response

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary_response, **serde)

    inner = handler.unary_stream or handler.stream_stream
    if not inspect.isasyncgenfunction(inner):
        raise TypeError(f"{inner!r}: streaming servicer methods must be async generators")

    async def stream_response(request, context):
        principal = await admit(context)
        _current.set(principal)
        try:
            async for item in inner(request, context):
                yield item
        except BaseException as exc:
            audit(principal, request, None, exc, context)
            raise
        audit(principal, request, None, None, context)

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(stream_response, **serde)
