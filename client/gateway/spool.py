"""The gateway's folder on disk: nothing it received is lost before the master holds it.

Layout (one folder per series batch, its state in ``state.json``)::

    incoming/<series>/          instances as they arrive (``<SOPInstanceUID>.dcm``, ``series.json``)
    ready/<ms>-<series>/        complete (quiet for the quiet period): being uploaded, run, pushed
    done/<ms>-<series>/         state only: the instances went once the master had committed the case
    failed/<ms>-<series>/       refused by the master, or the job failed: instances kept, reason in the state
    unmatched/<ms>-<series>/    no rule (or a ``skip`` rule) for it: kept, never uploaded
    results/<job>/              a job's downloaded (and re-identified) artifacts

A restarted gateway picks every ``incoming`` and ``ready`` folder up where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .rules import SeriesInfo

STATE_FILE = "state.json"
SERIES_FILE = "series.json"
_SAFE = re.compile(r"^[0-9A-Za-z.\-]{1,96}$")


def _safe(name: str) -> str:
    """A UID as a folder or file name; anything odd becomes a harmless stand-in."""
    return name if _SAFE.match(name) and name not in (".", "..") else re.sub(r"[^0-9A-Za-z.\-]", "_", name)[:96] or "x"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a crash leaves the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Spool:
    """Received series on disk, grouped by series and held until quiet.

    Parameters
    ----------
    root : Path
        The spool folder (created).
    quiet_s : float
        A series is complete once no instance of it arrived for this many seconds.
    """

    FOLDERS = ("incoming", "ready", "done", "failed", "unmatched", "results")

    def __init__(self, root: Path, quiet_s: float) -> None:
        self.root = root
        self.quiet_s = quiet_s
        for name in self.FOLDERS:
            (root / name).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        now = time.monotonic()  # series found at start wait one quiet period more
        self._last: dict[str, float] = {p.name: now for p in (root / "incoming").iterdir() if p.is_dir()}

    def store(self, encoded: bytes, sop_uid: str, series_uid: str, study_uid: str, info: SeriesInfo,
              attachment: bool = False) -> Path:
        """Keep one received instance (Part 10 bytes) with its series; returns its path.

        An ``attachment`` (an RTSTRUCT filed under the image series it references) does not name
        the batch: the rules see the images' modality and description, whichever came first.
        """
        with self._lock:
            folder = self.root / "incoming" / _safe(series_uid)
            folder.mkdir(exist_ok=True)
            described = folder / SERIES_FILE
            if not described.exists() or (not attachment and json.loads(described.read_text()).get("attachment")):
                write_json(described, {"series_uid": series_uid, "study_uid": study_uid, "info": info.__dict__,
                                       "received_ms": int(time.time() * 1000), "attachment": attachment})
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(encoded)
                fh.flush()
                os.fsync(fh.fileno())
            path = folder / f"{_safe(sop_uid)}.dcm"
            os.replace(tmp, path)
            self._last[folder.name] = time.monotonic()
            return path

    def take_quiet(self) -> list[Path]:
        """Move every series quiet for the quiet period from ``incoming`` to ``ready``; returns them."""
        moved = []
        with self._lock:
            now = time.monotonic()
            for name, last in list(self._last.items()):
                if now - last < self.quiet_s:
                    continue
                source = self.root / "incoming" / name
                del self._last[name]
                if not any(source.glob("*.dcm")):
                    shutil.rmtree(source, ignore_errors=True)
                    continue
                series = json.loads((source / SERIES_FILE).read_text())
                n = len(list(source.glob("*.dcm")))
                # The state first, then the move: a series in ready always has its state.
                write_json(source / STATE_FILE, {**series, "instances": n, "step": "upload", "attempts": 0})
                target = self.root / "ready" / f"{int(time.time() * 1000)}-{name}"
                os.replace(source, target)
                moved.append(target)
        return moved

    def pending(self) -> list[Path]:
        """Series in ``ready`` (complete, not finished), oldest first."""
        return sorted(p for p in (self.root / "ready").iterdir() if p.is_dir())

    def incoming_count(self) -> int:
        with self._lock:
            return len(self._last)

    @staticmethod
    def state(folder: Path) -> dict[str, Any]:
        return json.loads((folder / STATE_FILE).read_text())

    @staticmethod
    def save_state(folder: Path, state: dict[str, Any]) -> None:
        write_json(folder / STATE_FILE, state)

    @staticmethod
    def instances(folder: Path) -> list[Path]:
        return sorted(folder.glob("*.dcm"))

    def drop_instances(self, folder: Path) -> None:
        """The master holds the series now: free the disk."""
        for path in self.instances(folder):
            path.unlink()

    def finish(self, folder: Path, outcome: str) -> Path:
        """Move a series out of ``ready`` into ``done``, ``failed`` or ``unmatched``."""
        target = self.root / outcome / folder.name
        os.replace(folder, target)
        return target

    def results_dir(self, job_id: str) -> Path:
        return self.root / "results" / _safe(job_id)
