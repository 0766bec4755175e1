"""Case intake: resumable chunked uploads, per-file DICOM checks, and an all-or-nothing commit.

Plain functions over the store and blob store; the hospital servicer only translates protobuf.

An add (``rtgrid upload --add-to CASE``) brings MR/PET series and RTSTRUCTs into a committed case
through the same calls: its files are kept pending (invisible to jobs and listings) until
``commit_case`` checks them like a first upload and adds them in one transaction; a refused add,
or ``delete_case`` during one, removes its files, uploads and blobs and leaves the case as it was.

Files arrive by StartUpload, UploadChunks and FinishUpload (one file, resumable within it), or
many at once on an UploadFiles stream (``begin_streamed``, ``add_streamed_chunk``,
``keep_streamed``): its files are held in memory until a batch of them is kept in one transaction,
and their blobs reach the disk in the background, waited for before the commit's transaction.

Where each check happens: FinishUpload (or a stream's keep) proves the bytes (size, sha256) and
reads the DICOM header (modality, identity) of every file; a non-image object (RTSTRUCT) is checked
completely there. A planning-image file's complete check (every element, pixel data, geometry,
identity repairs) is made once: in a worker thread as soon as the file is kept
(:mod:`.prechecks`), or at commit for a file no worker checked. The commit builds the series from
those checks and refuses the whole case, naming the file, if any failed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import os
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field

import pydicom

from rtgrid.engines.dicomrt.rtstruct import RtStructError, read_rtstruct_rois
from rtgrid.engines.imaging.dicom_files import InspectedFile, inspect_dicom, read_dicom
from rtgrid.engines.imaging.errors import IntakeError
from rtgrid.engines.imaging.intake import series_from_inspected
from rtgrid.engines.imaging.mr_intake import load_mr_series
from rtgrid.engines.imaging.pet_intake import load_pet_series
from rtgrid.engines.imaging.volume import ImageSeries

from .blobs import BlobStore, BlobWriteError, write_fully
from .codec import series_from_bytes, series_meta_to_bytes, volume_from_bytes, write_volume
from .config import MasterConfig
from .errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from .ids import new_id, now_ms
from .prechecks import Prechecks
from .store.base import Store
from .store.records import (
    PLANNING_SERIES, SECONDARY_SERIES, AuditRecord, CaseRecord, FileRecord, SeriesRecord, UploadRecord,
)

log = logging.getLogger(__name__)

IMAGE_MODALITIES = ("CT",)  # the planning image: exactly one series of these per case
# Images a case may hold beside its planning CT, to register to it (never planned on).
SECONDARY_MODALITIES = ("MR", "PT")
# Non-image objects a case may carry beside its images (manual contours, an earlier plan).
ATTACHMENT_MODALITIES = ("RTSTRUCT",)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"^[^/\\\x00]{1,255}$")
# An image file naming all of these in its header is checked completely at commit (see _identify).
_IDENTITY_TAGS = ("Modality", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
STREAMED_FILE_BYTES = 64 << 20
"""Largest file an UploadFiles stream carries (held in memory until kept); larger ones go by StartUpload."""
KEEP_BATCH_FILES = 32
KEEP_BATCH_BYTES = 16 << 20
"""Files received whole on a stream are kept (checked, stored, recorded in one transaction) by up
to this many files or bytes, whichever comes first."""


class Receiving:
    """Files arriving on upload streams, not kept yet: until kept they count against their case's
    file and byte limits, and while their bytes arrive against the hospital's open uploads (a
    stream holds one such file at a time), like the files and uploads in the store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cases: dict[str, tuple[int, int]] = {}
        self._hospitals: dict[str, int] = {}

    def case(self, case_id: str) -> tuple[int, int]:
        """Files and bytes arriving into ``case_id``."""
        with self._lock:
            return self._cases.get(case_id, (0, 0))

    def hospital(self, hospital: str) -> int:
        """Files whose bytes are arriving for ``hospital``."""
        with self._lock:
            return self._hospitals.get(hospital, 0)

    def count_case(self, case_id: str, size_bytes: int, sign: int) -> None:
        with self._lock:
            files, held = self._cases.get(case_id, (0, 0))
            files, held = files + sign, held + sign * size_bytes
            if files:
                self._cases[case_id] = (files, held)
            else:
                self._cases.pop(case_id, None)

    def count_hospital(self, hospital: str, sign: int) -> None:
        with self._lock:
            count = self._hospitals.get(hospital, 0) + sign
            if count:
                self._hospitals[hospital] = count
            else:
                self._hospitals.pop(hospital, None)


@dataclass(frozen=True)
class Intake:
    """The state intake works on."""

    store: Store
    blobs: BlobStore
    config: MasterConfig
    receiving: Receiving = field(default_factory=Receiving)
    prechecks: Prechecks | None = None  # the master's: CT files checked in workers while the upload goes on


