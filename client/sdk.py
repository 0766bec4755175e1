"""The rtgrid Python SDK for hospitals: upload a case, submit jobs, watch them, fetch results.

Knows only the protos. Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED) are retried with
exponential backoff; uploads, downloads and watches resume where they stopped after a dropped
connection.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from rtgrid.protos.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    hospital_pb2,
    hospital_pb2_grpc,
)

from .enums import enum_name, enum_value

if TYPE_CHECKING:  # pydicom loads only when a hospital pseudonymizes
    from .pseudonym import Pseudonymizer

TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
DEFAULT_ATTEMPTS = 10
# With 10 attempts this rides out about a minute of outage (e.g. a master restart).
MAX_BACKOFF_S = 10.0
CLOSE_TIMEOUT_S = 10.0
"""Longest wait for the channels to close (see :meth:`Client.close`)."""
RPC_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 3.0
"""How long :meth:`Client.wait_ready` waits for a first connection by default."""
# A segmentation model package folder, as ``rtgrid train-seg`` writes it.
MODEL_PACKAGE_FILES = ("weights.pt", "card.json", "sha256")
MODEL_CHUNK_BYTES = 1 << 20
UPLOAD_STREAMS = 4
"""Files :meth:`Client.upload_folder` sends at once, each on its own stream of the one connection:
a file's round trips (start, chunks, finish) overlap with the others' instead of adding up."""
IN_MEMORY_FILE_BYTES = 16 << 20
"""A file up to this size is read once (hashed and sent from memory); a larger one is read twice.
Files up to this size go whole on UploadFiles streams; larger ones by StartUpload (resumable within a file)."""
STREAM_CHUNK_BYTES = 1 << 20
"""Chunks on an UploadFiles stream, until a StartUpload has told the master's ``max_chunk_bytes``."""
TERMINAL_STATES = (
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
)


class _Stopped(Exception):
    """A file not sent because another one failed first."""


class _Gate:
    """How many files of an upload go at once: ``streams``, fewer after the master refused a start
    for room while others were under way; closed once a file failed (the rest are not sent)."""

    def __init__(self, streams: int) -> None:
        self.allowed, self.running, self.closed = streams, 0, False
        self._changed = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the allowed places while a file is sent; raises ``_Stopped`` once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self.closed or self.running < self.allowed)
            if self.closed:
                raise _Stopped()
            self.running += 1
        try:
            yield
        finally:
            with self._changed:
                self.running -= 1
                self._changed.notify_all()

    def shrink(self) -> bool:
        """After a refusal for room: allow one file fewer than go now, and say whether to try again
        (not when this file goes alone: the refusal is then the answer)."""
        with self._changed:
            if self.closed or self.running <= 1:
                return False
            self.allowed = self.running - 1
            return True

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()


