"""The store, on SQLite and on PostgreSQL (every test that takes ``store`` or ``location`` runs on
both): priority order of ready shards, gap-free event sequences, atomic transactions, restarts,
private file modes (SQLite), pages of jobs, clipped text, what a case's upload holds."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from rtgrid.master.store.factory import open_store
from rtgrid.master.store.records import (
    CaseRecord, EventRecord, FileRecord, JobRecord, ModelRecord, ShardRecord, UploadRecord,
)
from rtgrid.master.store.sqlite import MAX_STORED_TEXT_CHARS, SqliteStore

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def location(request, tmp_path) -> str:
    """Where a new, empty store lives: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "rtgrid.sqlite")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(location):
    s = open_store(location)
    yield s
    s.close()


def _job(store, job_id: str, priority: int, created_ms: int, state: str = "queued", shards: int = 2) -> None:
    store.add_job(JobRecord(job_id, "case-1", "contour", state, priority, {}, "contour", created_ms))
    store.add_shards([ShardRecord(f"{job_id}-s{i}", job_id, "contour", i, "queued") for i in range(shards)])


def test_ready_shards_by_priority_then_age_then_index(store):
    _job(store, "old-low", priority=0, created_ms=1)
    _job(store, "new-high", priority=5, created_ms=3)
    _job(store, "old-high", priority=5, created_ms=2)
    _job(store, "done", priority=99, created_ms=0, state="cancelled")
    order = [s.shard_id for s in store.ready_shards()]
    assert order == ["old-high-s0", "old-high-s1", "new-high-s0", "new-high-s1", "old-low-s0", "old-low-s1"]