def create_case(intake: Intake, label: str, hospital: str = "") -> CaseRecord:
    """A new, open case owned by ``hospital``.

    Raises
    ------
    InvalidArgument
        A label over 256 characters.
    ResourceExhausted
        The hospital already has ``max_open_cases_per_hospital`` uncommitted cases.
    """
    if len(label) > 256:
        raise InvalidArgument(f"case label is {len(label)} characters; at most 256")
    case = CaseRecord(new_id("case"), label, False, now_ms(), hospital)
    limit = intake.config.max_open_cases_per_hospital
    with intake.store.transaction():  # counted and added as one step: concurrent creates cannot overshoot
        held = intake.store.count_open_cases(hospital)
        if held >= limit:
            raise ResourceExhausted(
                f"hospital {hospital!r} has {held} open (uncommitted) cases; the limit is {limit} "
                "(max_open_cases_per_hospital): commit or delete one first"
            )
        intake.store.add_case(case)
    return case


def get_case(intake: Intake, case_id: str) -> CaseRecord:
    case = intake.store.get_case(case_id)
    if case is None:
        raise NotFound(f"no case {case_id!r}")
    return case


def _open_case(intake: Intake, case_id: str) -> CaseRecord:
    case = get_case(intake, case_id)
    if case.committed:
        raise FailedPrecondition(f"case {case_id} is committed; upload into a new case")
    return case


