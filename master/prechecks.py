"""The complete check of uploaded planning-image files, made beside the upload instead of at commit.

A commit needs every CT file of the case parsed and checked (``read_dicom``: every element, the
pixel data, geometry, identity repairs); made there, one file after the other, it was most of the
commit's time. A CT file is handed to :class:`Prechecks` as soon as it is kept, and checked in a
worker thread while the rest of the upload arrives; the commit takes the result, or the error,
which refuses the case naming the file exactly as before. What no worker has checked (a master
restarted meanwhile, a result dropped for room) the commit checks itself: the workers only move
the work.

Threads, not processes: the parse holds the GIL, but a process would send each slice's dataset
and pixels back through a pipe, and spawning workers costs their imports; measured on the 2-core
bench machine, the master spent 4.8 CPU-s per 300-slice upload with two worker processes and
3.4 CPU-s with two threads, and the upload went faster with threads.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rtgrid.engines.imaging.dicom_files import InspectedFile, read_dicom
from rtgrid.engines.imaging.errors import IntakeError

log = logging.getLogger(__name__)

PRECHECK_WORKERS = 2
PRECHECK_HELD_BYTES = 1 << 30
"""Checked files (their decoded pixels) held for commits, at most about this many bytes; the
oldest are dropped first (their commit checks them again)."""


def _check(path: Path, file_name: str) -> InspectedFile:
    """``read_dicom`` of a blob; the file's bytes are let go (its pixels are decoded in ``pixels``),
    so a check held until its commit holds the pixels once."""
    item = read_dicom(path.read_bytes(), file_name)
    if "PixelData" in item.dataset:
        del item.dataset.PixelData
    item.dataset.buffer = None  # the whole file, kept by pydicom for deferred reads (none are left)
    return item


class Prechecks:
    """Checks of kept files under way or done, by ``(file name, sha256)``.

    Parameters
    ----------
    workers : int
        Worker threads (started by :meth:`start` or the first :meth:`submit`).
    held_bytes : int
        See ``PRECHECK_HELD_BYTES``.
    """

    def __init__(self, workers: int = PRECHECK_WORKERS, held_bytes: int = PRECHECK_HELD_BYTES) -> None:
        self.workers, self.held_bytes = workers, held_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._checks: OrderedDict[tuple[str, str], tuple[Future, int]] = OrderedDict()
        self._held = 0

    def start(self) -> None:
        """Start the workers (if not yet)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rtgrid-precheck")

    def submit(self, path: Path, file_name: str, sha256: str, size_bytes: int) -> None:
        """Check the blob at ``path`` (kept as ``file_name``) in a worker."""
        self.start()
        key = (file_name, sha256)
        with self._lock:
            if key in self._checks or self._pool is None:
                return
            try:
                future = self._pool.submit(_check, path, file_name)
            except RuntimeError:  # a pool shut down meanwhile: the commit checks the file itself
                log.warning("prechecks unavailable; commits check their files themselves", exc_info=True)
                return
            self._checks[key] = (future, size_bytes)
            self._held += size_bytes
            while self._held > self.held_bytes and len(self._checks) > 1:
                (_, (oldest, size)) = self._checks.popitem(last=False)
                oldest.cancel()
                self._held -= size

    def take(self, file_name: str, sha256: str) -> InspectedFile | None:
        """The check of a file, waited for and forgotten; ``None`` when none was made.

        Raises
        ------
        IntakeError
            The file failed its check (it names the file and the problem).
        """
        with self._lock:
            found = self._checks.pop((file_name, sha256), None)
            if found is not None:
                self._held -= found[1]
        if found is None:
            return None
        try:
            return found[0].result()
        except IntakeError:
            raise
        except Exception:  # a cancelled check, an unexpected failure: the commit checks the file itself
            log.warning("the precheck of %s failed; checked at commit instead", file_name, exc_info=True)
            return None

    def discard(self, files: list[tuple[str, str]]) -> None:
        """Forget the checks of these ``(file name, sha256)`` (a refused or deleted case's)."""
        with self._lock:
            for key in files:
                found = self._checks.pop(key, None)
                if found is not None:
                    found[0].cancel()
                    self._held -= found[1]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._checks.clear()
            self._held = 0
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
