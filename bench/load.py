"""Load benchmark: many hospitals, each its own tenant, upload, submit and watch at once on the secure grid.

``python -m bench.load`` starts a real grid on 127.0.0.1 as ``rtgrid up`` deploys it
(``bench.secure_grid``: a private CA from ``rtgrid certs``, a TLS master, ``--agents`` mutual-TLS
agent processes of one CPU each), makes ``--hospitals`` hospitals through the admin API (each a
tenant with its own API token) and gives each one job of a mix:

- ``contour-small``: a small phantom CT (``--slices`` x ``--size`` x ``--size``), kind ``contour``;
- ``contour-512``: a full-size CT (``--big-slices`` x 512 x 512), kind ``contour``;
- ``plan``: a phantom CT with its RTSTRUCT and medical order, kind ``plan`` (5 beams, 5 mm dose grid);
- ``full-devices``: the same inputs, kind ``full`` with device plans for two linacs (converted, QA'd).

Then all hospitals start together, each with its own client (a thread each, spread over
``--client-processes`` processes, as hospitals are machines of their own), and:

1. upload their files (``Client.upload_folder``: chunked upload, finish, commit);
2. submit their job;
3. watch it to the end (one WatchJob stream under a deadline; a job that has not ended is
   cancelled), checking that the events arrive with sequence numbers 1, 2, 3 ... without gap or
   repeat, that the last one is the job's final state, and that a replay of the job's events
   afterwards is the same list.

``--soak MINUTES`` keeps a stream of jobs going instead: after the uploads every hospital submits
its job again and again until the time is up, at most ``--soak-in-flight`` jobs at once over the
grid and ``--soak-max-jobs`` in all (both shared out among the client processes); the master's
memory over the soak says whether it stays flat.

Everything is bounded: every RPC has a deadline, each watch ``--job-timeout``, the whole run
``--wave-timeout`` (then the jobs left are cancelled and the run fails). The master's resident
memory (VmRSS of its process, and its parts RssAnon and RssShmem) is sampled every ``RSS_SAMPLE_S`` throughout.

Figures: ``jobs_total``, ``jobs_succeeded``, ``events_in_order`` (jobs whose watcher saw every
event in order and whose replay matched), p50 and p99 latencies of upload, submit (the RPC), first
event (submit → first event on the watch; ``watch_first_event``: its part after SubmitJob returned)
and job (submit → final event), per job kind, the master's RSS over time (``master_rss``: start,
end, max, growth and samples), and ``goals``: each goal of the issue with whether this run met it.
Human-readable lines go to stderr; stdout carries exactly one JSON line. The exit status is 1 when
a job failed or a watcher saw its events out of order (a missed latency or memory goal is only
reported).

Usage::

    python -m bench.load
    python -m bench.load --soak 3
    python -m bench.load --hospitals 6 --big 0 --plans 1 --devices-jobs 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.grid import TERMINAL, _load, _percentile, run_benchmark, say
from bench.secure_grid import SecureLocalGrid
from rtgrid.client.local_grid import make_pki
from rtgrid.client.sdk import Client, state_name
from rtgrid.engines.phantom import PHANTOM_ORDER, make_phantom, write_phantom_case, write_plan_inputs
from rtgrid.protos.v1 import common_pb2, hospital_pb2

CLIENT_PROCESSES = 5  # 10 hospitals per process in the default wave
RSS_SAMPLE_S = 0.1
RSS_REPORTED_SAMPLES = 60  # the samples in the JSON line, evenly picked from all of them
REPLAY_TIMEOUT_S = 30.0
START_BARRIER_S = 120.0
FIRST_EVENT_GOAL_MS = 100.0
# Memory is flat when the mean RSS of the soak's last quarter is at most this much above that of
# its second quarter (the first is warm-up: models loaded, caches and pools filled).
RSS_FLAT_MB = 20.0
RSS_FLAT_FRACTION = 0.05
BIG_SHAPE_XY, BIG_SPACING_MM = 512, (0.98, 0.98, 2.0)
PLAN_SHAPE, PLAN_SPACING_MM = (36, 112, 112), (4.5, 4.5, 3.0)
PLAN_PARAMS = {"beams": "5", "dose_grid_mm": "5"}  # as tests/grid/test_plan_e2e.py: small enough to finish
DEVICES = "VERSA-AGILITY,SYNERGY-MLCI2"


@dataclass(frozen=True)
class JobSpec:
    """What one hospital uploads and which job it submits on that case.

    Attributes
    ----------
    label : str
        Its place in the mix (``contour-small``, ``contour-512``, ``plan``, ``full-devices``).
    kind : str
        The job kind submitted (``contour``, ``plan``, ``full``).
    paths : tuple of Path
        Folders and files uploaded into the case (a CT series, perhaps an RTSTRUCT).
    params : dict
        The job's parameters.
    contours_first : bool
        Run a contour job on the case first and name it in ``contours_job`` (a ``plan`` on the
        automatic contours plus the uploaded RTSTRUCT); it is measured as a job of its own.
    """

    label: str
    kind: str
    paths: tuple[Path, ...]
    params: dict[str, str] = field(default_factory=dict)
    contours_first: bool = False


@dataclass
class JobRun:
    """What one job measured, seen from its hospital."""

    label: str
    job_id: str = ""
    submit_s: float = 0.0
    first_event_s: float = -1.0
    job_s: float = 0.0
    state: str = ""
    message: str = ""
    events: int = 0
    in_order: bool = False
    replay_matches: bool = False
    error: str = ""


@dataclass
class HospitalRun:
    """What one simulated hospital measured: its upload and its jobs."""

    name: str
    label: str
    upload_s: float = 0.0
    upload_bytes: int = 0
    started: float = 0.0
    finished: float = 0.0
    error: str = ""  # before any job (upload, start), or a job that could not be submitted
    jobs: list[JobRun] = field(default_factory=list)

    @property
    def first_event_s(self) -> float:
        return self.jobs[0].first_event_s if self.jobs else -1.0

    @property
    def events(self) -> int:
        return self.jobs[0].events if self.jobs else 0


class RssSampler(threading.Thread):
    """Samples a process's resident memory (MiB), with the seconds since the start, until stopped:
    the whole (VmRSS) and its parts, the process's own heap (RssAnon) and the shared memory it has
    mapped (RssShmem: Ray's object store, whose pages the master touches when it puts shard inputs)."""

    FIELDS = ("VmRSS", "RssAnon", "RssShmem")

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, ...]] = []  # (seconds, then MiB of each of FIELDS)
        self._stop_event = threading.Event()

    def rss_mb(self) -> tuple[float, ...]:
        """MiB of each of ``FIELDS`` for the process now."""
        found = dict.fromkeys(self.FIELDS, 0.0)
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in found:
                    found[name] = int(value.split()[0]) / 1024
        return tuple(found.values())

    def run(self) -> None:
        started = time.perf_counter()
        while True:
            try:
                self.samples.append((time.perf_counter() - started, *self.rss_mb()))
            except OSError:
                return
            if self._stop_event.wait(RSS_SAMPLE_S):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