def _check_file(intake: Intake, file_name: str, size_bytes: int, sha256: str) -> None:
    """What a file's start declares: a plain name, a sha256, a size within ``max_file_bytes``."""
    if not _SAFE_NAME.match(file_name):
        raise InvalidArgument(f"file name {file_name!r} is empty, too long or contains a path separator")
    if not _SHA256.match(sha256):
        raise InvalidArgument(f"{file_name}: sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if size_bytes <= 0:
        raise InvalidArgument(f"{file_name}: size_bytes must be positive, got {size_bytes}")
    if size_bytes > intake.config.max_file_bytes:
        raise ResourceExhausted(
            f"{file_name}: {size_bytes} bytes exceeds the limit of {intake.config.max_file_bytes} bytes per file "
            "(max_file_bytes)"
        )


def _check_room(intake: Intake, case: CaseRecord, file_name: str, size_bytes: int) -> None:
    """The case's file and byte limits and the hospital's open uploads, with ``file_name`` added;
    files being received on streams count as open uploads. Call inside a store transaction."""
    case_id = case.case_id
    stored_files, stored_bytes = intake.store.case_usage(case_id)
    streamed_files, streamed_bytes = intake.receiving.case(case_id)
    n_files, held = stored_files + streamed_files, stored_bytes + streamed_bytes
    if n_files >= intake.config.max_files_per_case:
        raise ResourceExhausted(
            f"case {case_id} already holds {n_files} files; the limit is {intake.config.max_files_per_case} "
            "(max_files_per_case)"
        )
    if held + size_bytes > intake.config.max_case_bytes:
        raise ResourceExhausted(
            f"{file_name}: the case would hold {held + size_bytes} bytes; the limit is {intake.config.max_case_bytes} "
            "bytes per case (max_case_bytes)"
        )
    hospital, limit = case.hospital, intake.config.max_open_uploads_per_hospital
    open_uploads = intake.store.count_open_uploads(hospital) + intake.receiving.hospital(hospital)
    if open_uploads >= limit:
        raise ResourceExhausted(
            f"{file_name}: hospital {hospital!r} has {open_uploads} unfinished uploads; the limit is {limit} "
            "(max_open_uploads_per_hospital): finish them, or delete their cases"
        )


def start_upload(intake: Intake, case_id: str, file_name: str, size_bytes: int, sha256: str) -> UploadRecord:
    """Open an upload, or find the one already open for the same case, name and content.

    Into a committed case, the upload is part of an add (see the module's docstring)."""
    case = get_case(intake, case_id)
    _check_file(intake, file_name, size_bytes, sha256)
    existing = intake.store.find_upload(case_id, file_name, sha256)
    if existing is not None:
        return existing
    if intake.store.find_file(case_id, file_name, sha256) is not None:
        # Already received whole: report it complete so the client goes straight to finish.
        return UploadRecord("", case_id, file_name, size_bytes, sha256, size_bytes, now_ms())
    upload = UploadRecord(secrets.token_hex(12), case_id, file_name, size_bytes, sha256, 0, now_ms())
    with intake.store.transaction():  # counted and added as one step
        _check_room(intake, case, file_name, size_bytes)
        with intake.blobs.writing(f"{file_name}: the partial upload file"):
            intake.blobs.partial_path(upload.upload_id).write_bytes(b"")
        intake.store.add_upload(upload)
    return upload


def get_upload(intake: Intake, upload_id: str) -> UploadRecord:
    upload = intake.store.get_upload(upload_id) if upload_id.isalnum() else None
    if upload is None:
        raise NotFound(f"no open upload {upload_id!r} (finished, abandoned or never started)")
    return upload


def _check_crc32(file_name: str, offset: int, data: bytes, crc32: int) -> None:
    if zlib.crc32(data) != crc32:
        raise DataLoss(f"{file_name}: chunk at offset {offset} failed its crc32 check")


def write_chunk(intake: Intake, upload: UploadRecord, offset: int, data: bytes, crc32: int) -> UploadRecord:
    """Append one chunk durably; the offset must be exactly what the master holds."""
    if len(data) > intake.config.max_chunk_bytes:
        raise ResourceExhausted(
            f"{upload.file_name}: chunk of {len(data)} bytes exceeds the limit of {intake.config.max_chunk_bytes} "
            "bytes per chunk (max_chunk_bytes)"
        )
    if offset != upload.committed_bytes:
        raise FailedPrecondition(
            f"{upload.file_name}: chunk at offset {offset}, but the master holds {upload.committed_bytes} bytes; "
            "resume from there"
        )
    _check_crc32(upload.file_name, offset, data, crc32)
    if offset + len(data) > upload.size_bytes:
        raise InvalidArgument(
            f"{upload.file_name}: chunk ends at byte {offset + len(data)}, past the declared size {upload.size_bytes}"
        )
    path = intake.blobs.partial_path(upload.upload_id)
    with intake.blobs.writing(f"{upload.file_name}: the chunk at byte {offset}"), path.open("r+b", buffering=0) as fh:
        fh.seek(offset)
        try:
            write_fully(fh, data)
            fh.truncate()
            os.fsync(fh.fileno())
        except OSError:
            fh.truncate(offset)  # the partial file keeps exactly the bytes the store says it holds
            raise
    upload.committed_bytes, upload.updated_ms = offset + len(data), now_ms()
    intake.store.set_upload_committed(upload.upload_id, upload.committed_bytes, upload.updated_ms)
    return upload


def _discard_upload(intake: Intake, upload: UploadRecord) -> None:
    intake.blobs.partial_path(upload.upload_id).unlink(missing_ok=True)
    intake.store.delete_upload(upload.upload_id)


def finish_upload(intake: Intake, upload_id: str, upload: UploadRecord | None = None) -> FileRecord:
    """Verify size, checksum and the DICOM header, then keep the file with its case.

    A file that fails is discarded whole (nothing half-stored) and the error names it. ``upload``:
    the open upload ``upload_id``, when the caller has read it already. An image file's complete
    check comes at commit (see the module's docstring).
    """
    upload = upload if upload is not None and upload.upload_id == upload_id else get_upload(intake, upload_id)
    adding = get_case(intake, upload.case_id).committed
    if upload.committed_bytes != upload.size_bytes:
        raise FailedPrecondition(
            f"{upload.file_name}: holds {upload.committed_bytes} of {upload.size_bytes} bytes; send the rest first"
        )
    path = intake.blobs.partial_path(upload.upload_id)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != upload.sha256:
        _discard_upload(intake, upload)
        raise DataLoss(f"{upload.file_name}: sha256 of the received bytes does not match the declared sha256")
    try:
        modality, sop_instance_uid, notes = _identify(data, upload.file_name)
        _check_modality(upload.file_name, modality, upload.case_id, adding)
    except (IntakeError, InvalidArgument) as exc:
        _discard_upload(intake, upload)
        raise InvalidArgument(str(exc)) from exc
    record = FileRecord(
        new_id("file"), upload.case_id, upload.file_name, upload.sha256, upload.size_bytes,
        modality, sop_instance_uid, notes, pending=adding,
    )
    with intake.store.transaction():
        intake.store.add_file(record)
        intake.store.delete_upload(upload.upload_id)
    intake.blobs.adopt(path, upload.sha256)
    _precheck(intake, [record])
    return record


def _precheck(intake: Intake, records: list[FileRecord]) -> None:
    """Start the complete check of kept planning-image files (see :mod:`.prechecks`)."""
    if intake.prechecks is None:
        return
    for record in records:
        if record.modality in IMAGE_MODALITIES and not record.pending:
            intake.prechecks.submit(intake.blobs.path(record.sha256), record.case_id, record.file_name,
                                    record.sha256, record.size_bytes)


def _check_modality(file_name: str, modality: str, case_id: str, adding: bool) -> None:
    """A case takes CT, MR/PET and RTSTRUCT files; an add to a committed case no CT."""
    if modality not in IMAGE_MODALITIES + SECONDARY_MODALITIES + ATTACHMENT_MODALITIES:
        raise InvalidArgument(
            f"{file_name}: modality {modality or '(none)'} is not accepted; a case holds "
            f"{'/'.join(IMAGE_MODALITIES)} images (the planning image), {'/'.join(SECONDARY_MODALITIES)} images "
            f"to register to it and {'/'.join(ATTACHMENT_MODALITIES)} objects"
        )
    if adding and modality in IMAGE_MODALITIES:
        raise InvalidArgument(
            f"{file_name}: modality {modality}: case {case_id} is committed with its planning "
            f"{'/'.join(IMAGE_MODALITIES)}; an add brings {'/'.join(SECONDARY_MODALITIES + ATTACHMENT_MODALITIES)} "
            "files (a new planning image is a new case)"
        )


class Streamed:
    """One file arriving on an upload stream (``begin_streamed``): its chunks in memory until kept."""

    def __init__(self, hospital: str, case_id: str, file_name: str, size_bytes: int, sha256: str) -> None:
        self.hospital, self.case_id, self.file_name = hospital, case_id, file_name
        self.size_bytes, self.sha256 = size_bytes, sha256
        self.chunks: list[bytes] = []
        self.crc32s: list[int] = []  # each chunk's declared crc32, checked when the file is kept
        self.received = 0
        self.held: FileRecord | None = None  # the case holds this very file already: nothing to keep
        self.counted_case = self.counted_hospital = False  # counted in ``Receiving``

    @property
    def complete(self) -> bool:
        return self.received == self.size_bytes


def begin_streamed(intake: Intake, case: CaseRecord, file_name: str, size_bytes: int, sha256: str) -> Streamed:
    """Check a file an upload stream starts, as ``start_upload`` does, and count it against the
    limits until :func:`keep_streamed` or :func:`release_streamed`.

    Raises
    ------
    InvalidArgument, ResourceExhausted
        A bad name, sha256 or size; a file over ``STREAMED_FILE_BYTES``; a limit reached.
    """
    _check_file(intake, file_name, size_bytes, sha256)
    if size_bytes > STREAMED_FILE_BYTES:
        raise InvalidArgument(f"{file_name}: {size_bytes} bytes; an upload stream carries files up to "
                              f"{STREAMED_FILE_BYTES} bytes (send a larger one by StartUpload)")
    streamed = Streamed(case.hospital, case.case_id, file_name, size_bytes, sha256)
    # One transaction, so one wait for the store per file of a stream: in a wave of uploads the
    # store's lock is what every submit and watch queue for.
    with intake.store.transaction():  # counted and reserved as one step
        streamed.held = intake.store.find_file(case.case_id, file_name, sha256)
        if streamed.held is None:
            _check_room(intake, case, file_name, size_bytes)
            intake.receiving.count_case(case.case_id, size_bytes, 1)
            intake.receiving.count_hospital(case.hospital, 1)
            streamed.counted_case = streamed.counted_hospital = True
    return streamed


def add_streamed_chunk(intake: Intake, streamed: Streamed, offset: int, data: bytes, crc32: int) -> None:
    """Take the next chunk of a streamed file (checks as :func:`write_chunk`; nothing touches the disk).

    Its crc32 is checked when the file is kept (:func:`keep_streamed`, in a thread), not here on the
    event loop: zlib lets go of the GIL for a large chunk, and on a busy master the loop then waited
    for it again behind the threads parsing uploads, stalling every call the loop serves.
    """
    name = streamed.file_name
    if len(data) > intake.config.max_chunk_bytes:
        raise ResourceExhausted(f"{name}: chunk of {len(data)} bytes exceeds the limit of "
                                f"{intake.config.max_chunk_bytes} bytes per chunk (max_chunk_bytes)")
    if offset != streamed.received:
        raise FailedPrecondition(f"{name}: chunk at offset {offset}, but the stream carried {streamed.received} "
                                 "bytes of it; a stream sends each file whole, in order")
    if offset + len(data) > streamed.size_bytes:
        raise InvalidArgument(f"{name}: chunk ends at byte {offset + len(data)}, past the declared size "
                              f"{streamed.size_bytes}")
    streamed.chunks.append(data)
    streamed.crc32s.append(crc32)
    streamed.received += len(data)
    if streamed.complete and streamed.counted_hospital:  # no longer an open upload; its case still counts it
        streamed.counted_hospital = False
        intake.receiving.count_hospital(streamed.hospital, -1)


def release_streamed(intake: Intake, files: list[Streamed]) -> None:
    """Stop counting these files against the limits (kept, or given up with their stream)."""
    for streamed in files:
        if streamed.counted_hospital:
            streamed.counted_hospital = False
            intake.receiving.count_hospital(streamed.hospital, -1)
        if streamed.counted_case:
            streamed.counted_case = False
            intake.receiving.count_case(streamed.case_id, streamed.size_bytes, -1)


def keep_streamed(intake: Intake, files: list[Streamed]) -> list[FileRecord]:
    """Keep files received whole on an upload stream: each checked as :func:`finish_upload` does
    (sha256, the DICOM header, its modality), their blobs written, and the files with an audit row
    each recorded in one transaction. All or none: a file that fails fails the batch, naming it,
    and nothing of the batch is kept. The blobs reach the disk at commit (``BlobStore.sync``).

    Returns
    -------
    list of FileRecord
        One per file, in order (a file the case held already: its record).

    Raises
    ------
    DataLoss
        A file's bytes do not match its sha256.
    InvalidArgument
        Not a readable DICOM object, or a modality the case does not take.
    NotFound
        The case was deleted meanwhile.
    """
    try:
        if not files:
            return []
        case = get_case(intake, files[0].case_id)
        records: list[FileRecord] = []
        new: list[tuple[FileRecord, bytes]] = []
        seen: dict[tuple[str, str], FileRecord] = {}  # the same file twice in one batch is kept once
        for streamed in files:
            held = streamed.held or seen.get((streamed.file_name, streamed.sha256))
            if held is not None:
                records.append(held)
                continue
            offset = 0
            for chunk, crc32 in zip(streamed.chunks, streamed.crc32s):
                _check_crc32(streamed.file_name, offset, chunk, crc32)
                offset += len(chunk)
            data = b"".join(streamed.chunks)
            if hashlib.sha256(data).hexdigest() != streamed.sha256:
                raise DataLoss(f"{streamed.file_name}: sha256 of the received bytes does not match the declared sha256")
            try:
                modality, sop_instance_uid, notes = _identify(data, streamed.file_name)
            except IntakeError as exc:
                raise InvalidArgument(str(exc)) from exc
            _check_modality(streamed.file_name, modality, case.case_id, case.committed)
            record = FileRecord(new_id("file"), case.case_id, streamed.file_name, streamed.sha256,
                                streamed.size_bytes, modality, sop_instance_uid, notes, pending=case.committed)
            records.append(record)
            new.append((record, data))
            seen[(record.file_name, record.sha256)] = record
        written = []
        try:
            for record, data in new:
                with intake.blobs.writing(f"{record.file_name}: its blob"):
                    if intake.blobs.put_unsynced(data, record.sha256):
                        written.append(record.sha256)
            with intake.store.transaction():
                if get_case(intake, case.case_id).committed != case.committed:
                    raise FailedPrecondition(f"case {case.case_id} was committed while its files were received; "
                                             "send them again")
                intake.store.add_files([record for record, _ in new])
                release_streamed(intake, files)  # counted once: now by the store
                for record, _ in new:
                    intake.store.add_audit(AuditRecord(
                        new_id("audit"), now_ms(), case.hospital, "hospital", "upload", "HospitalService/UploadFiles",
                        {"case_id": case.case_id, "file_id": record.file_id}, "OK"))
        except BaseException:
            for sha256 in written:
                if not intake.store.blob_in_use(sha256):
                    intake.blobs.delete(sha256)
            raise
        intake.blobs.sync_soon([record.sha256 for record, _ in new])  # durable by the commit, which waits for it
        _precheck(intake, [record for record, _ in new])
        return records
    finally:
        release_streamed(intake, files)


def _identify(data: bytes, file_name: str) -> tuple[str, str, list[str]]:
    """Modality, SOP Instance UID and repair notes of an uploaded file.

    An image whose header names its modality and every identity UID is only read up to its pixel
    data here (its complete check comes at commit); anything else (a non-image object, a header
    that does not read cleanly, empty UIDs to repair) gets the complete check now.

    Raises
    ------
    IntakeError
        From the complete check: the file is not DICOM, truncated, undecodable, ...
    """
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(_IDENTITY_TAGS))
        values = {tag: str(header.get(tag, "") or "").strip() for tag in _IDENTITY_TAGS}
    except Exception:  # a malformed header fails in many ways; the complete check names how
        values = {}
    if values and values["Modality"] in IMAGE_MODALITIES + SECONDARY_MODALITIES and all(values.values()):
        return values["Modality"], values["SOPInstanceUID"], []
    info = inspect_dicom(data, file_name)
    return info.modality, info.sop_instance_uid, list(info.notes)


