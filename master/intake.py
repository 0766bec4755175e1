"""Case intake: resumable chunked uploads, per-file DICOM checks, and an all-or-nothing commit.

Plain functions over the store and blob store; the hospital servicer only translates protobuf.

An add (``rtgrid upload --add-to CASE``) brings MR/PET series and RTSTRUCTs into a committed case
through the same calls: its files are kept pending (invisible to jobs and listings) until
``commit_case`` checks them like a first upload and adds them in one transaction; a refused add,
or ``delete_case`` during one, removes its files, uploads and blobs and leaves the case as it was.

Where each check happens: FinishUpload proves the bytes (size, sha256) and reads the DICOM header
(modality, identity) of every file; a non-image object (RTSTRUCT) is checked completely there. An
image file's complete check (every element, pixel data, geometry, identity repairs) is made once,
at commit, where the series is built from it anyway: it would otherwise be parsed twice, and the
commit refuses the whole case, naming the file, if any check fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass

import pydicom

from rtgrid.engines.dicomrt.rtstruct import RtStructError, read_rtstruct_rois
from rtgrid.engines.imaging.dicom_files import inspect_dicom
from rtgrid.engines.imaging.errors import IntakeError
from rtgrid.engines.imaging.intake import load_series
from rtgrid.engines.imaging.mr_intake import load_mr_series
from rtgrid.engines.imaging.pet_intake import load_pet_series
from rtgrid.engines.imaging.volume import ImageSeries

from .blobs import BlobStore, BlobWriteError, write_fully
from .codec import series_from_bytes, series_meta_to_bytes, volume_from_bytes, volume_to_bytes
from .config import MasterConfig
from .errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from .ids import new_id, now_ms
from .store.base import Store
from .store.records import PLANNING_SERIES, SECONDARY_SERIES, CaseRecord, FileRecord, SeriesRecord, UploadRecord

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


@dataclass(frozen=True)
class Intake:
    """The state intake works on."""

    store: Store
    blobs: BlobStore
    config: MasterConfig


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


def start_upload(intake: Intake, case_id: str, file_name: str, size_bytes: int, sha256: str) -> UploadRecord:
    """Open an upload, or find the one already open for the same case, name and content.

    Into a committed case, the upload is part of an add (see the module's docstring)."""
    case = get_case(intake, case_id)
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
    existing = intake.store.find_upload(case_id, file_name, sha256)
    if existing is not None:
        return existing
    if intake.store.find_file(case_id, file_name, sha256) is not None:
        # Already received whole: report it complete so the client goes straight to finish.
        return UploadRecord("", case_id, file_name, size_bytes, sha256, size_bytes, now_ms())
    files = intake.store.list_files(case_id) + intake.store.list_pending_files(case_id)
    uploads = intake.store.list_uploads(case_id)
    n_files = len(files) + len(uploads)
    if n_files >= intake.config.max_files_per_case:
        raise ResourceExhausted(
            f"case {case_id} already holds {n_files} files; the limit is {intake.config.max_files_per_case} "
            "(max_files_per_case)"
        )
    held = sum(f.size_bytes for f in files) + sum(u.size_bytes for u in uploads)
    if held + size_bytes > intake.config.max_case_bytes:
        raise ResourceExhausted(
            f"{file_name}: the case would hold {held + size_bytes} bytes; the limit is {intake.config.max_case_bytes} "
            "bytes per case (max_case_bytes)"
        )
    upload = UploadRecord(secrets.token_hex(12), case_id, file_name, size_bytes, sha256, 0, now_ms())
    hospital, limit = case.hospital, intake.config.max_open_uploads_per_hospital
    with intake.store.transaction():  # counted and added as one step
        open_uploads = intake.store.count_open_uploads(hospital)
        if open_uploads >= limit:
            raise ResourceExhausted(
                f"{file_name}: hospital {hospital!r} has {open_uploads} unfinished uploads; the limit is {limit} "
                "(max_open_uploads_per_hospital): finish them, or delete their cases"
            )
        with intake.blobs.writing(f"{file_name}: the partial upload file"):
            intake.blobs.partial_path(upload.upload_id).write_bytes(b"")
        intake.store.add_upload(upload)
    return upload


def get_upload(intake: Intake, upload_id: str) -> UploadRecord:
    upload = intake.store.get_upload(upload_id) if upload_id.isalnum() else None
    if upload is None:
        raise NotFound(f"no open upload {upload_id!r} (finished, abandoned or never started)")
    return upload


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
    if zlib.crc32(data) != crc32:
        raise DataLoss(f"{upload.file_name}: chunk at offset {offset} failed its crc32 check")
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
    except IntakeError as exc:
        _discard_upload(intake, upload)
        raise InvalidArgument(str(exc)) from exc
    if modality not in IMAGE_MODALITIES + SECONDARY_MODALITIES + ATTACHMENT_MODALITIES:
        _discard_upload(intake, upload)
        raise InvalidArgument(
            f"{upload.file_name}: modality {modality or '(none)'} is not accepted; a case holds "
            f"{'/'.join(IMAGE_MODALITIES)} images (the planning image), {'/'.join(SECONDARY_MODALITIES)} images "
            f"to register to it and {'/'.join(ATTACHMENT_MODALITIES)} objects"
        )
    if adding and modality in IMAGE_MODALITIES:
        _discard_upload(intake, upload)
        raise InvalidArgument(
            f"{upload.file_name}: modality {modality}: case {upload.case_id} is committed with its planning "
            f"{'/'.join(IMAGE_MODALITIES)}; an add brings {'/'.join(SECONDARY_MODALITIES + ATTACHMENT_MODALITIES)} "
            "files (a new planning image is a new case)"
        )
    record = FileRecord(
        new_id("file"), upload.case_id, upload.file_name, upload.sha256, upload.size_bytes,
        modality, sop_instance_uid, notes, pending=adding,
    )
    with intake.store.transaction():
        intake.store.add_file(record)
        intake.store.delete_upload(upload.upload_id)
    intake.blobs.adopt(path, upload.sha256)
    return record


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
        series = load_series(
            [(f.file_name, intake.blobs.read_bytes(f.sha256)) for f in images], expected_modalities=IMAGE_MODALITIES
        )
        secondary = _secondary_series(intake, [f for f in files if f.modality in SECONDARY_MODALITIES], series)
        frames = {series.frame_of_reference_uid: "the planning CT"}
        _check_rtstructs(intake, frames, secondary, files)
    except IntakeError as exc:
        delete_case(intake, case_id)
        raise InvalidArgument(str(exc)) from exc
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
    with intake.store.transaction():
        for record in records:
            intake.store.add_series(record)
        intake.store.set_case_committed(case_id)
    return records


def _series_record(
    intake: Intake, case_id: str, series: ImageSeries, role: str, suv_factor: float, echo: int, written: list[str]
) -> SeriesRecord:
    """Store one series' volume and identity blobs (their hashes appended to ``written``)."""
    volume_sha = intake.blobs.put_bytes(volume_to_bytes(series.volume))
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
        data = intake.blobs.read_bytes(f.sha256)
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
            _check_rtstruct_on(frames, f.file_name, intake.blobs.read_bytes(f.sha256))


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
