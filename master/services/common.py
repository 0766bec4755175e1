"""What every servicer shares: domain errors become gRPC status codes, in one place."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from rtgrid.engines.errors import EngineError

from ..errors import InvalidArgument, MasterError
from ..security.limits import clip

log = logging.getLogger("rtgrid.master.rpc")
# Longest status message: a refusal echoes what the caller sent, and gRPC carries the message in
# its trailers (which have their own, small size limit).
MAX_STATUS_MESSAGE_CHARS = 2000


# A listing page stops before its entries outgrow this many bytes (or half the message limit, if
# that is smaller), whatever its `limit`; records are read from the store this many at a time.
PAGE_BYTES = 1 << 20
PAGE_BATCH = 50


def paginate(fetch: Callable[[str, int], list[Any]], to_proto: Callable[[Any], Any], key: Callable[[Any], str],
             page_token: str, limit: int, budget_bytes: int) -> tuple[list[Any], str]:
    """One page of a listing and the token of the next (empty after the last page).

    Parameters
    ----------
    fetch : callable
        ``fetch(after, n)``: up to ``n`` records listed after the record whose key is ``after``
        (the first records for ``""``); raises ``KeyError`` for an unknown key.
    to_proto, key : callable
        A record's message, and its key (what a page token holds).
    page_token : str
        Where the page starts: empty, or the ``next_page_token`` of the page before.
    limit : int
        Most records in the page.
    budget_bytes : int
        Most serialized bytes in the page; it always holds at least one record.

    Raises
    ------
    InvalidArgument
        A page token that names no record of the listing.
    """
    protos: list[Any] = []
    size, after = 0, page_token
    try:
        while len(protos) < limit:
            wanted = min(PAGE_BATCH, limit - len(protos))
            batch = fetch(after, wanted)
            for record in batch:
                proto = to_proto(record)
                if protos and size + proto.ByteSize() > budget_bytes:
                    return protos, after
                protos.append(proto)
                size += proto.ByteSize()
                after = key(record)
            if len(batch) < wanted:
                return protos, ""
        return protos, after if fetch(after, 1) else ""
    except KeyError:
        raise InvalidArgument(f"page_token {clip(page_token, 80)!r} is not a page of this listing") from None


def listed(records: Sequence[Any], key: Callable[[Any], str]) -> Callable[[str, int], list[Any]]:
    """The ``fetch`` of :func:`paginate` over a listing the store returns whole, in its order.

    For listings that stay small in the store (agents, hospitals, devices, models, one job's
    shards or artifacts) but whose reply must still page: ``records`` is read once per page.

    Parameters
    ----------
    records : sequence
        The whole listing, in the order the pages give it.
    key : callable
        A record's key, unique in the listing (what a page token holds).
    """
    position = {key(r): i for i, r in enumerate(records)}

    def fetch(after: str, n: int) -> list[Any]:
        start = position[after] + 1 if after else 0  # KeyError: a token that names no record
        return list(records[start:start + n])

    return fetch


def page_limit(limit: int, default: int) -> int:
    """A request's ``limit``: its value, or ``default`` for 0 (an old client's request).

    Raises
    ------
    InvalidArgument
        A negative limit.
    """
    if limit < 0:
        raise InvalidArgument(f"limit must not be negative, got {limit}")
    return limit or default


def unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Map ``MasterError`` to its status and an engine's ``EngineError`` (input it cannot work with) to
    INVALID_ARGUMENT with its message; anything else is INTERNAL, logged with its stack."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except (MasterError, EngineError) as exc:
            message = clip(exc, MAX_STATUS_MESSAGE_CHARS)
            log.info("%s refused: %s", method.__name__, message)
            await context.abort(_status(exc), message)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable(method.__name__, exc))
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {type(exc).__name__}")

    return wrapper


def threaded(method: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a synchronous servicer method in a thread (contextvars, so the caller's identity, go
    along): its store and blob calls must not stall every other call on the event loop."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        return await asyncio.to_thread(method, self, request, context)

    return wrapper


# The job RPCs' store calls (submit, watch, get, cancel) have threads of their own: in the shared
# default pool they queued behind uploads decoding whole series, and a job's first event with them.
# Watch reads after the first have their own again: every event of every watched job wakes its watchers for a read,
# and a burst of them (a wave of 50 hospitals) held submits in the queue for up to 160 ms.
JOB_RPC_THREADS = 4
WATCH_READ_THREADS = 4
_job_rpc_pool = ThreadPoolExecutor(JOB_RPC_THREADS, thread_name_prefix="rtgrid-job-rpc")
_watch_read_pool = ThreadPoolExecutor(WATCH_READ_THREADS, thread_name_prefix="rtgrid-watch-read")


async def job_thread(func: Callable[..., Any], *args: Any, watch: bool = False) -> Any:
    """``await func(*args)`` in the job RPCs' own threads (``watch``: the watch reads' threads),
    as :func:`asyncio.to_thread` does in the shared pool (contextvars, so the caller's identity,
    go along).

    Only short store calls belong there: a call that waits on an agent or decodes a volume holds
    one of the few threads every submit and watch shares (a submit naming a model with a body
    region reads its CT once: rare, and bounded by the pool).
    """
    call = functools.partial(contextvars.copy_context().run, func, *args)
    pool = _watch_read_pool if watch else _job_rpc_pool
    return await asyncio.get_running_loop().run_in_executor(pool, call)


def stream(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """As :func:`unary`, for server-streaming methods."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            async for item in method(self, request, context):
                yield item
        except (MasterError, EngineError) as exc:
            message = clip(exc, MAX_STATUS_MESSAGE_CHARS)
            log.info("%s refused: %s", method.__name__, message)
            await context.abort(_status(exc), message)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _undecodable(method.__name__, exc))
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {type(exc).__name__}")

    return wrapper


def _undecodable(method_name: str, exc: DecodeError) -> str:
    """The refusal of a streamed message that does not parse as the method's request type (a
    client's own framing: gRPC hands the stream's messages to the servicer undecoded)."""
    message = clip(f"{method_name}: a message of the request stream is not valid: {exc}", MAX_STATUS_MESSAGE_CHARS)
    log.info("%s refused: %s", method_name, message)
    return message


def _status(exc: MasterError | EngineError) -> grpc.StatusCode:
    """The one place an engine's refusal becomes a gRPC status: the caller's input is to blame."""
    return exc.status if isinstance(exc, MasterError) else grpc.StatusCode.INVALID_ARGUMENT
