"""The gateway's work: hold received series until complete, then for each one upload it (after
de-identification if asked), submit the job its rule names, wait for the job, fetch the results,
re-identify them and push the DICOM ones to every destination.

Each series moves through steps (``upload`` → ``submit`` → ``watch`` → ``fetch`` → ``push``)
recorded in its ``state.json`` before the next begins, so a restarted gateway resumes a series
where it stopped. A failed step is retried with exponential backoff (``BACKOFF_*``) and logged;
a refusal that retrying cannot cure (the master rejects the series, the job fails) moves the
series to ``failed`` with the reason, its instances kept.

An RTSTRUCT joins the image series it was drawn on when that series is still being received (a
TPS sends the CT and the physician's structures together), so a plan rule gets both in one case.
On a grid that requires approval (``rtgrid up --require-approval``) a plan's results wait at the
``fetch`` step, polled every ``APPROVAL_POLL_S``, until the plan is approved; nothing is pushed
before.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pydicom

from rtgrid.protos.v1 import common_pb2

from ..sdk import Client, state_name
from .dicomnet import Destination, PushError, push, series_info
from .rules import Rule, SeriesInfo, choose
from .spool import Spool

if TYPE_CHECKING:
    from ..pseudonym import Pseudonymizer

log = logging.getLogger("rtgrid.gateway")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0
APPROVAL_POLL_S = 10.0
"""How often a plan held back for approval is asked for again."""
POLL_S = 0.25
"""How often quiet series and due retries are looked for."""
SDK_ATTEMPTS = 3
"""Tries per RPC inside one step (the step itself is retried with the gateway's backoff)."""
PERMANENT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
             grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE)
"""Refusals that retrying cannot cure: the series goes to ``failed``."""


class Refused(Exception):
    """The master refused the series or the job failed: no retry."""


class AwaitingApproval(Exception):
    """The grid holds a result back until a physicist approves it: ask again later, not a failure."""


def referenced_series_uid(ds: pydicom.Dataset) -> str:
    """The image series an RTSTRUCT was drawn on (its first referenced series), else ``""``."""
    try:
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError, KeyError):
        return ""


