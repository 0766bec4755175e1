"""Content-addressed blob store on disk: files are named by their sha256.

Writes go to a temporary file in the same folder, are fsynced, then renamed into place, so a
blob either exists whole or not at all (a crash never leaves half a blob under its name). A write
the disk refuses for space (full disk, quota, file size limit) raises :class:`BlobWriteError`
(RESOURCE_EXHAUSTED) naming the store's folder.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import ResourceExhausted

# The ways a disk says "no room": full, over quota, over the process's file size limit.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Blobs made durable at once (fsync waits on the disk, not the CPU; the disk groups them).
SYNC_THREADS = 8


class BlobWriteError(ResourceExhausted):
    """The blob store's disk has no room for a write."""


def write_fully(fh: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file: a nearly full disk takes part of a write and
    says nothing; the write of the rest then fails with the disk's error."""
    view = memoryview(data)
    while view:
        written = fh.write(view)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _file_sha256(fh: BinaryIO) -> str:
    """sha256 of an open file's bytes, read through a memory map (no copy; hashlib lets go of the GIL)."""
    if os.fstat(fh.fileno()).st_size == 0:
        return hashlib.sha256(b"").hexdigest()
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return hashlib.sha256(mapped).hexdigest()


def _holds(target: Path, size_bytes: int) -> bool:
    """Whether the blob ``target`` is there whole, by its size. A blob kept from an upload stream
    is renamed into place before it is synced (:meth:`BlobStore.put_unsynced`); a master stopped
    by a power loss in between can leave the name on a shorter file, which the same bytes sent
    again must replace rather than trust."""
    try:
        return target.stat().st_size == size_bytes
    except FileNotFoundError:
        return False


class BlobStore:
    """Blobs under ``root/ab/cdef...``; partial uploads under ``root/partial/``.

    Parameters
    ----------
    root : Path
        Folder of the store; created when missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial_dir = root / "partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._syncer: ThreadPoolExecutor | None = None
        self._syncing: dict[str, Future] = {}  # sha256 -> its fsync under way (see sync_soon)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:]

    @contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Around a write into the store: a refusal for space becomes :class:`BlobWriteError`."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in NO_ROOM_ERRNOS:
                raise
            raise BlobWriteError(
                f"the blob store's disk at {self.root} has no room: {what} could not be written ({exc.strerror})"
            ) from exc

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256 (idempotent)."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            with self.writing(f"a blob of {len(data)} bytes"):
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
                try:
                    with os.fdopen(fd, "wb", buffering=0) as fh:
                        write_fully(fh, data)
                        os.fsync(fh.fileno())
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        return sha

    def put_written(self, write: Callable[[BinaryIO], None], what: str) -> str:
        """Store what ``write`` writes into a file; returns its sha256 (idempotent).

        For large blobs (a CT's volume): written straight to a temporary file, hashed from the page
        cache, fsynced and renamed into place, with no copy of the whole in memory. ``what`` names
        the blob in a :class:`BlobWriteError`.
        """
        with self.writing(what):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            try:
                with os.fdopen(fd, "w+b") as fh:
                    write(fh)
                    fh.flush()
                    sha = _file_sha256(fh)
                    os.fsync(fh.fileno())
                target = self.path(sha)
                if target.exists():
                    os.unlink(tmp)
                    return sha
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._fsync(target)  # its name in its folder
        return sha

    def put_unsynced(self, data: bytes, sha256: str) -> bool:
        """Store ``data``, verified already as ``sha256``, without waiting for the disk: whole or
        not at all under its name, durable after :meth:`sync` (one wait for many blobs). A name a
        power loss before that sync left on a shorter file is written again. Returns whether it
        was written (``False``: the store held it already)."""
        target = self.path(sha256)
        if _holds(target, len(data)):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                write_fully(fh, data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def sync_soon(self, sha256s: list[str]) -> None:
        """Start making these blobs durable in the background (the disk's wait off the caller's
        path); :meth:`sync` waits for it."""
        pool = self._sync_pool()
        started = []
        with self._lock:
            for sha256 in sha256s:
                if sha256 not in self._syncing:
                    self._syncing[sha256] = pool.submit(self._fsync, self.path(sha256))
                    started.append(sha256)
            futures = [(sha256, self._syncing[sha256]) for sha256 in started]
        for sha256, future in futures:  # outside the lock: a future done already calls back at once
            future.add_done_callback(functools.partial(self._synced, sha256))

    def _synced(self, sha256: str, future: Future) -> None:
        """A background sync that succeeded is forgotten (a later :meth:`sync` of a clean file is
        quick); a failure stays for :meth:`sync` to raise."""
        if future.exception() is None:
            with self._lock:
                if self._syncing.get(sha256) is future:
                    del self._syncing[sha256]

    def sync(self, sha256s: list[str]) -> None:
        """Wait until these blobs and their names are on disk (before a store commit that relies on
        them): those :meth:`sync_soon` started are waited for, the others synced now, in parallel.

        Raises
        ------
        OSError
            The disk refused (the first failure).
        """
        pool = self._sync_pool()
        with self._lock:
            started = [self._syncing.pop(sha256, None) for sha256 in dict.fromkeys(sha256s)]
        waits = [found if found is not None else pool.submit(self._fsync, self.path(sha256))
                 for sha256, found in zip(dict.fromkeys(sha256s), started)]
        for future in waits:
            future.result()

    @staticmethod
    def _fsync(path: Path) -> None:
        """The file's bytes, then its name in its folder."""
        for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
            fd = os.open(target, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="rtgrid-blob-sync")
            return self._syncer

    def adopt(self, path: Path, sha256: str) -> None:
        """Move a finished, verified file (e.g. a completed upload) into the store as ``sha256``."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if _holds(target, path.stat().st_size):
            path.unlink()
        else:
            os.replace(path, target)

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def iter_chunks(self, sha256: str, offset: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` pieces of a blob from ``offset`` on."""
        with self.path(sha256).open("rb") as fh:
            fh.seek(offset)
            while data := fh.read(chunk_bytes):
                yield offset, data
                offset += len(data)

    def delete(self, sha256: str) -> None:
        with self._lock:
            self._syncing.pop(sha256, None)
        self.path(sha256).unlink(missing_ok=True)

    def partial_path(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.partial_dir / f"{upload_id}.part"

    def blob_count(self) -> int:
        """Number of stored blobs (partials excluded), for checks that nothing was left behind."""
        return sum(1 for p in self.root.glob("??/*") if not p.name.startswith(".tmp-"))
