"""JobContext's lazy attributes under threads: no lock shared between contexts crosses the store's.

Found under load (bench.load): a submit reads its context inside a store transaction while a shard
of another job prepares its own context; with ``functools.cached_property`` (Python 3.11: one lock
per property for all instances) the two threads waited on each other for ever.
"""

from __future__ import annotations

import threading
import time

from rtgrid.master.blobs import BlobStore
from rtgrid.master.ids import new_id, now_ms
from rtgrid.master.jobs.base import JobContext
from rtgrid.master.store.records import QUEUED, CaseRecord, JobRecord, SeriesRecord
from rtgrid.master.store.sqlite import SqliteStore

JOIN_S = 20.0


def test_contexts_of_two_threads_do_not_deadlock_with_a_transaction(tmp_path):
    store, blobs = SqliteStore(tmp_path / "db.sqlite"), BlobStore(tmp_path / "blobs")
    case = CaseRecord(new_id("case"), "c", False, now_ms())
    store.add_case(case)
    store.add_series(SeriesRecord(new_id("series"), case.case_id, "CT", "1.2", "1.3", 4, 8, 8, [1.0, 1.0, 1.0],
                                  "0" * 64, "1" * 64, []))
    job = JobRecord(new_id("job"), case.case_id, "contour", QUEUED, 0, {}, "contour", now_ms())
    in_transaction, reading = threading.Event(), threading.Event()
    found: list[str] = []

    def submit_like() -> None:  # holds the store's lock, then reads its own context
        with store.transaction():
            in_transaction.set()
            reading.wait(JOIN_S)
            time.sleep(0.2)  # the other thread is now inside its context's attribute, waiting for the store
            found.append(JobContext(store, blobs, job).series_record.series_id)

    def prepare_like() -> None:  # reads another context's attribute, which needs the store's lock
        in_transaction.wait(JOIN_S)
        reading.set()
        found.append(JobContext(store, blobs, job).series_record.series_id)

    threads = [threading.Thread(target=f, daemon=True) for f in (submit_like, prepare_like)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "the two threads wait on each other"
    assert len(found) == 2 and found[0] == found[1]
