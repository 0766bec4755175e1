"""The pieces of the fast upload path that work off the stream: a CT file's complete check in a
worker process (:mod:`rtgrid.master.prechecks`), blobs written at once but made durable in the
background, waited for by the commit (``BlobStore.sync_soon`` / ``sync``), and the commit's volume
written straight to its blob (``BlobStore.put_written``)."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import signal
import time

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from rtgrid.engines.imaging.dicom_files import read_dicom
from rtgrid.engines.imaging.errors import IntakeError
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.engines.imaging.volume import Volume
from rtgrid.master.blobs import BlobStore, BlobWriteError
from rtgrid.master.codec import volume_from_bytes, write_volume
from rtgrid.master.prechecks import Prechecks, StoredPixels


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    folder = write_phantom_case(tmp_path_factory.mktemp("ct"), shape=(4, 32, 32), spacing_mm=(3.0, 3.0, 3.0),
                                seed=5).ct_dir
    return sorted(folder.iterdir())


def test_a_worker_checks_a_file_as_the_commit_would_and_names_a_bad_one(ct_files, tmp_path):
    good, bad = ct_files[0], tmp_path / "bad.dcm"
    bad.write_bytes(ct_files[1].read_bytes()[:-500])  # its pixel data ends early
    prechecks = Prechecks(workers=1)
    try:
        for path in (good, bad):
            prechecks.submit(path, "case-a", path.name, _sha(path), path.stat().st_size)
        checked = prechecks.take("case-a", good.name, _sha(good))
        here = read_dicom(good.read_bytes(), good.name)
        assert checked.info == here.info and np.array_equal(checked.pixels, here.pixels)
        # The dataset stayed in the worker; parsed again here, it is the same but for the pixel data.
        del here.dataset.PixelData
        assert checked.dataset == here.dataset and "PixelData" not in checked.dataset
        assert checked.dataset.file_meta.TransferSyntaxUID == here.dataset.file_meta.TransferSyntaxUID
        with pytest.raises(IntakeError) as caught:
            prechecks.take("case-a", bad.name, _sha(bad))
        assert "bad.dcm" in str(caught.value)
        # Taken once: a second take (or a file never submitted) is left to the commit.
        assert prechecks.take("case-a", good.name, _sha(good)) is None
    finally:
        prechecks.close()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_natively_stored_file_comes_back_as_where_its_pixels_lie_an_encoded_one_decoded(ct_files, tmp_path):
    # A worker returns where a native file's pixels lie, not the pixels: the commit reads them from
    # the blob. A compressed file's pixels (RLE here) travel back decoded.
    native, encoded = ct_files[0], tmp_path / "rle.dcm"
    encoded.write_bytes(open(get_testdata_file("MR_small_RLE.dcm"), "rb").read())
    prechecks = Prechecks(workers=1)
    try:
        for path in (native, encoded):
            prechecks.submit(path, "case-a", path.name, _sha(path), path.stat().st_size)
        sent = [prechecks._checks[("case-a", path.name, _sha(path))][0].result()[1] for path in (native, encoded)]
        assert isinstance(sent[0], StoredPixels) and type(sent[1]) is np.ndarray
        open_files = len(os.listdir("/proc/self/fd"))
        mapped, decoded = (prechecks.take("case-a", path.name, _sha(path)) for path in (native, encoded))
        assert len(os.listdir("/proc/self/fd")) == open_files  # nothing held open per slice until the commit ends
        for checked, path in ((mapped, native), (decoded, encoded)):
            here = read_dicom(path.read_bytes(), path.name)
            assert np.array_equal(checked.pixels, here.pixels) and checked.pixels.dtype == here.pixels.dtype
    finally:
        prechecks.close()


def test_the_same_file_in_two_cases_is_checked_for_each(ct_files):
    # Two hospitals (or one sending a CT again as a new case) with byte-identical files: each
    # commit takes its own check instead of the second one parsing the file on the master.
    path = ct_files[0]
    prechecks = Prechecks(workers=1)
    try:
        for case_id in ("case-a", "case-b"):
            prechecks.submit(path, case_id, path.name, _sha(path), path.stat().st_size)
        first, second = (prechecks.take(case_id, path.name, _sha(path)) for case_id in ("case-a", "case-b"))
        assert first is not None and second is not None and first.info == second.info
        prechecks.submit(path, "case-c", path.name, _sha(path), path.stat().st_size)
        prechecks.discard([("case-c", path.name, _sha(path))])  # a deleted case's check is forgotten
        assert prechecks.take("case-c", path.name, _sha(path)) is None
    finally:
        prechecks.close()


def test_a_dead_worker_leaves_its_file_to_the_commit_and_new_workers_take_the_next(ct_files):
    def submit(path) -> None:
        prechecks.submit(path, "case-a", path.name, _sha(path), path.stat().st_size)

    prechecks = Prechecks(workers=1)
    try:
        submit(ct_files[0])
        assert prechecks.take("case-a", ct_files[0].name, _sha(ct_files[0])) is not None
        (worker,) = prechecks._pool._processes  # the one worker, started by the first check
        os.kill(worker, signal.SIGKILL)
        submit(ct_files[1])
        assert prechecks.take("case-a", ct_files[1].name, _sha(ct_files[1])) is None  # not checked: left to the commit
        checked, deadline = None, time.monotonic() + 60
        while checked is None and time.monotonic() < deadline:  # the broken pool is replaced at a submit
            submit(ct_files[2])
            checked = prechecks.take("case-a", ct_files[2].name, _sha(ct_files[2]))
        assert checked is not None and checked.info == read_dicom(ct_files[2].read_bytes(), ct_files[2].name).info
        assert worker not in prechecks._pool._processes
    finally:
        prechecks.close()


def test_blobs_synced_in_the_background_are_waited_for(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    datas = [bytes([i]) * (1000 + i) for i in range(5)]
    shas = [hashlib.sha256(d).hexdigest() for d in datas]
    assert [blobs.put_unsynced(d, s) for d, s in zip(datas, shas)] == [True] * 5
    assert not blobs.put_unsynced(datas[0], shas[0])  # held already
    blobs.sync_soon(shas[:3])
    blobs.sync(shas)  # the three started, the two others now
    assert [blobs.read_bytes(s) for s in shas] == datas
    assert not list((tmp_path / "blobs").glob("??/.tmp-*"))
    blobs.delete(shas[4])
    with pytest.raises(FileNotFoundError):  # a blob that is gone cannot be made durable: the commit stops
        blobs.sync([shas[4]])


def test_a_blob_a_power_loss_left_short_is_written_again_by_the_same_bytes(tmp_path):
    # Kept from a stream, a blob is renamed into place before its sync: after a power loss its
    # name may stand on a shorter file (here: cut by hand). The same bytes sent again replace it,
    # by stream or by a finished upload, instead of being taken as held.
    blobs = BlobStore(tmp_path / "blobs")
    data = bytes(range(256)) * 40
    sha = hashlib.sha256(data).hexdigest()
    for keep in ("stream", "upload"):
        assert blobs.put_unsynced(data, sha)
        blobs.path(sha).write_bytes(data[:1000])
        if keep == "stream":
            assert blobs.put_unsynced(data, sha)
        else:
            partial = blobs.partial_path("up1")
            partial.write_bytes(data)
            blobs.adopt(partial, sha)
            assert not partial.exists()
        assert blobs.read_bytes(sha) == data
        assert not blobs.put_unsynced(data, sha)  # whole: held
        blobs.delete(sha)


def test_a_volume_is_written_straight_to_its_blob_under_the_sha256_of_its_bytes(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    voxels = np.random.default_rng(3).integers(-1000, 3000, (5, 40, 30)).astype(np.int16)
    volume = Volume(voxels, np.array([-10.0, 5.0, 2.5]), np.array([3.0, 1.2, 1.2]), np.eye(3))
    sha = blobs.put_written(functools.partial(write_volume, volume), "a test volume")
    data = blobs.read_bytes(sha)
    assert hashlib.sha256(data).hexdigest() == sha
    back = volume_from_bytes(data)
    assert np.array_equal(back.voxels, voxels) and back.voxels.dtype == np.int16
    assert np.array_equal(back.origin_mm, volume.origin_mm) and np.array_equal(back.spacing_mm, volume.spacing_mm)
    # The same bytes again: the same blob, and no temporary file is left either time.
    assert blobs.put_written(functools.partial(write_volume, volume), "a test volume") == sha
    assert blobs.put_written(lambda fh: None, "an empty blob") == hashlib.sha256(b"").hexdigest()
    assert not list((tmp_path / "blobs").glob(".tmp-*")) and blobs.blob_count() == 2


def test_a_failed_volume_write_leaves_nothing(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")

    def write(fh) -> None:
        fh.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(BlobWriteError, match="a test volume could not be written"):
        blobs.put_written(write, "a test volume")
    assert not list((tmp_path / "blobs").glob(".tmp-*")) and blobs.blob_count() == 0
