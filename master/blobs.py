"""Content-addressed blob store on disk: files are named by their sha256.

Writes go to a temporary file in the same folder, are fsynced, then renamed into place, so a
blob either exists whole or not at all (a crash never leaves half a blob under its name).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256 (idempotent)."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
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