class Gateway:
    """Receives series (see :meth:`on_store`), and runs each complete one through the grid.

    Parameters
    ----------
    client : Client
        The hospital's connection to the master.
    spool : Spool
        Where series wait.
    rules : list[Rule]
        Checked in order; the first match names the job.
    destinations : list[Destination]
        Where DICOM results are pushed.
    ae_title : str
        This node's AE title (the calling AE title of pushes).
    pseudonymizer : Pseudonymizer | None
        De-identify before upload and re-identify results before pushing them.
    workers : int
        Series processed at once (each waits on its job).
    report : Callable[[dict], None]
        Told of every series that ends (``done``, ``failed`` or ``unmatched``).
    """

    def __init__(self, client: Client, spool: Spool, rules: list[Rule], destinations: list[Destination],
                 ae_title: str, pseudonymizer: "Pseudonymizer | None" = None, workers: int = 4,
                 report: Callable[[dict[str, Any]], None] = lambda record: None) -> None:
        self.client, self.spool, self.rules, self.destinations = client, spool, rules, destinations
        self.ae_title, self.pseudonymizer, self.report = ae_title, pseudonymizer, report
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtgrid-gateway")
        self._busy: set[str] = set()
        self._unreadable: set[str] = set()
        self._lock = threading.Lock()
        self._identity = threading.Lock()  # the pseudonym mapping is one file

    # receiving
    def on_store(self, encoded: bytes, ds: pydicom.Dataset, calling_ae: str) -> None:
        """Keep one received instance with its series.

        Raises
        ------
        ValueError
            The instance has no SOP instance UID or series instance UID to group it by.
        """
        meta = getattr(ds, "file_meta", None)
        sop = str(ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else ""))
        series = str(ds.get("SeriesInstanceUID", "") or "")
        if not sop or not series:
            raise ValueError("the instance has no SOPInstanceUID or SeriesInstanceUID")
        images = referenced_series_uid(ds) if ds.get("Modality") == "RTSTRUCT" else ""
        self.spool.store(encoded, sop, images or series, str(ds.get("StudyInstanceUID", "") or ""),
                         series_info(ds, calling_ae), attachment=bool(images))

    # the loop
    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: move quiet series to ready and start those whose next try is due."""
        while not stop.is_set():
            self.spool.take_quiet()
            now = time.time()
            for folder in self.spool.pending():
                with self._lock:
                    if folder.name in self._busy:
                        continue
                    try:
                        state = self.spool.state(folder)
                    except (OSError, ValueError) as exc:  # e.g. edited by hand: say so once, keep serving
                        if folder.name not in self._unreadable:
                            self._unreadable.add(folder.name)
                            log.error("series folder %s has no readable state: %s", folder, exc)
                        continue
                    if state.get("next_try", 0) > now:
                        continue
                    self._busy.add(folder.name)
                self._pool.submit(self._process, folder)
            stop.wait(POLL_S)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _process(self, folder: Path) -> None:
        state = self.spool.state(folder)
        try:
            while state["step"] != "end":
                step = state["step"]
                getattr(self, f"_step_{step}")(folder, state)
                if state["step"] != step:
                    state["attempts"] = 0
                    state.pop("last_error", None)
                self.spool.save_state(folder, state)
            self._finish(folder, state, state.get("outcome", "done"))
        except AwaitingApproval as exc:
            if not state.get("awaiting_approval"):  # said once, not at every poll
                state["awaiting_approval"] = str(exc)
                log.info("series %s: %s", state["series_uid"], exc)
                self.report({"event": "awaiting_approval", "error": str(exc),
                             **{k: state.get(k) for k in ("series_uid", "study_uid", "case_id", "job_id", "kind")}})
            state["next_try"] = time.time() + APPROVAL_POLL_S
            self.spool.save_state(folder, state)
        except Refused as exc:
            state.update(step="end", outcome="failed", error=str(exc))
            self.spool.save_state(folder, state)
            self._finish(folder, state, "failed")
        except Exception as exc:  # transient or unknown: keep the series, try again later
            state["attempts"] = state.get("attempts", 0) + 1
            delay = min(BACKOFF_FIRST_S * 2 ** (state["attempts"] - 1), BACKOFF_MAX_S)
            state.update(next_try=time.time() + delay, last_error=_describe(exc))
            self.spool.save_state(folder, state)
            log.warning("series %s, step %s, attempt %d: %s; retrying in %.0f s", state["series_uid"],
                        state["step"], state["attempts"], _describe(exc), delay)
        finally:
            with self._lock:
                self._busy.discard(folder.name)

    def _finish(self, folder: Path, state: dict[str, Any], outcome: str) -> None:
        self.spool.finish(folder, outcome)
        record = {"event": outcome, **{k: state.get(k) for k in ("series_uid", "study_uid", "instances", "case_id",
                                                                  "job_id", "kind", "pushed", "error")}}
        (log.info if outcome == "done" else log.warning)("series %s: %s", state["series_uid"], record)
        self.report(record)

    # the steps
    def _step_upload(self, folder: Path, state: dict[str, Any]) -> None:
        rule = choose(self.rules, SeriesInfo(**state["info"]))
        if rule is None or rule.skip:
            state.update(step="end", outcome="unmatched", error="no rule starts a job for this series"
                         if rule is None else f"skipped by {rule.name}")
            return
        files = self.spool.instances(folder)
        info = state["info"]
        label = f"{info['calling_ae']} {info['modality']}".strip()
        try:
            if self.pseudonymizer is not None:
                with tempfile.TemporaryDirectory(prefix="rtgrid-gateway-") as tmp:
                    with self._identity:
                        copies, pseudonym = self.pseudonymizer.pseudonymize(files, Path(tmp))
                    case = self.client.upload_folder(*copies, label=pseudonym).case
            else:
                case = self.client.upload_folder(*files, label=label).case
        except grpc.RpcError as exc:
            if exc.code() in PERMANENT:
                raise Refused(f"the master refused the series: {exc.code().name}: {exc.details()}") from None
            raise
        except (pydicom.errors.InvalidDicomError, ValueError) as exc:
            raise Refused(f"cannot upload the series: {exc}") from None
        state.update(case_id=case.case_id, rule=rule.name or "default", kind=rule.kind, step="submit")
        self.spool.save_state(folder, state)
        self.spool.drop_instances(folder)  # the master has the series now

    def _rule(self, state: dict[str, Any]) -> Rule:
        rule = choose(self.rules, SeriesInfo(**state["info"]))
        if rule is None or rule.skip:
            raise Refused("the rules changed: none starts a job for this series any more")
        return rule

    def _step_submit(self, folder: Path, state: dict[str, Any]) -> None:
        rule = self._rule(state)
        try:  # the key makes a resubmission after a crash the same job
            job = self.client.submit(state["case_id"], rule.kind, rule.job_params(), rule.priority,
                                     idempotency_key=f"rtgrid-gateway:{folder.name}:{rule.kind}")
        except grpc.RpcError as exc:
            if exc.code() in PERMANENT:
                raise Refused(f"the master refused the job: {exc.code().name}: {exc.details()}") from None
            raise
        log.info("series %s: case %s, %s job %s", state["series_uid"], state["case_id"], rule.kind, job.job_id)
        state.update(job_id=job.job_id, step="watch")

    def _step_watch(self, folder: Path, state: dict[str, Any]) -> None:
        for _ in self.client.watch(state["job_id"]):
            pass
        job = self.client.job(state["job_id"])
        if job.state != common_pb2.JOB_STATE_SUCCEEDED:
            if job.state not in (common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED):
                raise RuntimeError(f"job {job.job_id} is still {state_name(job.state)}")
            raise Refused(f"job {job.job_id} {state_name(job.state)}: {job.error}")
        state["step"] = "fetch"

    def _step_fetch(self, folder: Path, state: dict[str, Any]) -> None:
        out = self.spool.results_dir(state["job_id"])
        dicom = []
        for artifact in self.client.artifacts(state["job_id"]):
            try:
                with self._identity:
                    path = self.client.download(artifact, out, reidentify=self.pseudonymizer)
            except grpc.RpcError as exc:
                if artifact.modality == "RTPLAN" and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise AwaitingApproval(f"job {state['job_id']}: {exc.details()}") from None
                raise
            if artifact.modality:
                dicom.append(path.name)
        state.pop("awaiting_approval", None)
        state.update(results=str(out), dicom=sorted(dicom), pushed={}, step="push")

    def _step_push(self, folder: Path, state: dict[str, Any]) -> None:
        out = Path(state["results"])
        files = [out / name for name in state["dicom"]]
        for destination in self.destinations:
            if state["pushed"].get(str(destination)):
                continue
            state["pushed"][str(destination)] = push(files, destination, self.ae_title)
            self.spool.save_state(folder, state)
            log.info("series %s: %d results pushed to %s", state["series_uid"], len(files), destination)
        state["step"] = "end"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, PushError):
        return f"push: {exc}"
    return f"{type(exc).__name__}: {exc}"