@dataclass(frozen=True)
class SoakBounds:
    """A soak's bounds for one client process: its end (``time.perf_counter``), jobs at once, jobs in all."""

    deadline: float
    in_flight: int
    max_jobs: int


class Soak:
    """The bounds of a soak shared by the hospitals of one client process.

    Slots are handed out first come, first served (a ticket each), so a hospital that just
    finished a job queues behind the others instead of taking its slot again at once. A
    hospital's first job waits only for a slot, not for the deadline: every hospital runs one.
    """

    def __init__(self, bounds: SoakBounds) -> None:
        self.deadline = bounds.deadline
        self.in_flight, self.limit = 0, bounds.in_flight
        self.left = bounds.max_jobs
        self._next_ticket = self._serving = 0
        self._cond = threading.Condition()
        self._skipped: set[int] = set()

    def take(self, first: bool = False) -> bool:
        """Wait for a free slot in turn (a later job: until the deadline); False when the soak is
        over for this hospital."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while True:
                    over = not first and (self.left <= 0 or time.perf_counter() >= self.deadline)
                    if over:
                        return False
                    if ticket == self._serving and self.in_flight < self.limit:
                        self.in_flight += 1
                        self.left -= 1
                        return True
                    # Bounded waits: the deadline passes without anyone notifying.
                    self._cond.wait(timeout=min(1.0, max(0.01, self.deadline - time.perf_counter())))
            finally:
                if ticket == self._serving:
                    self._serving += 1
                else:  # leaving out of turn (the soak is over): drop the ticket from the line
                    self._skipped.add(ticket)
                while self._serving in self._skipped:
                    self._skipped.discard(self._serving)
                    self._serving += 1
                self._cond.notify_all()

    def give(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()


def run_job(client: Client, case_id: str, label: str, kind: str, params: dict[str, str],
            job_timeout_s: float) -> JobRun:
    """Submit a job of ``kind`` on ``case_id`` and watch it to its end (at most ``job_timeout_s``;
    then it is cancelled), checking the event order and a replay."""
    run = JobRun(label)
    t0 = time.perf_counter()
    job = client.submit(case_id, kind, params=params)
    run.submit_s = time.perf_counter() - t0
    run.job_id = job.job_id
    events: list[common_pb2.JobEvent] = []
    try:
        for event in client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job.job_id), timeout=job_timeout_s):
            if not events:
                run.first_event_s = time.perf_counter() - t0
            events.append(event)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        client.cancel(job.job_id)
        run.error = f"job {job.job_id} did not end within {job_timeout_s:.0f} s; cancelled it"
    run.job_s = time.perf_counter() - t0
    seqs = [e.seq for e in events]
    run.events = len(events)
    run.in_order = seqs == list(range(1, len(events) + 1)) and bool(events) and events[-1].state in TERMINAL
    final = client.job(job.job_id)
    run.state, run.message = state_name(final.state), events[-1].message if events else ""
    if events and events[-1].state != final.state:
        run.in_order = False
        run.error = run.error or f"the last event says {state_name(events[-1].state)}, the job {run.state}"
    replay = list(client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job.job_id), timeout=REPLAY_TIMEOUT_S))
    if run.error:  # cancelled after the watch's deadline: the replay goes on with the cancellation
        replay = replay[:len(events)]
    run.replay_matches = [(e.seq, e.type, e.message) for e in replay] == [(e.seq, e.type, e.message) for e in events]
    return run


def hospital(run: HospitalRun, client: Client, spec: JobSpec, start: threading.Barrier, job_timeout_s: float,
             soak: Soak | None = None) -> None:
    """One hospital: upload, then one job (or, in a soak, jobs until it is over), each watched to the end."""
    with client:
        try:
            start.wait(timeout=START_BARRIER_S)
            run.started = time.perf_counter()
            run.upload_bytes = sum(p.stat().st_size for root in spec.paths
                                   for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())
            case = client.upload_folder(*spec.paths, label=run.name).case
            run.upload_s = time.perf_counter() - run.started
            params = dict(spec.params)

            def one_job() -> None:
                if spec.contours_first and "contours_job" not in params:  # once; later plans reuse it
                    contours = run_job(client, case.case_id, f"{spec.label}:contour", "contour", {}, job_timeout_s)
                    run.jobs.append(contours)
                    if contours.state != "succeeded":
                        return
                    params["contours_job"] = contours.job_id
                run.jobs.append(run_job(client, case.case_id, spec.label, spec.kind, params, job_timeout_s))

            if soak is None:
                one_job()
            first = True
            while soak is not None and soak.take(first):
                first = False
                try:
                    one_job()
                finally:
                    soak.give()
        except Exception as exc:  # reported per hospital; the run fails below
            detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
            run.error = f"{type(exc).__name__}: {detail}"[:500]
        run.finished = time.perf_counter()


def _ms(values: list[float], q: float) -> float:
    return round(_percentile(values, q) * 1000, 1)


def _latencies(jobs: list[JobRun]) -> dict:
    seen = [j for j in jobs if j.first_event_s >= 0]
    out: dict = {}
    if seen:
        out |= {"submit_p50_ms": _ms([j.submit_s for j in seen], 50), "submit_p99_ms": _ms([j.submit_s for j in seen], 99),
                "first_event_p50_ms": _ms([j.first_event_s for j in seen], 50),
                "first_event_p99_ms": _ms([j.first_event_s for j in seen], 99),
                "first_event_max_ms": round(max(j.first_event_s for j in seen) * 1000, 1),
                # the part after SubmitJob returned: opening the watch and its first event
                "watch_first_event_p50_ms": _ms([j.first_event_s - j.submit_s for j in seen], 50),
                "watch_first_event_p99_ms": _ms([j.first_event_s - j.submit_s for j in seen], 99),
                "job_p50_s": round(_percentile([j.job_s for j in seen], 50), 3),
                "job_p99_s": round(_percentile([j.job_s for j in seen], 99), 3)}
    return out


def summarize(runs: list[HospitalRun], wave_s: float) -> dict:
    """The run's figures from every hospital's record (see the module docstring)."""
    jobs = [j for r in runs for j in r.jobs]
    succeeded = [j for j in jobs if j.state == "succeeded" and not j.error]
    # A hospital that never got a job submitted counts as one failed job: every hospital owes one.
    unsubmitted = sum(1 for r in runs if not r.jobs)
    uploaded = [r for r in runs if r.upload_s > 0]
    total_bytes = sum(r.upload_bytes for r in uploaded)
    upload_span = (max(r.started + r.upload_s for r in uploaded) - min(r.started for r in uploaded)) if uploaded else 0
    figures: dict = {
        "jobs_total": len(jobs) + unsubmitted,
        "jobs_succeeded": len(succeeded),
        "jobs_failed_or_lost": len(jobs) + unsubmitted - len(succeeded),
        "events_in_order": sum(j.in_order and j.replay_matches for j in jobs),
        "events_total": sum(j.events for j in jobs),
        "wave_s": round(wave_s, 3),
        "jobs_per_min": round(len(succeeded) / wave_s * 60, 2) if wave_s else 0.0,
        "upload_mb_total": round(total_bytes / 1e6, 3),
        "upload_mb_per_s": round(total_bytes / 1e6 / upload_span, 3) if upload_span else 0.0,
    }
    if uploaded:
        figures |= {"upload_p50_ms": _ms([r.upload_s for r in uploaded], 50),
                    "upload_p99_ms": _ms([r.upload_s for r in uploaded], 99)}
    figures |= _latencies(jobs)
    by_label: dict = {}
    for label in sorted({r.label for r in runs} | {j.label for j in jobs}):
        mine = [j for j in jobs if j.label == label]
        by_label[label] = {"hospitals": sum(r.label == label for r in runs), "jobs": len(mine),
                           "succeeded": sum(j in succeeded for j in mine)}
        if mine:
            by_label[label] |= {"job_p50_s": round(_percentile([j.job_s for j in mine], 50), 3),
                                "job_max_s": round(max(j.job_s for j in mine), 3)}
    figures["by_kind"] = by_label
    errors = [f"{r.name}: {r.error or 'no job submitted'}" for r in runs if r.error or not r.jobs]
    errors += [f"{j.job_id} ({j.label}): {j.error or j.state + ': ' + j.message}"
               for j in jobs if j not in succeeded]
    errors += [f"{j.job_id} ({j.label}): events incomplete, out of order or replayed differently" for j in jobs
               if not (j.in_order and j.replay_matches)]
    if errors:
        figures["errors"] = errors[:8]
        figures["errors_total"] = len(errors)
    return figures


def rss_figures(samples: list[tuple[float, ...]]) -> dict:
    """Start, end, max and trend of the master's RSS (MiB) and evenly picked ``[seconds, MiB]``
    samples; the same figures, without samples, for its heap (``anon``) and shared (``shmem``) parts.

    ``samples``: ``(seconds, VmRSS, RssAnon, RssShmem)`` as :class:`RssSampler` takes them.
    ``growth_mb`` is the mean of the last quarter of the samples minus that of the second quarter
    (the first quarter is warm-up); ``slope_mb_per_min`` a least-squares line over the second half.
    """
    if not samples:
        return {"samples": 0}
    columns = np.array(samples).T
    t, rss = columns[0], columns[1]
    out = _trend(t, rss)
    picked = np.unique(np.linspace(0, len(t) - 1, min(len(t), RSS_REPORTED_SAMPLES)).round().astype(int))
    out["samples"] = [[round(float(t[i]), 1), round(float(rss[i]), 1)] for i in picked]
    for name, values in (("anon", columns[2]), ("shmem", columns[3])):
        out[name] = _trend(t, values)
        out[name].pop("flat_limit_mb", None)
    return out


def _trend(t: np.ndarray, mb: np.ndarray) -> dict:
    """``rss_figures`` of one series of MiB samples taken at ``t`` seconds, without the samples."""
    n = len(mb)
    out = {"start_mb": round(float(mb[0]), 1), "end_mb": round(float(mb[-1]), 1), "max_mb": round(float(mb.max()), 1),
           "n_samples": n, "sample_period_s": RSS_SAMPLE_S}
    if n >= 8:
        second, last = mb[n // 4:n // 2], mb[3 * n // 4:]
        out["growth_mb"] = round(float(last.mean() - second.mean()), 1)
        out["flat_limit_mb"] = round(max(RSS_FLAT_MB, RSS_FLAT_FRACTION * float(second.mean())), 1)
        half_t, half_mb = t[n // 2:], mb[n // 2:]
        if half_t[-1] > half_t[0]:
            out["slope_mb_per_min"] = round(float(np.polyfit(half_t / 60, half_mb, 1)[0]), 2)
    return out


def goals(figures: dict, soak: bool) -> dict:
    """Each goal of the issue with whether this run met it (None: this run cannot tell)."""
    rss = figures.get("master_rss", {})
    return {
        "every_job_succeeded": figures["jobs_succeeded"] == figures["jobs_total"],
        "every_event_in_order": figures["events_in_order"] == figures["jobs_total"],
        f"first_event_p99_under_{FIRST_EVENT_GOAL_MS:.0f}_ms":
            figures["first_event_p99_ms"] < FIRST_EVENT_GOAL_MS if "first_event_p99_ms" in figures else False,
        # Only a soak says whether memory stays flat; a single wave mostly shows warm-up.
        "master_memory_flat": (rss["growth_mb"] <= rss["flat_limit_mb"]) if soak and "growth_mb" in rss else None,
    }


def wave(target: str, ca: Path | None, tokens: list[str], specs: list[JobSpec], args: argparse.Namespace,
         soak_minutes: float | None = None) -> tuple[list[HospitalRun], float]:
    """All hospitals at once (hospital ``i`` uploads and submits ``specs[i]`` with ``tokens[i]``),
    bounded by ``args.wave_timeout``; returns their runs and the wave's wall time.

    The hospitals are spread over ``args.client_processes`` processes, threads within each: real
    hospitals are machines of their own, and 50 in one Python process share its GIL, which the
    latencies then measure beside the master's (the spread is in the figures' ``config``). A
    soak's bounds are shared out among the processes. A process that dies reports its hospitals
    as not finished.
    """
    processes = max(1, min(args.client_processes, len(specs), *([args.soak_in_flight] if soak_minutes else [])))
    groups = [list(range(k, len(specs), processes)) for k in range(processes)]
    context = multiprocessing.get_context("spawn")  # gRPC does not survive fork
    barrier = context.Barrier(len(specs))
    results = context.Queue()
    started = time.perf_counter()
    deadline = started + args.wave_timeout
    children = []
    for k, group in enumerate(groups):
        soak = None
        if soak_minutes:  # the bounds shared out: the first processes take the remainders
            soak = SoakBounds(started + soak_minutes * 60, _share(args.soak_in_flight, processes, k),
                              _share(args.soak_max_jobs, processes, k))
        child = context.Process(target=_hospital_group, daemon=True, args=(
            group, [specs[i] for i in group], target, ca, [tokens[i] for i in group], barrier,
            args.job_timeout, soak, results))
        child.start()
        children.append(child)
    runs: dict[int, HospitalRun] = {}
    reported = 0
    while reported < len(children) and time.perf_counter() < deadline:
        try:
            runs.update(results.get(timeout=1.0))
            reported += 1
        except queue.Empty:
            if not any(child.is_alive() for child in children):  # one died without reporting
                break
    for child in children:
        child.join(max(0.1, deadline - time.perf_counter()))
        if child.is_alive():
            child.kill()
    missing = (f"still running after the wave timeout of {args.wave_timeout:.0f} s" if reported < len(children)
               and time.perf_counter() >= deadline else "its client process ended without reporting")
    out = [runs.get(i) or HospitalRun(f"hospital-{i:02d}", spec.label, error=missing) for i, spec in enumerate(specs)]
    return out, max((r.finished for r in out if r.finished), default=started) - started


def _share(total: int, parts: int, k: int) -> int:
    """Part ``k`` of ``total`` shared out over ``parts`` (the first ones take the remainder)."""
    return total // parts + (k < total % parts)


def _hospital_group(indices: list[int], specs: list[JobSpec], target: str, ca: Path | None, tokens: list[str],
                    barrier, job_timeout_s: float, bounds: "SoakBounds | None", results) -> None:
    """One client process: its hospitals, a thread each; puts ``{index: HospitalRun}`` on ``results``.

    Clocks: ``time.perf_counter`` is the system's monotonic clock, the same in every process."""
    soak = Soak(bounds) if bounds is not None else None
    runs = {i: HospitalRun(f"hospital-{i:02d}", spec.label) for i, spec in zip(indices, specs)}
    threads = [threading.Thread(target=hospital, daemon=True,
                                args=(runs[i], Client(target, ca=ca, token=token), spec, barrier, job_timeout_s, soak))
               for i, spec, token in zip(indices, specs, tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(runs)


def job_mix(tmp: Path, args: argparse.Namespace) -> list[JobSpec]:
    """One job spec per hospital: ``args.big`` full-size contours, ``args.plans`` plans,
    ``args.devices_jobs`` full jobs with devices, the rest small contours; spread over the list."""
    heavy = args.big + args.plans + args.devices_jobs
    if args.hospitals < 1 or heavy > args.hospitals or min(args.big, args.plans, args.devices_jobs) < 0:
        raise ValueError(f"--big + --plans + --devices-jobs ({heavy}) must be between 0 and --hospitals "
                         f"({args.hospitals})")
    # Heavy jobs spread evenly through the hospitals, so they do not all queue first.
    labels = ["contour-small"] * args.hospitals
    heavy_labels = ["contour-512"] * args.big + ["plan"] * args.plans + ["full-devices"] * args.devices_jobs
    for k, label in enumerate(heavy_labels):
        labels[k * args.hospitals // heavy] = label
    specs: list[JobSpec] = []
    big_ct = plan_inputs = None
    small_shape = (args.slices, args.size, args.size)
    small_spacing_mm = (500.0 / args.size, 500.0 / args.size, 5.0)
    for i, label in enumerate(labels):
        if label == "contour-small":
            ct = write_phantom_case(tmp / f"h{i:02d}", shape=small_shape, spacing_mm=small_spacing_mm, seed=i).ct_dir
            specs.append(JobSpec(label, "contour", (ct,)))
        elif label == "contour-512":
            if big_ct is None:  # one full-size CT, each hospital uploads its own copy of it
                say(f"writing a full-size CT ({args.big_slices} x {BIG_SHAPE_XY} x {BIG_SHAPE_XY}) ...")
                big_ct = write_phantom_case(tmp / "big", shape=(args.big_slices, BIG_SHAPE_XY, BIG_SHAPE_XY),
                                            spacing_mm=BIG_SPACING_MM, seed=99).ct_dir
            specs.append(JobSpec(label, "contour", (big_ct,)))
        else:
            if plan_inputs is None:
                case = write_phantom_case(tmp / "plan", shape=PLAN_SHAPE, spacing_mm=PLAN_SPACING_MM, seed=4)
                rtstruct, _ = write_plan_inputs(case, make_phantom(PLAN_SHAPE, PLAN_SPACING_MM, seed=4),
                                                tmp / "plan-manual")
                plan_inputs = (case.ct_dir, rtstruct)
            params = {"order": PHANTOM_ORDER, **PLAN_PARAMS}
            if label == "plan":
                # The manual RTSTRUCT has the PTV, not the BODY outline: a contour job gives that.
                specs.append(JobSpec(label, "plan", plan_inputs, params, contours_first=True))
            else:
                specs.append(JobSpec(label, "full", plan_inputs, {**params, "devices": DEVICES}))
    return specs


@contextmanager
def secure_session(grid: SecureLocalGrid, runs: list[HospitalRun]) -> Iterator[SecureLocalGrid]:
    """Around the use of ``grid``: on failure print the children's log tails; always cancel the
    jobs the hospitals left unfinished and stop the grid."""
    try:
        yield grid
    except BaseException:
        grid.dump_log_tails()
        raise
    finally:
        say("stopping the grid ...")
        grid.cancel_jobs({r.name: [j.job_id for j in r.jobs if j.job_id] for r in runs})
        grid.close()


def run(args: argparse.Namespace, figures: dict) -> None:
    soak_minutes = args.soak
    if soak_minutes is not None and soak_minutes <= 0:
        raise ValueError(f"--soak MINUTES must be positive, not {soak_minutes}")
    if args.soak_in_flight < 1 or args.soak_max_jobs < 1 or args.client_processes < 1:
        raise ValueError(f"--soak-in-flight ({args.soak_in_flight}), --soak-max-jobs ({args.soak_max_jobs}) and "
                         f"--client-processes ({args.client_processes}) must be at least 1")
    figures["config"] = {"hospitals": args.hospitals, "agents": args.agents, "agent_cpus": 1,
                         "small_ct_shape": [args.slices, args.size, args.size],
                         "big_ct_shape": [args.big_slices, BIG_SHAPE_XY, BIG_SHAPE_XY], "mix": None,
                         "plan_ct_shape": list(PLAN_SHAPE), "plan_params": PLAN_PARAMS, "devices": DEVICES,
                         "secure": True, "soak_minutes": soak_minutes, "cpu_count": os.cpu_count(),
                         "client_processes": min(args.client_processes, args.hospitals)}
    figures["load_avg_start"] = _load()
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"writing the inputs of {args.hospitals} hospitals ...")
        specs = job_mix(tmp, args)
        figures["config"]["mix"] = {label: sum(s.label == label for s in specs) for label in sorted({s.label for s in specs})}
        (tmp / "data").mkdir()
        logs = args.logs or tmp / "logs"  # --logs: kept after the run, to see why a job hung
        logs.mkdir(parents=True, exist_ok=True)
        grid = SecureLocalGrid(tmp / "data", logs, args.head_object_store_mb, make_pki(tmp / "pki"))
        runs: list[HospitalRun] = []
        with secure_session(grid, runs):
            started = time.perf_counter()
            grid.start_ray()
            grid.start_master()
            for i in range(args.agents):
                # One after the other: raylets starting at once on busy cores can miss Ray's start limit.
                grid.start_agent(f"load-{i}", cpus=1)
            names = [f"hospital-{i:02d}" for i in range(args.hospitals)]
            grid.add_hospitals(names)
            figures["grid_start_s"] = round(time.perf_counter() - started, 3)
            sampler = RssSampler(grid.master.pid)
            say(f"grid up in {figures['grid_start_s']:.1f} s; {args.hospitals} hospitals (tenants) start together"
                + (f" for a {soak_minutes} min soak" if soak_minutes else "") + " ...")
            sampler.start()
            try:
                wave_runs, wave_s = wave(grid.target, grid.pki.ca, [grid.tokens[n] for n in names], specs, args,
                                         soak_minutes)
                runs.extend(wave_runs)
            finally:
                sampler.stop()
            figures.update(summarize(runs, wave_s))
            figures["master_rss"] = rss_figures(sampler.samples)
            figures["goals"] = goals(figures, soak_minutes is not None)
            rss = figures["master_rss"]
            say(f"{figures['jobs_succeeded']}/{figures['jobs_total']} jobs succeeded in {wave_s:.1f} s "
                f"({figures['jobs_per_min']} jobs/min); events in order for {figures['events_in_order']}; "
                f"first event p99 {figures.get('first_event_p99_ms')} ms; master RSS {rss.get('start_mb')} -> "
                f"{rss.get('end_mb')} MiB (max {rss.get('max_mb')}, growth {rss.get('growth_mb')}; heap "
                f"{rss.get('anon', {}).get('start_mb')} -> {rss.get('anon', {}).get('end_mb')}, shared "
                f"{rss.get('shmem', {}).get('start_mb')} -> {rss.get('shmem', {}).get('end_mb')}); "
                f"goals {figures['goals']}")
            if figures["jobs_succeeded"] != figures["jobs_total"] or figures["events_in_order"] != figures["jobs_total"]:
                raise RuntimeError(f"not every job finished with every event in order: {figures.get('errors')}")
    figures["load_avg_end"] = _load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=50, help="simulated hospitals (tenants) working at once")
    parser.add_argument("--big", type=int, default=2, help="hospitals contouring a full-size CT")
    parser.add_argument("--plans", type=int, default=3, help="hospitals submitting a plan job")
    parser.add_argument("--devices-jobs", type=int, default=2, help="hospitals submitting a full job with devices")
    parser.add_argument("--agents", type=int, default=2, help="agent processes of one CPU each")
    parser.add_argument("--slices", type=int, default=16, help="slices of each small phantom CT")
    parser.add_argument("--size", type=int, default=128, help="rows and columns of each small phantom CT")
    parser.add_argument("--big-slices", type=int, default=100, help="slices of the full-size (512 x 512) CT")
    parser.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                        help="keep a stream of jobs going for this many minutes instead of one wave")
    parser.add_argument("--soak-in-flight", type=int, default=6, help="most soak jobs queued or running at once")
    parser.add_argument("--soak-max-jobs", type=int, default=4000,
                        help="most soak jobs in all (a 30-minute soak runs about 2500 on 2 cores)")
    parser.add_argument("--client-processes", type=int, default=CLIENT_PROCESSES,
                        help="processes the hospitals are spread over (threads within each)")
    parser.add_argument("--job-timeout", type=float, default=420.0, help="seconds allowed per job's watch")
    parser.add_argument("--wave-timeout", type=float, default=540.0,
                        help="seconds allowed for all hospitals (a soak adds its minutes)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep the master's and agents' logs in this folder (default: a temporary one)")
    parser.add_argument("--head-object-store-mb", type=int, default=512,
                        help="object store of the Ray head, where the master puts shard arguments (MiB)")
    args = parser.parse_args(argv)
    if args.soak:
        args.wave_timeout += args.soak * 60
    return run_benchmark("load", run, args)


if __name__ == "__main__":
    sys.exit(main())
