"""Job events: persisted first, then announced to live watchers of the job."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from .ids import now_ms
from .store.base import Store
from .store.records import EventRecord


class EventBus:
    """Appends events to the store and wakes the watchers of that job.

    ``publish`` may be called from worker threads; watchers live on the server's event loop.
    """

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def publish(self, job_id: str, type: str, state: str, **fields) -> EventRecord:
        stored = self._store.append_event(EventRecord(job_id, 0, now_ms(), type, state, **fields))
        self._loop.call_soon_threadsafe(self._wake, job_id)
        return stored

    def _wake(self, job_id: str) -> None:
        for waiter in self._waiters.get(job_id, ()):
            waiter.set()

    async def wait(self, job_id: str, timeout_s: float) -> None:
        """Return when an event of ``job_id`` is published, or after ``timeout_s``."""
        waiter = asyncio.Event()
        self._waiters[job_id].add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters[job_id].discard(waiter)
            if not self._waiters[job_id]:
                del self._waiters[job_id]
