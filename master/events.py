"""Job events: persisted first, then announced to live watchers of the job."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

from .ids import now_ms
from .store.base import Store
from .store.records import EventRecord

# What a watcher's read returns: the events after the last one it yielded (in order, at most a
# page), and whether the job has ended with nothing after them.
WatchRead = Callable[[int], Awaitable[tuple[list[EventRecord], bool]]]


class EventBus:
    """Appends events to the store and wakes the watchers of that job.

    ``publish`` may be called from worker threads; watchers live on the server's event loop.
    Only jobs with a live watcher have an entry here: a finished watch leaves nothing behind.
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

    def watchers(self) -> int:
        """Live watch subscriptions (all jobs)."""
        return sum(len(w) for w in self._waiters.values())

    async def follow(self, job_id: str, after_seq: int, read: WatchRead, poll_s: float,
                     page: int) -> AsyncIterator[EventRecord]:
        """The job's events after ``after_seq``, in order, as they are published, until it has ended.

        The watcher subscribes before its first read and clears its flag before each read, so an
        event published while it reads or yields wakes it at once: it is woken by the publish,
        not by a poll (``poll_s`` only bounds how long it trusts that, e.g. for events another
        process wrote).

        Parameters
        ----------
        job_id : str
            The job watched.
        after_seq : int
            The last event the caller has seen (0: from the first).
        read : callable
            ``await read(seq)``: the events after ``seq`` (at most ``page``, in order) and whether
            the job has ended with nothing after them; it raises to end the watch (e.g. a share
            revoked meanwhile).
        poll_s : float
            Longest wait (s) without a wake-up before reading again.
        page : int
            The most events one read returns; a full page is followed by the next read at once.
        """
        flag = asyncio.Event()
        self._waiters[job_id].add(flag)
        try:
            seq = after_seq
            while True:
                flag.clear()
                events, ended = await read(seq)
                for event in events:
                    seq = event.seq
                    yield event
                if ended:
                    return
                if len(events) >= page or flag.is_set():
                    continue
                try:
                    await asyncio.wait_for(flag.wait(), poll_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._waiters[job_id].discard(flag)
            if not self._waiters[job_id]:
                del self._waiters[job_id]