def commit_case(intake: Intake, case_id: str) -> list[SeriesRecord]:
    """Validate the case's planning CT and any MR/PET series beside it, and store their volumes — or nothing.

    The CT files form the one planning series (``IMAGE_MODALITIES``); MR and PET files
    (``SECONDARY_MODALITIES``) are grouped by Series Instance UID and each group is checked by its
    modality's loader (an MR split into one series per echo; a PET's SUVbw factor recorded). On any
    validation error the case is removed with its files (the hospital fixes the input and uploads
    again) and the error names the file and the reason.

    Returns
    -------
    list of SeriesRecord
        The planning CT first, then the MR/PET series.

    Raises
    ------
    FailedPrecondition
        Unfinished uploads, or no image files at all.
    InvalidArgument
        MR/PET without a CT (they cannot be planned on alone); a series fails its modality's checks,
        is of another patient than the CT, or an RTSTRUCT is on no series' frame of reference.

    A committed case: commits its add instead (:func:`commit_add`).
    """
    if get_case(intake, case_id).committed:
        return commit_add(intake, case_id)
    if intake.store.list_uploads(case_id):
        names = ", ".join(u.file_name for u in intake.store.list_uploads(case_id)[:3])
        raise FailedPrecondition(f"case {case_id} has unfinished uploads ({names}); finish them first")
    files = intake.store.list_files(case_id)
    images = [f for f in files if f.modality in IMAGE_MODALITIES]
    others = sorted({f.modality for f in files if f.modality in SECONDARY_MODALITIES})
    if not images and others:
        # The input is wrong, not the moment: refused and removed like any series that fails its checks.
        named = ", ".join([f.file_name for f in files if f.modality in SECONDARY_MODALITIES][:3])
        delete_case(intake, case_id)
        raise InvalidArgument(
            f"{named}...: case {case_id} holds {'/'.join(others)} images but no {'/'.join(IMAGE_MODALITIES)} series: "
            f"modality {'/'.join(others)} is taken only beside a planning {'/'.join(IMAGE_MODALITIES)}, "
            "to register to it"
        )
    if not images:
        raise FailedPrecondition(f"case {case_id} holds no {'/'.join(IMAGE_MODALITIES)} image files")
    try:
        series = series_from_inspected(_inspected(intake, images), expected_modalities=IMAGE_MODALITIES)
        secondary = _secondary_series(intake, [f for f in files if f.modality in SECONDARY_MODALITIES], series)
        frames = {series.frame_of_reference_uid: "the planning CT"}
        _check_rtstructs(intake, frames, secondary, files)
    except IntakeError as exc:
        delete_case(intake, case_id)
        raise InvalidArgument(str(exc)) from exc
    except DataLoss:
        delete_case(intake, case_id)  # the damaged blob too, so that the file sent again is stored anew
        raise
    records: list[SeriesRecord] = []
    written: list[str] = []
    try:
        for item, role, suv_factor, echo in [(series, PLANNING_SERIES, 0.0, 0), *secondary]:
            records.append(_series_record(intake, case_id, item, role, suv_factor, echo, written))
    except BlobWriteError:
        # The case stays uncommitted with its files (commit again once there is room); no
        # volume blob is left that nothing refers to.
        for sha256 in written:
            if not intake.store.blob_in_use(sha256):
                intake.blobs.delete(sha256)
        raise
    intake.blobs.sync([f.sha256 for f in files])  # files kept from upload streams reach the disk here
    with intake.store.transaction():
        for record in records:
            intake.store.add_series(record)
        intake.store.set_case_committed(case_id)
    return records


