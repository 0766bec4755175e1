"""Disk full: the master's blob store lives on a small tmpfs that the test fills for real.

An upload whose chunks find no room, a commit whose volume finds no room, and a job whose shard
results find no room each fail with RESOURCE_EXHAUSTED (or a failed job) whose message names the
blob store's folder; the store stays consistent (no half case, no orphan record or blob, the
partial upload holds exactly what the store says); once there is room again, the same master
serves the same requests to the end.

Mounting a tmpfs needs root (CAP_SYS_ADMIN): elsewhere the test skips and says so.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import zlib
from pathlib import Path

import grpc
import pytest

from rtgrid.client.sdk import state_name
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.master.codec import unpack
from rtgrid.protos.v1 import common_pb2, hospital_pb2

from .conftest import Grid, start_master_with, stop_process

SHAPE, SPACING = (16, 128, 128), (4.0, 4.0, 5.0)
# Room for the built-in model packages the master registers there (about 12 MB of weights) and the tests' data.
DISK_BYTES = 32 << 20
JOB_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    mount = tmp_path_factory.mktemp("blobdisk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the blob store (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def disk_grid(ray_cluster, small_disk, tmp_path_factory):
    """A master whose blobs live on the small disk (its SQLite store does not), with one agent."""
    data_dir = tmp_path_factory.mktemp("diskfull")
    (data_dir / "blobs").symlink_to(small_disk)
    proc, ready = start_master_with(data_dir, ray_cluster.address, None)
    grid = Grid(data_dir, ray_cluster.address, None, target=ready["target"], internal_target=ready["internal_target"],
                master=proc)
    grid.start_agent("disk-agent")
    yield grid
    for agent in grid.agents:
        stop_process(agent)
    stop_process(proc)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("diskct"), shape=SHAPE, spacing_mm=SPACING, seed=8).ct_dir


def _fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file until only about ``leave_bytes`` are free (0: until the disk refuses)."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    want = max(0, stat.f_bavail * stat.f_frsize - leave_bytes)
    with filler.open("wb", buffering=0) as fh:
        try:
            while want > 0 or leave_bytes == 0:
                step = min(1 << 20, want) if want > 0 else 4096
                fh.write(b"\0" * step)
                want -= step
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _consistent(grid: Grid) -> dict[str, int]:
    """Counts of the store's rows; and every record's blob exists, and every blob has a record."""
    with sqlite3.connect(grid.data_dir / "rtgrid.sqlite") as db:
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("cases", "files", "uploads", "series", "jobs", "artifacts")}
        referenced = {r[0] for q in ("SELECT sha256 FROM files", "SELECT volume_sha256 FROM series",
                                     "SELECT meta_sha256 FROM series", "SELECT sha256 FROM artifacts",
                                     "SELECT weights_sha256 FROM models",  # the built-in models' weights
                                     "SELECT result_sha256 FROM shards WHERE result_sha256 != ''")
                      for r in db.execute(q)}
        uploads = list(db.execute("SELECT upload_id, committed_bytes FROM uploads"))
    blobs = grid.data_dir / "blobs"
    stored = {p.parent.name + p.name for p in blobs.glob("??/*") if not p.name.startswith(".tmp-")}
    assert not list(blobs.glob("??/.tmp-*")), "a half-written blob was left behind"
    assert stored == referenced, (stored ^ referenced)
    with sqlite3.connect(grid.data_dir / "rtgrid.sqlite") as db:
        results = [r[0] for r in db.execute("SELECT result_sha256 FROM shards WHERE result_sha256 != ''")]
        artifact_shas = {r[0] for r in db.execute("SELECT sha256 FROM artifacts")}
    for sha in results:  # a published file is kept once: as its artifact, not again inside the result
        kept = unpack((blobs / sha[:2] / sha[2:]).read_bytes())
        assert not [k for k in kept if k.startswith("file:")]
        assert {a["sha256"] for a in kept.get("artifacts", [])} <= artifact_shas
    for upload_id, committed in uploads:
        assert (blobs / "partial" / f"{upload_id}.part").stat().st_size == committed
    return counts


def _still_serving(client) -> None:
    case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="still serving"))
    client.call(client.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=case.case_id))


def _refused_for_room(call, blob_dir: Path) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    message = caught.value.details()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (caught.value.code(), message)
    assert "no room" in message and str(blob_dir) in message, message


def test_upload_chunks_find_no_room(disk_grid, small_disk, ct_dir):
    blob_dir = disk_grid.data_dir / "blobs"
    filler = _fill(small_disk, leave_bytes=16 << 10)
    try:
        with disk_grid.client() as client:
            before = _consistent(disk_grid)
            _refused_for_room(lambda: client.upload_folder(ct_dir), blob_dir)
            assert _consistent(disk_grid) == before  # the SDK removed its case; nothing else is left
            # Without the SDK's clean-up: the upload stays open and resumable, holding what it says.
            data = sorted(ct_dir.iterdir())[0].read_bytes()
            case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="raw"))
            status = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
                case_id=case.case_id, file_name="a.dcm", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
            chunk = hospital_pb2.UploadChunk(upload_id=status.upload_id, offset=0, data=data, crc32=zlib.crc32(data))
            _refused_for_room(lambda: client.hospital.UploadChunks(iter([chunk]), timeout=30), blob_dir)
            _consistent(disk_grid)
            _still_serving(client)
            filler.unlink()
            # Room again: the same upload resumes from what the master holds and completes.
            status = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
                case_id=case.case_id, file_name="a.dcm", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
            assert status.committed_bytes == 0
            client.hospital.UploadChunks(iter([chunk]), timeout=30)
            client.call(client.hospital.FinishUpload, hospital_pb2.FinishUploadRequest(upload_id=status.upload_id))
            client.call(client.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=case.case_id))
            assert _consistent(disk_grid) == before
    finally:
        filler.unlink(missing_ok=True)


def test_commit_finds_no_room_for_the_volume(disk_grid, small_disk, ct_dir):
    blob_dir = disk_grid.data_dir / "blobs"
    files_bytes = sum(p.stat().st_size for p in ct_dir.iterdir())
    volume_bytes = SHAPE[0] * SHAPE[1] * SHAPE[2] * 2
    # Room for the files (one 4 KiB page of slack each) and half the volume.
    filler = _fill(small_disk, leave_bytes=files_bytes + 4096 * SHAPE[0] + volume_bytes // 2)
    try:
        with disk_grid.client() as client:
            before = _consistent(disk_grid)
            _refused_for_room(lambda: client.upload_folder(ct_dir), blob_dir)
            assert _consistent(disk_grid) == before
            _still_serving(client)
    finally:
        filler.unlink()
    with disk_grid.client() as client:
        assert client.upload_folder(ct_dir).case.committed


def test_job_fails_when_its_results_find_no_room(disk_grid, small_disk, ct_dir):
    blob_dir = disk_grid.data_dir / "blobs"
    with disk_grid.client() as client:
        case = client.upload_folder(ct_dir).case
        filler = _fill(small_disk)
        try:
            job = client.submit(case.case_id, "contour", params={"shards": "2"})
            events = list(client.watch(job.job_id))
            done = client.job(job.job_id)
            assert state_name(done.state) == "failed", done
            assert "no room" in done.error and str(blob_dir) in done.error, done.error
            assert events[-1].message == done.error
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert not client.artifacts(job.job_id)
            assert {common_pb2.ShardState.Name(s.state) for s in client.shards(job.job_id)} <= {
                "SHARD_STATE_CANCELLED", "SHARD_STATE_FAILED", "SHARD_STATE_SUCCEEDED"}
            _consistent(disk_grid)
            _still_serving(client)
        finally:
            filler.unlink()
        again = client.submit(case.case_id, "contour", params={"shards": "2"})
        for _ in client.watch(again.job_id):
            pass
        assert state_name(client.job(again.job_id).state) == "succeeded", client.job(again.job_id).error
        assert client.artifacts(again.job_id)
        _consistent(disk_grid)
