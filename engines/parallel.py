"""How many threads the engines' hot loops use, and an order-keeping map over them.

The engines split their work into blocks that do not share outputs (voxel blocks of the influence
matrix or of a dose, slabs of the ray trace, row blocks of the optimizer's matrix products, cases
of a training set) and run them on a thread pool: numpy, scipy and torch release the GIL in the
heavy parts. Every block is computed exactly as on one thread and the results are joined in
block order, so the output is bitwise identical whatever the thread count.

The count comes from, first to last: the caller's ``workers`` argument, the environment variable
``RTGRID_ENGINE_THREADS`` (an agent sets it from its ``--cpus``), the CPUs this process may run on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from threadpoolctl import ThreadpoolController

from rtgrid.engines.errors import EngineError

ENGINE_THREADS_ENV = "RTGRID_ENGINE_THREADS"
"""Environment variable: threads of the engines' hot loops (a positive integer)."""

_blas_controller: ThreadpoolController | None = None

T = TypeVar("T")
R = TypeVar("R")


class EngineThreadsError(EngineError, ValueError):
    """A thread count that is not a positive integer."""


def engine_threads(workers: int | None = None) -> int:
    """Threads for the engines' hot loops.

    Parameters
    ----------
    workers
        An explicit count; ``None`` reads ``RTGRID_ENGINE_THREADS``, else takes the CPUs this
        process may run on (its affinity mask).

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    EngineThreadsError
        ``workers`` or the environment variable is not a positive integer.
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise EngineThreadsError(f"workers must be a positive integer, got {workers!r}")
        return workers
    text = os.environ.get(ENGINE_THREADS_ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise EngineThreadsError(f"{ENGINE_THREADS_ENV} must be a positive integer, got {text!r}")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks on this platform
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, on ``workers`` threads when there is more than one item.

    The results keep the order of ``items``; an exception in any call is raised here.
    """
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    return list(ordered_imap(fn, items, min(workers, len(items))))


def ordered_imap(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``(fn(x) for x in items)`` on ``workers`` threads, lazily: at most ``2 * workers`` calls run
    or wait ahead of the consumer, so a long stream of large results (cases of a training set)
    is not all held at once. Results keep the order of ``items``; an exception is raised in turn.
    """
    if workers <= 1:
        yield from (fn(x) for x in items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtgrid-engine") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextmanager
def blas_threads(limit: int = 1) -> Iterator[None]:
    """BLAS libraries (numpy's and scipy's OpenBLAS) limited to ``limit`` threads inside the block.

    For code whose parallel work runs on the engines' own threads: after each call OpenBLAS keeps
    its idle threads spinning for a while, and on 2 cores they took the CPU from the optimizer's
    matrix products (TG-119, 3 mm: 80 iterations in 11.8 s, 8.9 s with one BLAS thread).
    Limits are process-wide and restored on exit.
    """
    global _blas_controller
    if _blas_controller is None:
        import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, so that the controller finds it)

        _blas_controller = ThreadpoolController()
    with _blas_controller.limit(limits=limit, user_api="blas"):
        yield