def _inspected(intake: Intake, images: list[FileRecord]) -> list[InspectedFile]:
    """The complete check of each image file: its precheck's, or made now.

    Raises
    ------
    IntakeError
        A file fails it (named); the other files' prechecks are forgotten.
    """
    out = []
    try:
        for f in images:
            found = intake.prechecks.take(f.case_id, f.file_name, f.sha256) if intake.prechecks is not None else None
            out.append(found if found is not None else read_dicom(_stored_bytes(intake, f), f.file_name))
    except BaseException:
        if intake.prechecks is not None:
            intake.prechecks.discard([(f.case_id, f.file_name, f.sha256) for f in images])
        raise
    return out


def _stored_bytes(intake: Intake, f: FileRecord) -> bytes:
    """A kept file's bytes, proven against its sha256 once more: a file no worker checked was
    kept before a restart, and a blob kept from an upload stream reaches the disk only at commit.

    Raises
    ------
    DataLoss
        The blob is gone or its bytes changed (the master stopped before they reached the disk).
    """
    try:
        data = intake.blobs.read_bytes(f.sha256)
    except FileNotFoundError:
        data = b""
    if hashlib.sha256(data).hexdigest() != f.sha256:
        raise DataLoss(f"{f.file_name}: the master's copy no longer matches its sha256 (it stopped before the file "
                       f"reached its disk); the upload into case {f.case_id} is removed: send it again")
    return data


