"""Interrupted transfers resume: an upload from the bytes the master acknowledged, a download from
the bytes already on disk; checksums prove both files intact."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest

from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import hospital_pb2


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_resumes_from_the_acknowledged_chunk(grid, tmp_path):
    ct_dir = write_phantom_case(tmp_path, shape=(6, 128, 128), spacing_mm=(2.0, 2.0, 3.0), seed=8).ct_dir
    first = sorted(ct_dir.iterdir())[0]
    data = first.read_bytes()
    chunk = 4096
    with grid.client() as client:
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="resume"))
        start = hospital_pb2.StartUploadRequest(case_id=case.case_id, file_name=first.name, size_bytes=len(data),
                                                sha256=_sha(data))
        status = client.call(client.hospital.StartUpload, start)

        sent = range(0, len(data) // 2, chunk)

        def half_then_drop():
            for offset in sent:
                piece = data[offset: offset + chunk]
                yield hospital_pb2.UploadChunk(upload_id=status.upload_id, offset=offset, data=piece,
                                               crc32=zlib.crc32(piece))
            # The line drops once the master has acknowledged what was sent.
            deadline = time.monotonic() + 30
            while client.call(client.hospital.StartUpload, start).committed_bytes < sent[-1] + chunk:
                assert time.monotonic() < deadline, "the master never acknowledged the chunks"
                time.sleep(0.05)
            raise ConnectionResetError("the hospital's line dropped")

        with pytest.raises(grpc.RpcError):
            client.hospital.UploadChunks(half_then_drop(), timeout=30)
        held = client.call(client.hospital.StartUpload, start)
        assert held.upload_id == status.upload_id
        assert held.committed_bytes == sent[-1] + chunk
        # A chunk at the wrong offset is refused, not appended.
        wrong = hospital_pb2.UploadChunk(upload_id=status.upload_id, offset=0, data=data[:10], crc32=zlib.crc32(data[:10]))
        with pytest.raises(grpc.RpcError) as caught:
            client.hospital.UploadChunks(iter([wrong]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The SDK picks up from there and the finished file checks out.
        uploaded = client.upload_file(case.case_id, first, chunk_bytes=chunk)
        assert uploaded.sha256 == _sha(data) and uploaded.modality == "CT"
        blob = grid.data_dir / "blobs" / uploaded.sha256[:2] / uploaded.sha256[2:]
        assert _sha(blob.read_bytes()) == _sha(data)


def test_corrupted_chunk_is_refused(grid, tmp_path):
    data = b"DICM" * 1000
    with grid.client() as client:
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="crc"))
        status = client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
            case_id=case.case_id, file_name="x.dcm", size_bytes=len(data), sha256=_sha(data)))
        bad = hospital_pb2.UploadChunk(upload_id=status.upload_id, offset=0, data=data, crc32=zlib.crc32(data) ^ 1)
        with pytest.raises(grpc.RpcError) as caught:
            client.hospital.UploadChunks(iter([bad]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS and "x.dcm" in caught.value.details()
        assert client.call(client.hospital.StartUpload, hospital_pb2.StartUploadRequest(
            case_id=case.case_id, file_name="x.dcm", size_bytes=len(data), sha256=_sha(data))).committed_bytes == 0
        client.delete_case(case.case_id)  # its open upload would be another test's leftover partial file


def _truncated_pixels(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """A slice whose header is whole but whose pixel data ends early: it passes FinishUpload's
    header check and is refused by the commit's complete check."""
    victim = sorted(folder.iterdir())[23]
    victim.write_bytes(victim.read_bytes()[:-1000])
    return victim, ("trunc",)


def _not_dicom(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """A file that is no DICOM at all: refused by its FinishUpload while other files are in flight."""
    victim = folder / "CT_0023.dcm"
    victim.write_bytes(b"a scanned referral letter, not DICOM " * 4000)
    return victim, ("not", "dicom")


def _stored(grid) -> dict[str, object]:
    """Row counts of the tables an upload fills, and the blob and partial file names."""
    with sqlite3.connect(grid.data_dir / "rtgrid.sqlite") as db:
        stored: dict[str, object] = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                                     for t in ("cases", "files", "uploads", "series")}
    blobs = grid.data_dir / "blobs"
    stored["blobs"] = sorted(p.name for p in blobs.glob("??/*"))
    stored["partial"] = sorted(p.name for p in (blobs / "partial").iterdir())
    return stored


@pytest.mark.parametrize("corrupt", [_truncated_pixels, _not_dicom], ids=["truncated-pixels", "not-dicom"])
def test_a_parallel_upload_with_one_corrupt_file_commits_nothing_and_names_it(grid, tmp_path, corrupt):
    ct_dir = write_phantom_case(tmp_path, shape=(40, 64, 64), spacing_mm=(4.0, 4.0, 3.0), seed=11).ct_dir
    victim, words = corrupt(ct_dir)
    senders: set[int] = set()
    with grid.client() as client:
        before = _stored(grid)
        with pytest.raises(grpc.RpcError) as caught:
            client.upload_folder(ct_dir, streams=8, progress=lambda path, held: senders.add(threading.get_ident()))
        message = caught.value.details()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert victim.name in message and all(word in message.lower() for word in words), message
        assert len(senders) > 1, "the files did not go in parallel streams"
        assert _stored(grid) == before  # no case, file, upload, series, blob or partial file left
        # The same folder, repaired, goes through whole.
        write_phantom_case(tmp_path, shape=(40, 64, 64), spacing_mm=(4.0, 4.0, 3.0), seed=11)
        result = client.upload_folder(ct_dir, streams=8)
    assert result.case.committed and result.case.series[0].n_slices == 40
    assert [f.file_name for f in result.files] == sorted(p.name for p in ct_dir.iterdir())