class _FileStreams:
    """One upload's small files, sent whole on a few UploadFiles streams that take the next file
    from one queue (so the streams stay evenly busy). The master answers each file once it keeps it;
    a stream that fails puts its unanswered files back. A transient failure is tried again (with
    backoff); a refusal for room while other streams run leaves the files to them; any other
    failure stops the streams from taking more files, and the failure of the first file (in the
    files' order) is raised once the others have ended."""

    def __init__(self, client: "Client", case_id: str, files: list[Path], step: int,
                 progress: Callable[[Path, int], None] | None) -> None:
        self.client, self.case_id, self.step, self.progress = client, case_id, step, progress
        self.order = {path: i for i, path in enumerate(files)}
        self.todo: deque[Path] = deque(files)
        self.answers: dict[Path, hospital_pb2.UploadedFile] = {}
        self.failures: list[tuple[int, BaseException]] = []
        self.running, self.stopped, self.unimplemented = 0, False, False
        self._lock = threading.Lock()

    def run(self, streams: int) -> dict[Path, hospital_pb2.UploadedFile]:
        """Send every file on up to ``streams`` streams; returns the master's answer per file.

        Raises
        ------
        grpc.RpcError, LocalFileError
            The failure of the first file, in the files' order, that failed.
        """
        while self.todo and not self.failures and not self.unimplemented:
            count = min(streams, len(self.todo))
            self.running = count
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="rtgrid-upload") as pool:
                survivors = sum(pool.map(lambda _: self._stream(), range(count)))
            streams = max(1, survivors)
        if self.failures:
            raise min(self.failures, key=lambda failure: failure[0])[1]
        return self.answers

    def _stream(self) -> bool:
        """One stream, again after transient failures; returns whether it ended without a refusal for room."""
        attempt = 0
        try:
            while True:
                sent: list[Path] = []
                local: list[BaseException] = []
                closed = threading.Event()
                call = self.client.hospital.UploadFiles(self._requests(sent, closed, local), timeout=RPC_TIMEOUT_S * 10)
                try:
                    for answer in call:
                        with self._lock:
                            self.answers[sent.pop(0)] = answer
                        attempt = 0  # it moves: only failures in a row count
                    if local:  # the stream ended early at a file it could not read
                        self._fail(self.order[sent[0]], local[0])
                    return True
                except grpc.RpcError as exc:
                    with self._lock:
                        closed.set()
                        self.todo.extendleft(reversed(sent))
                        others = self.running > 1
                    first = min((self.order[p] for p in sent), default=len(self.order))
                    code = exc.code()
                    if local:
                        self._fail(first, local[0])
                    elif code == grpc.StatusCode.UNIMPLEMENTED:  # an older master: files one by one
                        self.unimplemented = True
                    elif code in TRANSIENT and attempt + 1 < self.client._attempts:
                        attempt += 1
                        time.sleep(min(MAX_BACKOFF_S, 0.2 * 2 ** attempt))
                        continue
                    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and others:
                        return False  # its files go on the other streams
                    else:
                        self._fail(first, exc)
                    return True
        finally:
            with self._lock:
                self.running -= 1

    def _fail(self, index: int, exc: BaseException) -> None:
        with self._lock:
            self.stopped = True
            self.failures.append((index, exc))

    def _requests(self, sent: list[Path], closed: threading.Event,
                  local: list[BaseException]) -> Iterator[hospital_pb2.UploadFilesRequest]:
        """The stream's messages: files taken from the queue one at a time, each whole."""
        while True:
            with self._lock:
                if closed.is_set() or self.stopped or not self.todo:
                    return
                path = self.todo.popleft()
                sent.append(path)
            try:
                data = path.read_bytes()
            except OSError as exc:  # a file that went away since it was checked: named, not a gRPC error
                local.append(LocalFileError(f"cannot read {path}: {exc.strerror or exc}"))
                return
            start = hospital_pb2.StartUploadRequest(case_id=self.case_id, file_name=path.name, size_bytes=len(data),
                                                    sha256=hashlib.sha256(data).hexdigest())
            for offset in range(0, len(data), self.step):
                piece = data[offset:offset + self.step]
                message = hospital_pb2.UploadFilesRequest(
                    chunk=hospital_pb2.UploadChunk(offset=offset, data=piece, crc32=zlib.crc32(piece)))
                if offset == 0:
                    message.start.CopyFrom(start)
                yield message
                if self.progress is not None:  # the stream has taken the chunk
                    self.progress(path, offset + len(piece))


class UnsafeArtifactName(ValueError):
    """The master named an artifact with something other than one plain file name."""