def _series_record(
    intake: Intake, case_id: str, series: ImageSeries, role: str, suv_factor: float, echo: int, written: list[str]
) -> SeriesRecord:
    """Store one series' volume and identity blobs (their hashes appended to ``written``)."""
    volume_sha = intake.blobs.put_written(functools.partial(write_volume, series.volume),
                                          f"the {series.modality} volume of case {case_id}")
    written.append(volume_sha)
    meta_sha = intake.blobs.put_bytes(series_meta_to_bytes(series))
    written.append(meta_sha)
    nz, ny, nx = series.volume.shape
    return SeriesRecord(
        new_id("series"), case_id, series.modality, series.series_instance_uid, series.frame_of_reference_uid,
        nz, ny, nx, series.volume.spacing_mm.tolist(), volume_sha, meta_sha, list(series.notes),
        role=role, suv_factor=float(suv_factor), echo_number=int(echo),
    )


def _secondary_series(
    intake: Intake, files: list[FileRecord], ct: ImageSeries
) -> list[tuple[ImageSeries, str, float, int]]:
    """The MR and PET series of a case, each checked by its modality's loader.

    Returns ``(series, role, suv_factor, echo_number)`` per series (an MR per echo).

    Raises
    ------
    IntakeError
        From the loaders (named per modality: ``MultiFrameMrError``, ``MissingSuvTagError`` ...),
        or a series of another patient than the planning CT.
    """
    groups: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for f in files:
        data = _stored_bytes(intake, f)
        groups.setdefault((f.modality, _series_uid(data)), []).append((f.file_name, data))
    out: list[tuple[ImageSeries, str, float, int]] = []
    for (modality, _), group in sorted(groups.items()):
        if modality == "PT":
            pet = load_pet_series(group)
            found = [(pet.series, SECONDARY_SERIES, pet.suv_factor, 0)]
        else:
            found = [(mr.series, SECONDARY_SERIES, 0.0, mr.echo_number or 0) for mr in load_mr_series(group)]
        for item, *_ in found:
            if item.patient_id != ct.patient_id:
                raise IntakeError.for_files(
                    [name for name, _ in group[:3]],
                    f"the {modality} series {item.series_instance_uid} is of PatientID {item.patient_id!r}, "
                    f"the planning CT of PatientID {ct.patient_id!r}: a case holds one patient's images",
                )
        out.extend(found)
    return out