def _stream(case_id: str, files: list[tuple[str, bytes]], chunk: int = 16 << 10, sha256=None, crc32=zlib.crc32):
    """UploadFiles messages carrying ``files`` whole, one after the other (``sha256``: what each
    start declares, by default the true digest; ``crc32``: what each chunk declares)."""
    for name, data in files:
        start = hospital_pb2.StartUploadRequest(case_id=case_id, file_name=name, size_bytes=len(data),
                                                sha256=(sha256 or _sha)(data))
        for offset in range(0, len(data), chunk):
            piece = data[offset:offset + chunk]
            message = hospital_pb2.UploadFilesRequest(
                chunk=hospital_pb2.UploadChunk(offset=offset, data=piece, crc32=crc32(piece)))
            if offset == 0:
                message.start.CopyFrom(start)
            yield message


def _refused_stream(client, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        list(client.hospital.UploadFiles(messages, timeout=30))
    return caught.value


def test_one_stream_carries_many_files_and_a_bad_file_keeps_nothing_of_its_batch(grid, tmp_path):
    ct_dir = write_phantom_case(tmp_path, shape=(6, 64, 64), spacing_mm=(4.0, 4.0, 3.0), seed=12).ct_dir
    files = [(p.name, p.read_bytes()) for p in sorted(ct_dir.iterdir())]
    letter = ("letter.dcm", b"a scanned referral letter, not DICOM " * 500)
    with grid.client() as client:
        case = client.call(client.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label="stream")).case_id
        before = _stored(grid)
        # A file that is not DICOM, amid good ones: refused by name; nothing of the batch is kept.
        error = _refused_stream(client, _stream(case, files[:2] + [letter] + files[2:]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "letter.dcm" in error.details(), error.details()
        assert _stored(grid) == before
        # Bytes that do not match the declared sha256; a stream that ends inside a file.
        error = _refused_stream(client, _stream(case, files[:3], sha256=lambda data: "0" * 64))
        assert error.code() == grpc.StatusCode.DATA_LOSS and files[0][0] in error.details(), error.details()
        # A chunk that does not match its crc32: the file is named with the chunk's offset.
        damaged = files[1][1][2048:3072]
        error = _refused_stream(client, _stream(case, files[:3], chunk=1024,
                                                crc32=lambda piece: zlib.crc32(piece) ^ int(piece == damaged)))
        assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
        assert f"{files[1][0]}: chunk at offset 2048 failed its crc32 check" in error.details(), error.details()
        assert _stored(grid) == before
        error = _refused_stream(client, iter(list(_stream(case, files[:2], chunk=1024))[:-1]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "ended after" in error.details()
        assert files[1][0] in error.details()
        # A message that does not parse (another client's framing, or a hostile one) amid good ones.
        raw = client.channel.stream_stream("/rtgrid.v1.HospitalService/UploadFiles",
                                           request_serializer=lambda data: data,
                                           response_deserializer=hospital_pb2.UploadedFile.FromString)
        good = [m.SerializeToString() for m in _stream(case, files[:1], chunk=1024)]
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(iter([good[0], b"\xff\xff\xff\xff", *good[1:]]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "not valid" in caught.value.details()
        assert _stored(grid) == before
        # The good files: one answer per file, in order; sent again, the same files (nothing twice).
        kept = list(client.hospital.UploadFiles(_stream(case, files), timeout=30))
        assert [(f.file_name, f.modality, f.sha256) for f in kept] == [(n, "CT", _sha(d)) for n, d in files]
        again = list(client.hospital.UploadFiles(_stream(case, files[:2]), timeout=30))
        assert [f.file_id for f in again] == [f.file_id for f in kept[:2]]
        committed = client.commit_case(case)
        assert committed.committed and committed.series[0].n_slices == len(files)
        audited = {e.objects.get("file_id") for e in client.audit(action="upload")
                   if e.method == "HospitalService/UploadFiles" and e.outcome == "OK"}
    assert {f.file_id for f in kept} <= audited  # each kept file, as FinishUpload records each


def test_download_resumes_a_partial_file(grid, tmp_path):
    ct_dir = write_phantom_case(tmp_path / "p", shape=(10, 64, 64), spacing_mm=(3.0, 3.0, 3.0), seed=9).ct_dir
    with grid.client() as client:
        case = client.upload_folder(ct_dir).case
        job = client.submit(case.case_id, "contour")
        list(client.watch(job.job_id))
        rtstruct = next(a for a in client.artifacts(job.job_id) if a.kind == "rtstruct")
        whole = client.download(rtstruct, tmp_path / "whole").read_bytes()
        out = tmp_path / "resumed"
        out.mkdir()
        (out / (rtstruct.name + ".part")).write_bytes(whole[: len(whole) // 3])
        resumed = client.download(rtstruct, out)
    assert resumed.read_bytes() == whole and _sha(whole) == rtstruct.sha256
    assert not (out / (rtstruct.name + ".part")).exists()
