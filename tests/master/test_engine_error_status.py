"""The one boundary of engine errors on the gRPC side: an ``EngineError`` an engine raises inside an
RPC reaches the caller as INVALID_ARGUMENT with the engine's message (over real gRPC on 127.0.0.1),
a master error keeps its own status, and anything else stays INTERNAL without its message."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rtgrid.engines.dose.machine import load_machine
from rtgrid.master.errors import NotFound
from rtgrid.master.services.common import stream, unary

SERVICE = "rtgrid.test.Boundary"


class _Servicer:
    @unary
    async def Machine(self, request: bytes, context) -> bytes:
        return load_machine(request.decode()).id.encode()  # an unknown id: MachineModelError

    @unary
    async def Missing(self, request: bytes, context) -> bytes:
        raise NotFound("no such case")

    @unary
    async def Broken(self, request: bytes, context) -> bytes:
        raise KeyError("secret detail")

    @stream
    async def Machines(self, request: bytes, context):
        for name in request.decode().split(","):
            yield load_machine(name).id.encode()


async def _calls() -> dict[str, tuple[grpc.StatusCode, str]]:
    servicer = _Servicer()
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name))
                for name in ("Machine", "Missing", "Broken")}
    handlers["Machines"] = grpc.unary_stream_rpc_method_handler(servicer.Machines)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    out = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            calls = {
                "Machine": channel.unary_unary(f"/{SERVICE}/Machine")(b"no-such-linac", timeout=10),
                "Missing": channel.unary_unary(f"/{SERVICE}/Missing")(b"", timeout=10),
                "Broken": channel.unary_unary(f"/{SERVICE}/Broken")(b"", timeout=10),
            }
            for name, call in calls.items():
                try:
                    await call
                    out[name] = (grpc.StatusCode.OK, "")
                except grpc.aio.AioRpcError as exc:
                    out[name] = (exc.code(), exc.details())
            received = []
            try:
                async for item in channel.unary_stream(f"/{SERVICE}/Machines")(b"rtgrid-standard-6mv,nope", timeout=10):
                    received.append(item)
            except grpc.aio.AioRpcError as exc:
                out["Machines"] = (exc.code(), exc.details())
            out["Machines received"] = (grpc.StatusCode.OK, repr(received))
    finally:
        await server.stop(None)
    return out


@pytest.mark.timeout(60)
def test_engine_errors_are_invalid_argument_with_their_message():
    out = asyncio.run(_calls())
    code, details = out["Machine"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no machine 'no-such-linac'" in details
    assert out["Missing"] == (grpc.StatusCode.NOT_FOUND, "no such case")
    code, details = out["Broken"]
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details and "KeyError" in details
    # a stream: what came before the engine's refusal arrives, then INVALID_ARGUMENT naming the input
    assert out["Machines received"][1] == repr([b"rtgrid-standard-6mv"])
    code, details = out["Machines"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no machine 'nope'" in details