def safe_file_name(name: str) -> str:
    """``name`` if it is one plain file name to write inside a folder.

    Raises
    ------
    UnsafeArtifactName
        For an empty name, ``.`` or ``..``, a path (``/`` or ``\\``), NUL or another control
        character, or more than 255 bytes: a server must not choose where a result lands.
    """
    if (name in ("", ".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or len(name.encode("utf-8", "surrogatepass")) > 255):
        raise UnsafeArtifactName(f"refusing artifact name {name[:80]!r}: not a single safe file name")
    return name


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in TRANSIENT


def state_name(state: int) -> str:
    """``JOB_STATE_SUCCEEDED`` → ``succeeded`` (see :func:`.enums.enum_name`)."""
    return enum_name(common_pb2.JobState, state)


class MasterUnreachable(ConnectionError):
    """No connection to the master within the time given (nothing listening, or no TLS handshake)."""


class LocalFileError(ValueError):
    """A local problem found before anything is sent: a missing or empty folder, two files with
    one name, an unreadable file."""


@dataclass(frozen=True)
class UploadResult:
    case: common_pb2.Case
    files: list[hospital_pb2.UploadedFile]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def files_to_send(paths: list[Path]) -> list[Path]:
    """The files an upload of ``paths`` sends (hidden files left out), checked first.

    Raises
    ------
    LocalFileError
        A path that does not exist, no files, two files with one name, an unreadable file.
    """
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise LocalFileError(f"{missing[0]} does not exist")
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*"))
                   if f.is_file() and not f.name.startswith("."))
    if not files:
        raise LocalFileError(f"no files under {', '.join(map(str, paths))}")
    names = [f.name for f in files]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        where = [str(f) for f in files if f.name == clash[0]]
        raise LocalFileError(f"two files share the name {clash[0]!r} ({where[0]}, {where[1]}); a case keeps files "
                             "by name")
    for f in files:
        try:
            with f.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise LocalFileError(f"cannot read {f}: {exc.strerror or exc}") from None
    return files


def channel_credentials(ca: Path | str | None = None, token: str | None = None, cert: Path | str | None = None,
                        key: Path | str | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials (with the token as call credentials), or None for plaintext.

    Raises
    ------
    ValueError
        When only one of ``cert`` and ``key`` is given.
    """
    if not (ca or token or cert):
        return None
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs both cert and key")
    tls = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    return grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token)) if token else tls


def _channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    return grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)


class Client:
    """A connection to an rtgrid master.

    Parameters
    ----------
    target : str
        ``HOST:PORT`` of the master's public port; default ``$RTGRID_TARGET`` or ``127.0.0.1:50051``.
    attempts : int
        Tries per call for transient failures.
    ca : Path | str | None
        CA certificate (PEM) the master's certificate is checked against; default ``$RTGRID_CA``.
        Without it, but with a token or certificate, the system's trusted roots are used.
    token : str | None
        The hospital's API token, sent as ``authorization: Bearer`` metadata; default ``$RTGRID_TOKEN``.
    cert, key : Path | str | None
        A client certificate and key (operators; default ``$RTGRID_CERT`` / ``$RTGRID_KEY``) for the
        master's internal, mutual-TLS port.
    admin_target : str | None
        ``HOST:PORT`` for the admin API (the internal port); default ``$RTGRID_ADMIN_TARGET`` or ``target``.

    With none of ``ca``, ``token``, ``cert`` the channel is plaintext (a master started with
    ``--insecure`` on loopback).
    """

    def __init__(self, target: str | None = None, attempts: int = DEFAULT_ATTEMPTS, *, ca: Path | str | None = None,
                 token: str | None = None, cert: Path | str | None = None, key: Path | str | None = None,
                 admin_target: str | None = None) -> None:
        env = os.environ.get
        self.target = target or env("RTGRID_TARGET", "127.0.0.1:50051")
        admin_target = admin_target or env("RTGRID_ADMIN_TARGET") or self.target
        credentials = channel_credentials(ca or env("RTGRID_CA"), token or env("RTGRID_TOKEN"),
                                          cert or env("RTGRID_CERT"), key or env("RTGRID_KEY"))
        self.admin_target = admin_target
        self.channel = _channel(self.target, credentials)
        self._admin_channel = self.channel if admin_target == self.target else _channel(admin_target, credentials)
        self.hospital = hospital_pb2_grpc.HospitalServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._admin_channel)
        self._attempts = attempts
        self._max_chunk_bytes = STREAM_CHUNK_BYTES  # the master's limit, once a StartUpload has said it

    def close(self) -> None:
        """Close the channels, waiting at most ``CLOSE_TIMEOUT_S``: grpc's ``Channel.close`` can
        deadlock after a failed TLS handshake (grpc/grpc#20026; seen here with a client that offered
        no certificate to a mutual-TLS port), and a caller must never hang on it."""
        channels = {id(c): c for c in (self.channel, self._admin_channel)}.values()
        closers = [threading.Thread(target=c.close, name="rtgrid-channel-close", daemon=True) for c in channels]
        for closer in closers:
            closer.start()
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))

    def wait_ready(self, timeout_s: float = CONNECT_TIMEOUT_S, admin: bool = False) -> None:
        """Wait until the channel to the master (``admin``: the admin channel) is connected.

        Calls retry transient failures for about a minute (a master restarting mid-job); a caller
        that must say quickly that the master is not there checks this first.

        Raises
        ------
        MasterUnreachable
            No connection, TLS handshake included, within ``timeout_s``.
        """
        channel, target = (self._admin_channel, self.admin_target) if admin else (self.channel, self.target)
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()
            raise MasterUnreachable(f"cannot reach the master at {target} within {timeout_s:g} s (nothing "
                                    "listening there, or the TLS handshake failed)") from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=MAX_BACKOFF_S),
            reraise=True,
        )

    def call(self, method, request, timeout: float = RPC_TIMEOUT_S):
        """One unary RPC with retries on transient failures."""
        for attempt in self._retrying():
            with attempt:
                return method(request, timeout=timeout)

    # upload
    def upload_folder(self, *paths: Path | str, label: str = "", chunk_bytes: int | None = None,
                      pseudonymizer: "Pseudonymizer | None" = None,
                      progress: Callable[[Path, int], None] | None = None,
                      streams: int = UPLOAD_STREAMS, add_to: str = "") -> UploadResult:
        """Upload every file under the given folders (and the given files) into a new case, and
        commit it: one planning CT series, plus MR and PET series of the same patient to register
        to it (``rtgrid submit CASE --kind register``) and RTSTRUCTs drawn on any of them.

        ``add_to``: a committed case of this hospital to add MR/PET series (and RTSTRUCTs drawn on
        its series) to instead, checked like a first upload (same patient as the CT, each series by
        its modality's rules); all or nothing: a refused add leaves the case as it was.

        With a ``pseudonymizer`` the files are pseudonymized copies (see :mod:`.pseudonym`) and the
        default label is the patient's pseudonym: no identity leaves the hospital. ``progress`` is
        called with a file and how many of its bytes the master holds, after every chunk (from one
        thread at a time). ``streams`` files are sent at once; the first refusal stops the rest,
        and the case (or the add) is then deleted whole.

        Raises
        ------
        LocalFileError
            A path that does not exist, no files, two files with one name, an unreadable file
            (checked before anything is sent).
        ValueError
            ``add_to`` names a case that is not committed.
        grpc.RpcError
            With the master's status and message when a file or the series is rejected; the
            partial case (or add) is then deleted so nothing is left half-stored.
        """
        files = files_to_send([Path(p) for p in paths])
        if pseudonymizer is not None:
            with tempfile.TemporaryDirectory(prefix="rtgrid-pseudonymized-") as tmp:
                copies, pseudonym = pseudonymizer.pseudonymize(files, Path(tmp))
                return self.upload_folder(*copies, label=label or pseudonym, chunk_bytes=chunk_bytes,
                                          progress=progress, streams=streams, add_to=add_to)
        case = self.case(add_to) if add_to else self.create_case(label or Path(paths[0]).name)
        if add_to and not case.committed:  # an open case is another upload under way, not one to add to
            raise ValueError(f"case {add_to} is not committed: add MR/PET series to a case whose CT upload "
                             "finished, or upload them together with the CT")
        try:
            uploaded = self._upload_files(case.case_id, files, chunk_bytes, progress, streams)
            case = self.commit_case(case.case_id)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # a failed commit already removed it
                try:
                    self.delete_case(case.case_id)  # of a committed case, only the add
                except grpc.RpcError:
                    pass
            raise
        return UploadResult(case, uploaded)

    def _upload_files(self, case_id: str, files: list[Path], chunk_bytes: int | None,
                      progress: Callable[[Path, int], None] | None, streams: int) -> list[hospital_pb2.UploadedFile]:
        """Send ``files``; results in the files' order.

        The first file goes alone (StartUpload, chunks, FinishUpload: it tells the master's chunk
        limit); the others up to ``IN_MEMORY_FILE_BYTES`` go whole on ``streams`` UploadFiles
        streams at once (:class:`_FileStreams`), larger ones by :meth:`upload_file` (resumable
        within a file), ``streams`` at once. A master without UploadFiles gets every file by
        :meth:`upload_file`. The failure of the first file (in the files' order) is raised.
        """
        if progress is not None:
            lock = threading.Lock()
            report = progress

            def progress(path: Path, held: int) -> None:
                with lock:
                    report(path, held)

        done: dict[Path, hospital_pb2.UploadedFile] = {files[0]: self.upload_file(case_id, files[0], chunk_bytes,
                                                                                   progress)}
        rest = files[1:]
        small = [p for p in rest if 0 < p.stat().st_size <= IN_MEMORY_FILE_BYTES]
        if small:
            step = min(chunk_bytes or self._max_chunk_bytes, self._max_chunk_bytes)
            sent = _FileStreams(self, case_id, small, step, progress).run(max(1, streams))
            done.update(sent)
        others = [p for p in rest if p not in done]
        if others:
            done.update(zip(others, self._upload_each(case_id, others, chunk_bytes, progress, streams)))
        return [done[path] for path in files]

    def _upload_each(self, case_id: str, files: list[Path], chunk_bytes: int | None,
                     progress: Callable[[Path, int], None] | None, streams: int) -> list[hospital_pb2.UploadedFile]:
        """:meth:`upload_file` for each file, ``streams`` at once; results in the files' order.

        A start the master refuses for room (RESOURCE_EXHAUSTED, e.g. its limit on a hospital's open
        uploads) while other files are under way is tried again once fewer go at once. Any other
        failure stops the files not yet started and waits for those under way; the failure of the
        first file (in the files' order) is raised, so the same input names the same file.
        """
        if streams <= 1 or len(files) == 1:
            return [self.upload_file(case_id, path, chunk_bytes, progress) for path in files]
        gate = _Gate(streams)

        def send(path: Path) -> hospital_pb2.UploadedFile:
            while True:
                with gate.slot():
                    try:
                        return self.upload_file(case_id, path, chunk_bytes, progress)
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or not gate.shrink():
                            raise

        with ThreadPoolExecutor(max_workers=min(streams, len(files)), thread_name_prefix="rtgrid-upload") as pool:
            futures: list[Future] = [pool.submit(send, path) for path in files]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                gate.close()
                for future in futures:
                    future.cancel()
                wait(futures)
                raise next(f.exception() for f in futures if not f.cancelled() and f.exception() is not None
                           and not isinstance(f.exception(), _Stopped))
        return [f.result() for f in futures]

    def create_case(self, label: str = "") -> common_pb2.Case:
        """A new, open case to upload files into (see :meth:`upload_file`, :meth:`commit_case`)."""
        return self.call(self.hospital.CreateCase, hospital_pb2.CreateCaseRequest(label=label))

    def commit_case(self, case_id: str) -> common_pb2.Case:
        """Close a case's upload: the master groups and validates its series.

        Raises
        ------
        grpc.RpcError
            With the master's reason when the series is rejected (the case is then removed).
        """
        return self.call(self.hospital.CommitCase, hospital_pb2.CommitCaseRequest(case_id=case_id))

    def delete_case(self, case_id: str) -> common_pb2.Case:
        """Delete a case and its files."""
        return self.call(self.hospital.DeleteCase, hospital_pb2.DeleteCaseRequest(case_id=case_id))

    def case(self, case_id: str) -> common_pb2.Case:
        """One case, with its series."""
        return self.call(self.hospital.GetCase, hospital_pb2.GetCaseRequest(case_id=case_id))

    def upload_file(self, case_id: str, path: Path, chunk_bytes: int | None = None,
                    progress: Callable[[Path, int], None] | None = None) -> hospital_pb2.UploadedFile:
        """Upload one file in checksummed chunks, resuming from what the master already holds;
        ``progress(path, bytes_held)`` after each chunk.

        A file up to ``IN_MEMORY_FILE_BYTES`` is read once: hashed and sent from memory."""
        size = path.stat().st_size
        data = path.read_bytes() if size <= IN_MEMORY_FILE_BYTES else None
        sha256 = hashlib.sha256(data).hexdigest() if data is not None else _sha256(path)
        if data is not None and len(data) != size:
            raise LocalFileError(f"{path} changed while it was read ({size} bytes, then {len(data)})")
        start = hospital_pb2.StartUploadRequest(case_id=case_id, file_name=path.name, size_bytes=size, sha256=sha256)
        for attempt in self._retrying():
            with attempt:
                status = self.call(self.hospital.StartUpload, start)
                self._max_chunk_bytes = status.max_chunk_bytes or self._max_chunk_bytes
                if status.committed_bytes < status.size_bytes:
                    step = min(chunk_bytes or status.max_chunk_bytes, status.max_chunk_bytes)
                    self.hospital.UploadChunks(self._chunks(path, status.upload_id, status.committed_bytes, step,
                                                            progress, data), timeout=RPC_TIMEOUT_S * 10)
        if progress is not None:
            progress(path, size)
        if not status.upload_id:  # the master already had the whole file
            return hospital_pb2.UploadedFile(case_id=case_id, file_name=path.name, size_bytes=size, sha256=start.sha256)
        return self.call(self.hospital.FinishUpload, hospital_pb2.FinishUploadRequest(upload_id=status.upload_id))

    @staticmethod
    def _chunks(path: Path, upload_id: str, offset: int, step: int,
                progress: Callable[[Path, int], None] | None = None,
                whole: bytes | None = None) -> Iterator[hospital_pb2.UploadChunk]:
        """The file's chunks from ``offset``: from ``whole`` (its bytes, read already) or from disk."""
        with (path.open("rb") if whole is None else nullcontext()) as fh:
            if fh is not None:
                fh.seek(offset)
            while data := (fh.read(step) if fh is not None else whole[offset:offset + step]):
                yield hospital_pb2.UploadChunk(upload_id=upload_id, offset=offset, data=data, crc32=zlib.crc32(data))
                offset += len(data)
                if progress is not None:  # the chunk before this one was taken by the stream
                    progress(path, offset - len(data))

    # jobs
    def submit(self, case_id: str, kind: str, params: dict[str, str] | None = None, priority: int = 0,
               idempotency_key: str = "") -> common_pb2.Job:
        """Submit a job; the same ``idempotency_key`` twice gives the same job."""
        request = hospital_pb2.SubmitJobRequest(case_id=case_id, kind=kind, params=params or {}, priority=priority,
                                                idempotency_key=idempotency_key)
        return self.call(self.hospital.SubmitJob, request)

    def job(self, job_id: str) -> common_pb2.Job:
        return self.call(self.hospital.GetJob, hospital_pb2.GetJobRequest(job_id=job_id))

    def cases(self, limit: int = 0) -> list[common_pb2.Case]:
        """The hospital's cases, oldest first: at most ``limit`` (0: all), fetched page by page."""
        return list(self._pages(self.hospital.ListCases, hospital_pb2.ListCasesRequest(), "cases", limit))

    def cancel(self, job_id: str) -> common_pb2.Job:
        return self.call(self.hospital.CancelJob, hospital_pb2.CancelJobRequest(job_id=job_id))

    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[common_pb2.JobEvent]:
        """Events of a job in order, until it ends; reconnects and resumes after a dropped stream."""
        seq, failures = after_seq, 0
        while True:
            try:
                for event in self.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job_id, after_seq=seq)):
                    seq, failures = event.seq, 0
                    yield event
                return
            except grpc.RpcError as exc:
                if not _is_transient(exc) or failures + 1 >= self._attempts:
                    raise
                failures += 1
                time.sleep(min(0.2 * 2**failures, MAX_BACKOFF_S))

    def artifacts(self, job_id: str) -> list[common_pb2.Artifact]:
        """A job's artifacts, by name, fetched page by page."""
        request = hospital_pb2.ListArtifactsRequest(job_id=job_id)
        return list(self._pages(self.hospital.ListArtifacts, request, "artifacts", 0))

    def download(self, artifact: common_pb2.Artifact, out_dir: Path,
                 reidentify: "Pseudonymizer | None" = None) -> Path:
        """Download an artifact into ``out_dir``, resuming a partial file; checks its sha256.

        With ``reidentify`` a DICOM result of a pseudonymized patient gets the patient's identity
        and the original UIDs back (after the checksum check, so it no longer matches the master's).

        Raises
        ------
        ValueError
            The artifact's name is not a single safe file name (see :func:`safe_file_name`);
            nothing is written, not even ``out_dir``.
        """
        name = safe_file_name(artifact.name)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / name
        partial = target.with_name(target.name + ".part")
        for attempt in self._retrying():
            with attempt:
                offset = partial.stat().st_size if partial.exists() else 0
                with partial.open("ab") as fh:
                    request = hospital_pb2.DownloadArtifactRequest(artifact_id=artifact.artifact_id, offset=offset)
                    for chunk in self.hospital.DownloadArtifact(request, timeout=RPC_TIMEOUT_S * 10):
                        fh.write(chunk.data)
        if _sha256(partial) != artifact.sha256:
            partial.unlink()
            raise IOError(f"{artifact.name}: downloaded bytes do not match the master's sha256")
        partial.replace(target)
        if reidentify is not None:
            reidentify.reidentify_file(target)
        return target

    # operators
    def agents(self) -> list[common_pb2.Agent]:
        """Every agent, by name, fetched page by page."""
        return list(self._pages(self.admin.ListAgents, admin_pb2.ListAgentsRequest(), "agents", 0))

    def _pages(self, method, request, field: str, limit: int) -> Iterator:
        """The items of a paginated listing, page after page, at most ``limit`` (0: all)."""
        count = 0
        while True:
            request.limit = limit - count if limit else 0
            reply = self.call(method, request)
            for item in getattr(reply, field):
                yield item
                count += 1
                if limit and count >= limit:
                    return
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    def jobs(self, limit: int = 0) -> list[common_pb2.Job]:
        """Jobs, newest first: at most ``limit`` (0: all), fetched page by page."""
        return list(self._pages(self.admin.ListJobs, admin_pb2.ListJobsRequest(), "jobs", limit))

    def shards(self, job_id: str) -> list[common_pb2.Shard]:
        """A job's shards, in the order they were made, fetched page by page."""
        return list(self._pages(self.admin.ListShards, admin_pb2.ListShardsRequest(job_id=job_id), "shards", 0))

    def devices(self) -> tuple[list[common_pb2.DeviceModelInfo], list[common_pb2.Device]]:
        """The device catalog (from the first page) and every registered device, fetched page by page."""
        first = self.call(self.admin.ListDevices, admin_pb2.ListDevicesRequest())
        found = list(first.devices)
        if first.next_page_token:
            request = admin_pb2.ListDevicesRequest(page_token=first.next_page_token)
            found += self._pages(self.admin.ListDevices, request, "devices", 0)
        return list(first.catalog), found

    def models(self) -> list[common_pb2.ModelInfo]:
        """Every registered model, by name, fetched page by page."""
        return list(self._pages(self.admin.ListModels, admin_pb2.ListModelsRequest(), "models", 0))

    def register_model(self, package_dir: Path | str) -> common_pb2.ModelInfo:
        """Send a model package folder (``weights.pt``, ``card.json``, ``sha256``) to the registry.

        The master verifies it before storing it; registering the same package again returns it.

        Raises
        ------
        FileNotFoundError
            When the folder lacks one of the package files.
        grpc.RpcError
            INVALID_ARGUMENT (the package does not load, named why), ALREADY_EXISTS (another
            package holds that name and version).
        """
        folder = Path(package_dir)
        missing = [name for name in MODEL_PACKAGE_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a model package: missing {', '.join(missing)}")
        weights, card, sha = (folder / name for name in MODEL_PACKAGE_FILES)

        def messages() -> Iterator[common_pb2.ModelPackageChunk]:
            yield common_pb2.ModelPackageChunk(sha256=sha.read_text().strip(), card_json=card.read_bytes(),
                                               weights_bytes=weights.stat().st_size)
            with weights.open("rb") as fh:
                while data := fh.read(MODEL_CHUNK_BYTES):
                    yield common_pb2.ModelPackageChunk(data=data)

        for attempt in self._retrying():
            with attempt:
                return self.admin.RegisterModel(messages(), timeout=RPC_TIMEOUT_S * 10)
        raise AssertionError("unreachable")

    def cancel_any_job(self, job_id: str) -> common_pb2.Job:
        """Cancel any hospital's job (the operator's cancel; a hospital uses :meth:`cancel`)."""
        return self.call(self.admin.CancelJob, admin_pb2.AdminCancelJobRequest(job_id=job_id))

    def set_priority(self, job_id: str, priority: int) -> common_pb2.Job:
        """Change a job's priority (higher runs first)."""
        return self.call(self.admin.SetJobPriority, admin_pb2.SetJobPriorityRequest(job_id=job_id, priority=priority))

    def drain_agent(self, agent_id: str) -> common_pb2.Agent:
        """Drain an agent: it finishes its running shards, takes no new ones, then leaves."""
        return self.call(self.admin.DrainAgent, admin_pb2.DrainAgentRequest(agent_id=agent_id))

    def set_device(self, device_id: str, status: str | None = None, queue_length: int = -1, hospital: str = "",
                   model_id: str = "") -> common_pb2.Device:
        """Add a treatment machine, or set its status and queue length.

        Parameters
        ----------
        status : str | None
            ``available``, ``busy`` or ``down``; None leaves it as it is.
        queue_length : int
            Treatments waiting on the device; -1 leaves it as it is.
        hospital, model_id : str
            The device's hospital and catalog model, when adding it.

        Raises
        ------
        ValueError
            For a status that is none of those, before anything is sent.
        """
        value = enum_value(common_pb2.DeviceStatus, status) if status is not None else 0
        request = admin_pb2.SetDeviceRequest(device_id=device_id, hospital=hospital, model_id=model_id, status=value,
                                             queue_length=queue_length)
        return self.call(self.admin.SetDevice, request)

    def cluster_status(self) -> admin_pb2.ClusterStatus:
        return self.call(self.admin.GetClusterStatus, admin_pb2.ClusterStatusRequest())

    def add_hospital(self, name: str) -> admin_pb2.AddHospitalResponse:
        """Create a hospital; the reply carries its API token, shown this once."""
        return self.call(self.admin.AddHospital, admin_pb2.AddHospitalRequest(name=name))

    def hospitals(self) -> list[admin_pb2.Hospital]:
        """Every hospital, by name, fetched page by page."""
        return list(self._pages(self.admin.ListHospitals, admin_pb2.ListHospitalsRequest(), "hospitals", 0))

    def revoke_hospital(self, name: str) -> admin_pb2.Hospital:
        return self.call(self.admin.RevokeHospital, admin_pb2.RevokeHospitalRequest(name=name))

    def audit(self, principal: str = "", action: str = "", since_ms: int = 0, limit: int = 0) -> list[admin_pb2.AuditEntry]:
        """Audit entries, oldest first, filtered by who, action and time (all optional): at most
        ``limit`` (0: all), fetched page by page."""
        request = admin_pb2.ListAuditRequest(principal=principal, action=action, since_ms=since_ms)
        return list(self._pages(self.admin.ListAudit, request, "entries", limit))

    # review, approval and consultation
    def versions(self, job_id: str) -> list[hospital_pb2.Version]:
        """Every version of a job's structure sets, plans and doses, with status and history."""
        return list(self.call(self.hospital.ListVersions, hospital_pb2.ListVersionsRequest(job_id=job_id)).versions)

    def review(self, job_id: str, action: str, reviewer_name: str = "", comment: str = "",
               artifact_name: str = "") -> list[hospital_pb2.Version]:
        """``comment``, ``review``, ``approve`` or ``reject`` versions of a job's results: the one
        named ``artifact_name`` (an artifact or its lineage), else the latest of each; returns
        every version after the step. An illegal transition is FAILED_PRECONDITION."""
        request = hospital_pb2.ReviewVersionRequest(job_id=job_id, artifact_name=artifact_name, action=action,
                                                    reviewer_name=reviewer_name, comment=comment)
        return list(self.call(self.hospital.ReviewVersion, request).versions)

    def add_version(self, job_id: str, path: Path | str, lineage: str = "") -> hospital_pb2.Version:
        """Upload a corrected RTSTRUCT as the next version of a job's contours (in draft)."""
        data = Path(path).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()

        def chunks() -> Iterator[hospital_pb2.VersionChunk]:
            yield hospital_pb2.VersionChunk(job_id=job_id, lineage=lineage, size_bytes=len(data), sha256=sha256,
                                            offset=0, data=data[:MODEL_CHUNK_BYTES])
            for offset in range(MODEL_CHUNK_BYTES, len(data), MODEL_CHUNK_BYTES):
                yield hospital_pb2.VersionChunk(offset=offset, data=data[offset:offset + MODEL_CHUNK_BYTES])

        for attempt in self._retrying():
            with attempt:
                return self.hospital.AddVersion(chunks(), timeout=RPC_TIMEOUT_S * 10)
        raise AssertionError("unreachable")

    def share(self, case_id: str, hospital: str, grant: str = "view", until_ms: int = 0) -> hospital_pb2.Share:
        """Share one of the hospital's cases with another hospital (``view``, ``comment``,
        ``review`` or ``approve``), until ``until_ms`` (ms since the epoch; 0: until unshared)."""
        request = hospital_pb2.ShareCaseRequest(case_id=case_id, hospital=hospital, grant=grant, until_ms=until_ms)
        return self.call(self.hospital.ShareCase, request)

    def unshare(self, case_id: str, hospital: str) -> hospital_pb2.Share:
        """End a share now: the consultant's next call on the case is refused."""
        return self.call(self.hospital.UnshareCase, hospital_pb2.UnshareCaseRequest(case_id=case_id, hospital=hospital))

    def shares(self, case_id: str) -> list[hospital_pb2.Share]:
        return list(self.call(self.hospital.ListShares, hospital_pb2.ListSharesRequest(case_id=case_id)).shares)