def test_event_sequence_has_no_gaps_under_concurrency(store):
    def publish(n: int) -> None:
        for _ in range(n):
            store.append_event(EventRecord("job-1", 0, 0, "log", "running", message="x"))

    threads = [threading.Thread(target=publish, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in store.events_after("job-1", 0)] == list(range(1, 201))
    assert [e.seq for e in store.events_after("job-1", 150)] == list(range(151, 201))


def test_transaction_rolls_back_as_a_whole(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            _job(store, "half", priority=0, created_ms=1)
            raise RuntimeError("disk full")
    assert store.get_job("half") is None and store.ready_shards() == []


def test_restart_requeues_running_shards_and_keeps_finished(location):
    first = open_store(location)
    _job(first, "j", priority=0, created_ms=1, state="running", shards=3)
    shards = first.list_shards("j", "contour")
    shards[0].state, shards[0].result_sha256 = "succeeded", "a" * 64
    shards[1].state, shards[1].agent_id = "running", "agent-x"
    for s in shards[:2]:
        first.update_shard(s)
    first.close()
    second = open_store(location)
    assert second.requeue_running_shards() == 1
    states = {s.index: (s.state, s.result_sha256) for s in second.list_shards("j", "contour")}
    assert states == {0: ("succeeded", "a" * 64), 1: ("queued", ""), 2: ("queued", "")}
    second.close()


def test_store_file_and_folder_are_private(tmp_path):
    """The store holds the audit, orders, case labels and token digests: 0600 in a 0700 folder,
    whatever the umask and the folder's mode were."""
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    old_umask = os.umask(0o022)
    try:
        s = SqliteStore(folder / "rtgrid.sqlite")
        _job(s, "j", priority=0, created_ms=1)  # the WAL and shm files exist now
        s.close()
        again = SqliteStore(folder / "rtgrid.sqlite")  # and an existing store is made private too
        again.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    made = sorted(folder.glob("rtgrid.sqlite*"))
    assert made and {p.name: stat.S_IMODE(p.stat().st_mode) for p in made} == {p.name: 0o600 for p in made}


def test_jobs_page_newest_first_and_resume_after_a_job(store):
    for i in range(7):
        _job(store, f"job-{i}", priority=0, created_ms=100 + i // 2, shards=0)  # pairs share a time
    first = [j.job_id for j in store.list_jobs(limit=3)]
    rest = [j.job_id for j in store.list_jobs(limit=10, after_job_id=first[-1])]
    assert first + rest == ["job-6", "job-5", "job-4", "job-3", "job-2", "job-1", "job-0"]
    assert [j.job_id for j in store.list_jobs(["cancelled"], 10)] == []
    with pytest.raises(KeyError):
        store.list_jobs(limit=1, after_job_id="job-none")


def test_text_the_master_writes_is_clipped(store):
    store.add_job(JobRecord("j", "case-1", "contour", "failed", 0, {}, "contour", 1, error="e" * 100_000))
    stored = store.get_job("j").error
    assert len(stored) < MAX_STORED_TEXT_CHARS + 30 and stored.endswith("(100000 characters)")
    event = store.append_event(EventRecord("j", 0, 0, "log", "failed", message="m" * 100_000))
    assert len(store.events_after("j", event.seq - 1)[0].message) < MAX_STORED_TEXT_CHARS + 30


def test_cases_page_oldest_first_per_hospital(store):
    for i in range(5):
        store.add_case(CaseRecord(f"case-{i}", "x", False, 10 + i // 2, "st-luke" if i != 2 else "county"))
    first = store.list_cases("st-luke", 2)
    rest = store.list_cases("st-luke", 10, first[-1].case_id)
    assert [c.case_id for c in first + rest] == ["case-0", "case-1", "case-3", "case-4"]
    assert len(store.list_cases()) == 5


def test_case_usage_counts_files_pending_files_and_uploads(store):
    """What an upload's limits count, as a query: a case's files (an add's pending ones too) and
    open uploads, not another case's."""
    store.add_case(CaseRecord("case-a", "x", False, 1, "st-luke"))
    store.add_case(CaseRecord("case-b", "x", False, 2, "st-luke"))
    assert store.case_usage("case-a") == (0, 0)
    store.add_files([FileRecord(f"file-{i}", "case-a", f"{i}.dcm", f"{i}" * 64, 100 + i, "CT", f"1.2.{i}")
                     for i in range(3)])
    store.add_file(FileRecord("file-p", "case-a", "mr.dcm", "e" * 64, 1000, "MR", "1.3", pending=True))
    store.add_upload(UploadRecord("up1", "case-a", "next.dcm", 5000, "f" * 64, 10, 1))
    store.add_file(FileRecord("file-b", "case-b", "0.dcm", "0" * 64, 7, "CT", "1.4"))
    assert store.case_usage("case-a") == (5, 100 + 101 + 102 + 1000 + 5000)
    assert store.case_usage("case-b") == (1, 7)


def test_two_connections_take_turns_on_event_sequences(location):
    """Two stores on one database (two processes, or a master and a tool): each transaction holds
    the database's write lock, so next-sequence reads never race (the scheduler relies on it)."""
    stores = [open_store(location), open_store(location)]

    def publish(s) -> None:
        for _ in range(40):
            s.append_event(EventRecord("job-1", 0, 0, "log", "running", message="x"))

    threads = [threading.Thread(target=publish, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in stores[0].events_after("job-1", 0)] == list(range(1, 161))
    for s in stores:
        s.close()


def test_a_refused_model_leaves_the_transaction_usable(store):
    """A duplicate model is KeyError, and the caller's transaction goes on without it."""
    model = ModelRecord("a" * 64, "hn", "1", "unet", "{}", "b" * 64, 10, 1)
    with store.transaction():
        store.add_model(model)
        with pytest.raises(KeyError, match="already registered"):
            store.add_model(ModelRecord("c" * 64, "hn", "1", "unet", "{}", "d" * 64, 10, 2))
        store.add_case(CaseRecord("case-1", "x", False, 1))
    assert [m.sha256 for m in store.list_models()] == ["a" * 64] and store.get_case("case-1") is not None
    with pytest.raises(KeyError):
        store.add_model(model)


def test_updates_keep_rows_in_insertion_order(store):
    _job(store, "j", priority=0, created_ms=1, shards=3)
    first = store.list_shards("j")
    first[0].state = "running"
    store.update_shard(first[0])
    job = store.get_job("j")
    job.state = "running"
    store.update_job(job)
    assert [s.shard_id for s in store.list_shards("j")] == [s.shard_id for s in first]
    assert store.get_shard(first[0].shard_id).state == "running" and store.get_job("j").state == "running"
    assert store.list_cases(limit=-1) == [] and store.count_shards("queued") == 2


def test_a_nul_in_an_error_message_is_spelled_out(store):
    store.add_job(JobRecord("j", "case-1", "contour", "failed", 0, {}, "contour", 1, error="bad \x00 input"))
    assert store.get_job("j").error == "bad \\x00 input"


def test_other_databases_are_refused_without_echoing_the_url():
    with pytest.raises(ValueError, match="mysql://\\.\\.\\.: give a SQLite file path") as info:
        open_store("mysql://admin:s3cret@db.example.org/rtgrid")
    assert "s3cret" not in str(info.value)


def test_postgres_store_reconnects_after_a_server_restart(postgres):
    import psycopg

    s = open_store(postgres.new_database())
    s.add_case(CaseRecord("case-1", "x", False, 1))
    postgres.pg_ctl("restart")
    with pytest.raises(psycopg.OperationalError):
        s.get_case("case-1")  # the statement that meets the lost connection fails
    assert s.get_case("case-1") is not None  # the next one reconnects
    s.add_case(CaseRecord("case-2", "x", False, 2))
    assert [c.case_id for c in s.list_cases()] == ["case-1", "case-2"]
    s.close()