def _series_uid(data: bytes) -> str:
    """The Series Instance UID in a file's header (``""`` when absent: the loader names the problem)."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(header.get("SeriesInstanceUID", "") or "").strip()
    except Exception:  # an unreadable header is named by the loader's complete check
        return ""


def rtstruct_frames(data: bytes) -> set[str]:
    """The frames of reference an RTSTRUCT's ROIs are drawn on.

    Raises
    ------
    RtStructError, pydicom.errors.InvalidDicomError
        The structure set cannot be read.
    """
    return {r.frame_of_reference_uid for r in read_rtstruct_rois(pydicom.dcmread(io.BytesIO(data)))}


def case_rtstructs(store: Store, blobs: BlobStore, case_id: str, frame_of_reference_uid: str) -> list[bytes]:
    """The RTSTRUCTs uploaded with a case that are drawn on ``frame_of_reference_uid``: the CT's
    (contours to plan on) or an MR/PET series' (contours to map onto the CT by registration).
    A structure set with no ROI counts as on the CT's (the planning image)."""
    series = store.list_series(case_id)
    ct_frame = series[0].frame_of_reference_uid if series else ""
    out = []
    for f in store.list_files(case_id):
        if f.modality != "RTSTRUCT":
            continue
        data = blobs.read_bytes(f.sha256)
        on = rtstruct_frames(data) or {ct_frame}
        if on == {frame_of_reference_uid}:
            out.append(data)
    return out


def _check_rtstructs(intake: Intake, frames: dict[str, str], secondary: list, files: list[FileRecord]) -> None:
    """Each RTSTRUCT among ``files`` must lie on one of ``frames`` (frame UID -> the series' words)
    or on a ``secondary`` series' frame (added to ``frames``)."""
    for item, *_ in secondary:
        frames.setdefault(item.frame_of_reference_uid, f"the {item.modality} series {item.series_instance_uid}")
    for f in files:
        if f.modality == "RTSTRUCT":
            _check_rtstruct_on(frames, f.file_name, _stored_bytes(intake, f))


def _check_rtstruct_on(frames: dict[str, str], file_name: str, data: bytes) -> None:
    """An RTSTRUCT uploaded with a case must be drawn on the frame of reference of one of its series:
    the CT's (planned on) or an MR/PET series' (mapped onto the CT by a register job).

    ``frames``: each series' Frame of Reference UID with the words that name the series."""
    try:
        found = rtstruct_frames(data)
    except (RtStructError, pydicom.errors.InvalidDicomError) as exc:
        raise IntakeError(file_name, f"unreadable structure set: {exc}") from exc
    unknown = sorted(found - set(frames))
    if unknown:
        known = "; ".join(f"{uid} ({what})" for uid, what in frames.items())
        raise IntakeError(
            file_name,
            f"structures on frame of reference {', '.join(unknown[:3])}, which is no series' of this case "
            f"(the CT's, or an MR/PET series' to map by registration): {known}",
        )
    if len(found) > 1:
        raise IntakeError(
            file_name,
            f"structures on {len(found)} frames of reference ({'; '.join(frames[u] for u in sorted(found))}): "
            "a structure set is drawn on one series",
        )


