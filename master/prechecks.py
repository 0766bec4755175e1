"""The complete check of uploaded planning-image files, made beside the upload instead of at commit.

A commit needs every CT file of the case parsed and checked (``read_dicom``: every element, the
pixel data, geometry, identity repairs); made there, one file after the other, it was most of the
commit's time. A CT file is handed to :class:`Prechecks` as soon as it is kept, and checked in a
worker process while the rest of the upload arrives; the commit takes the result, or the error,
which refuses the case naming the file exactly as before. What no worker has checked (a master
restarted meanwhile, a result dropped for room, a worker that died) the commit checks itself: the
workers only move the work.

Processes, not threads: the parse holds the GIL for milliseconds per file, and in threads it held
up the master's event loop, so every submit and watch of every hospital waited behind the uploads
of the others. A worker sends back only the file's description and where its pixels lie in the
blob, proven equal to the decoded ones (:func:`stored_pixels_offset`): the commit reads them from
there (the page cache) when it builds the volume. Only an encoded image's pixels (compressed, deflated)
travel back decoded. Sending every file's pixels cost a 300-slice CT 157 MB pickled through a
pipe, unpickled into fresh memory in the master and held there until the commit. The dataset
(pickled, it cost the commit more than the parse) is parsed again from the blob only where the
series asks for it. Workers run at a lower priority than the master, whose calls come first.
Measured on the 2-core bench machine (2026-12-05): a 300-slice upload over TLS at 65-76 MB/s
against 47-50 MB/s with two threads, and in a wave of 50 hospitals the master's event loop stalled
over 50 ms 31 times instead of 158.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from rtgrid.engines.imaging.dicom_files import (
    DicomFileInfo, InspectedFile, read_dataset, read_dicom, stored_pixels_offset,
)
from rtgrid.engines.imaging.errors import IntakeError

log = logging.getLogger(__name__)

PRECHECK_WORKERS = 2
PRECHECK_NICE = 5
"""How much lower than the master the workers run (``os.nice`` increment)."""
PRECHECK_HELD_BYTES = 1 << 30
"""Checks held for commits, at most about this many bytes of their files (an encoded image's
decoded pixels are held in memory); the oldest are dropped first (their commit checks them again)."""
_WORKER_MODULES = ["rtgrid.engines.imaging.dicom_files"]


def _start_worker() -> None:
    os.nice(PRECHECK_NICE)


@dataclass(frozen=True)
class StoredPixels:
    """Where a checked file's pixels lie in its blob: ``shape`` values of ``dtype`` (numpy's type
    string) from byte ``offset`` on."""

    offset: int
    dtype: str
    shape: tuple[int, ...]

    def read(self, path: Path) -> np.ndarray:
        """The pixels, read from the file at ``path``. Read, not mapped: a mapping holds a file
        descriptor until the commit ends, one per slice, and a CT of hundreds of slices committed
        beside others would reach a process's usual limit of 1024."""
        return np.fromfile(path, dtype=np.dtype(self.dtype), count=math.prod(self.shape),
                           offset=self.offset).reshape(self.shape)


def _check(path: str, file_name: str) -> tuple[DicomFileInfo, np.ndarray | StoredPixels | None]:
    """``read_dicom`` of a blob, in a worker: its description goes back, with where its pixels lie
    in the blob, or the decoded pixels of an encoded image."""
    data = Path(path).read_bytes()
    item = read_dicom(data, file_name)
    offset = stored_pixels_offset(item, data)
    if offset is None:
        return item.info, item.pixels
    return item.info, StoredPixels(offset, item.pixels.dtype.str, item.pixels.shape)


def _dataset(path: Path, file_name: str) -> Dataset:
    return read_dataset(path.read_bytes(), file_name)


class Prechecks:
    """Checks of kept files under way or done, by ``(case id, file name, sha256)``: the same file
    in two cases (a hospital sending a CT again as a new case) is checked for each, as each commit
    takes its own.

    Parameters
    ----------
    workers : int
        Worker processes (started by :meth:`start` or the first :meth:`submit`).
    held_bytes : int
        See ``PRECHECK_HELD_BYTES``.
    """

    def __init__(self, workers: int = PRECHECK_WORKERS, held_bytes: int = PRECHECK_HELD_BYTES) -> None:
        self.workers, self.held_bytes = workers, held_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._checks: OrderedDict[tuple[str, str, str], tuple[Future, int, Path]] = OrderedDict()
        self._held = 0

    def start(self) -> None:
        """Start the workers now (if not yet), so that the first upload does not wait for them."""
        with self._lock:
            self._start()
            if self._pool is not None:
                for _ in range(self.workers):  # a worker is started per task, up to ``workers``
                    self._pool.submit(os.getpid)

    def _start(self) -> None:
        if self._pool is None and not self._closed:
            # forkserver: a clean process to fork from (the master has gRPC and Ray threads), with
            # the DICOM reader imported once there rather than in every worker.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_WORKER_MODULES)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker)

    def submit(self, path: Path, case_id: str, file_name: str, sha256: str, size_bytes: int) -> None:
        """Check the blob at ``path`` (kept as ``file_name`` in case ``case_id``) in a worker."""
        key = (case_id, file_name, sha256)
        with self._lock:
            self._start()
            if key in self._checks or self._pool is None:
                return
            try:
                future = self._pool.submit(_check, str(path), file_name)
            except BrokenProcessPool:  # a worker died (killed, out of memory): new workers for the next files
                log.warning("a precheck worker died; starting new ones (the files it held are checked at commit)")
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                return
            except RuntimeError:  # shut down meanwhile: the commit checks the file itself
                log.warning("prechecks unavailable; commits check their files themselves", exc_info=True)
                return
            self._checks[key] = (future, size_bytes, path)
            self._held += size_bytes
            while self._held > self.held_bytes and len(self._checks) > 1:
                (_, (oldest, size, _)) = self._checks.popitem(last=False)
                oldest.cancel()
                self._held -= size

    def take(self, case_id: str, file_name: str, sha256: str) -> InspectedFile | None:
        """The check of a case's file, waited for and forgotten; ``None`` when none was made.

        Raises
        ------
        IntakeError
            The file failed its check (it names the file and the problem).
        """
        with self._lock:
            found = self._checks.pop((case_id, file_name, sha256), None)
            if found is not None:
                self._held -= found[1]
        if found is None:
            return None
        future, _, path = found
        try:
            info, pixels = future.result()
            if isinstance(pixels, StoredPixels):
                pixels = pixels.read(path)
        except IntakeError:
            raise
        except Exception:  # a cancelled check, a dead worker, a blob gone: the commit checks the file itself
            log.warning("the precheck of %s failed; checked at commit instead", file_name, exc_info=True)
            return None
        return InspectedFile(info, pixels, functools.partial(_dataset, path, file_name))

    def discard(self, files: list[tuple[str, str, str]]) -> None:
        """Forget the checks of these ``(case id, file name, sha256)`` (a refused or deleted case's)."""
        with self._lock:
            for key in files:
                found = self._checks.pop(key, None)
                if found is not None:
                    found[0].cancel()
                    self._held -= found[1]

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
            self._checks.clear()
            self._held = 0
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
