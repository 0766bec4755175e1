"""Content-addressed blob store on disk: files are named by their sha256.

Writes go to a temporary file in the same folder, are fsynced, then renamed into place, so a
blob either exists whole or not at all (a crash never leaves half a blob under its name). A write
the disk refuses for space (full disk, quota, file size limit) raises :class:`BlobWriteError`
(RESOURCE_EXHAUSTED) naming the store's folder.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ResourceExhausted

# The ways a disk says "no room": full, over quota, over the process's file size limit.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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

    def adopt(self, path: Path, sha256: str) -> None:
        """Move a finished, verified file (e.g. a completed upload) into the store as ``sha256``."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
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
        self.path(sha256).unlink(missing_ok=True)

    def partial_path(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.partial_dir / f"{upload_id}.part"

    def blob_count(self) -> int:
        """Number of stored blobs (partials excluded), for checks that nothing was left behind."""
        return sum(1 for p in self.root.glob("??/*") if not p.name.startswith(".tmp-"))