def commit_add(intake: Intake, case_id: str) -> list[SeriesRecord]:
    """Commit an add to a committed case: its MR/PET series checked like a first upload's (their
    modality's loader, the CT's patient), its RTSTRUCTs on a series of the case, then stored with
    the case in one transaction. A refused add is removed whole; the case stays as it was.

    Returns
    -------
    list of SeriesRecord
        The series the add brought.

    Raises
    ------
    FailedPrecondition
        Unfinished uploads, or no added files.
    InvalidArgument
        A series fails its checks, is of another patient than the CT or is already in the case;
        an RTSTRUCT is on no series of the case.
    """
    if intake.store.list_uploads(case_id):
        names = ", ".join(u.file_name for u in intake.store.list_uploads(case_id)[:3])
        raise FailedPrecondition(f"case {case_id} has unfinished uploads ({names}); finish them first")
    added = intake.store.list_pending_files(case_id)
    if not added:
        raise FailedPrecondition(f"case {case_id} is committed and no files were added to it: upload MR/PET "
                                 "series or RTSTRUCTs into it first (rtgrid upload --add-to)")
    held = intake.store.list_series(case_id)
    ct_record = held[0]
    ct = series_from_bytes(intake.blobs.read_bytes(ct_record.meta_sha256),
                           volume_from_bytes(intake.blobs.read_bytes(ct_record.volume_sha256)))
    try:
        secondary = _secondary_series(intake, [f for f in added if f.modality in SECONDARY_MODALITIES], ct)
        known = {s.series_instance_uid for s in held}
        for item, *_ in secondary:
            if item.series_instance_uid in known:
                raise IntakeError.for_files(
                    [f.file_name for f in added if f.modality == item.modality][:3],
                    f"the {item.modality} series {item.series_instance_uid} is already in case {case_id}")
        frames = {s.frame_of_reference_uid: f"the {s.modality} series {s.series_instance_uid}" for s in reversed(held)}
        frames[ct_record.frame_of_reference_uid] = "the planning CT"
        _check_rtstructs(intake, frames, secondary, added)
    except IntakeError as exc:
        discard_add(intake, case_id)
        raise InvalidArgument(str(exc)) from exc
    except DataLoss:
        discard_add(intake, case_id)
        raise
    records: list[SeriesRecord] = []
    written: list[str] = []
    try:
        for item, role, suv_factor, echo in secondary:
            records.append(_series_record(intake, case_id, item, role, suv_factor, echo, written))
    except BlobWriteError:
        for sha256 in written:  # the add stays pending: commit it again once there is room
            if not intake.store.blob_in_use(sha256):
                intake.blobs.delete(sha256)
        raise
    intake.blobs.sync([f.sha256 for f in added])
    with intake.store.transaction():
        for record in records:
            intake.store.add_series(record)
        intake.store.set_files_added([f.file_id for f in added])
    return records


def discard_add(intake: Intake, case_id: str) -> int:
    """Remove the uploads and files of an uncommitted add to a committed case, and their blobs
    (unless in use); returns how many files and uploads it removed."""
    uploads, files = intake.store.list_uploads(case_id), intake.store.list_pending_files(case_id)
    for upload in uploads:
        _discard_upload(intake, upload)
    intake.store.delete_pending_files(case_id)
    for f in files:
        if not intake.store.blob_in_use(f.sha256):
            intake.blobs.delete(f.sha256)
    return len(uploads) + len(files)


def delete_case(intake: Intake, case_id: str) -> None:
    """Remove an uncommitted case, its uploads, files and their blobs (unless shared).

    A committed case with an add under way: only the add is removed (the case stays as it was).
    """
    case = get_case(intake, case_id)
    if case.committed and discard_add(intake, case_id):
        return
    _open_case(intake, case_id)
    files = intake.store.list_files(case_id)
    if intake.prechecks is not None:
        intake.prechecks.discard([(f.case_id, f.file_name, f.sha256) for f in files])
    for upload in intake.store.list_uploads(case_id):
        intake.blobs.partial_path(upload.upload_id).unlink(missing_ok=True)
    intake.store.delete_case(case_id)
    for f in files:
        if not intake.store.blob_in_use(f.sha256):
            intake.blobs.delete(f.sha256)


class UploadReaper:
    """Expires abandoned uploads: an upload with no chunk for ``upload_expiry_s`` is removed with
    its partial file, and so is a partial file no upload refers to (left by a crash). The count
    of expired uploads is what ``rtgrid admin status`` and the metrics show.

    Parameters
    ----------
    intake : Intake
        The store, the blob store and the expiry (``config.upload_expiry_s``).
    """

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.expired = 0

    def sweep(self, now: int | None = None) -> int:
        """Remove what expired before ``now`` (ms since the epoch); returns how many uploads."""
        now = now_ms() if now is None else now
        cutoff = now - int(self.intake.config.upload_expiry_s * 1000)
        removed = 0
        while stale := self.intake.store.stale_uploads(cutoff, limit=500):
            for upload in stale:
                _discard_upload(self.intake, upload)
            removed += len(stale)
        for path in self.intake.blobs.partial_dir.glob("*.part"):
            upload_id = path.name.removesuffix(".part")
            try:
                old = path.stat().st_mtime * 1000 < cutoff
            except FileNotFoundError:
                continue
            # A model package being received writes its own partial file and keeps it fresh.
            if old and self.intake.store.get_upload(upload_id) is None:
                path.unlink(missing_ok=True)
        if removed:
            log.info("expired %d abandoned uploads (no chunk for %g s)", removed, self.intake.config.upload_expiry_s)
        self.expired += removed
        return removed

    async def run(self) -> None:
        """Sweep now, then at a quarter of the expiry (at most every minute), until cancelled."""
        interval_s = min(60.0, max(0.5, self.intake.config.upload_expiry_s / 4))
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # a failed sweep must not end the reaping; the next one tries again
                log.exception("upload expiry sweep failed")
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
