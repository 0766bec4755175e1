"""Load benchmark: many hospitals upload, submit and watch at once, on one grid on 127.0.0.1.

``python -m bench.load`` starts a real grid (``bench.grid.LocalGrid``: a Ray head, one master
process, ``--agents`` agent processes of one CPU each), writes one small phantom CT per hospital,
then starts ``--hospitals`` threads together, each with its own client, that:

1. upload their CT (``Client.upload_folder``: chunked upload, finish, commit);
2. submit a contour job;
3. watch it to the end (one WatchJob stream under a deadline), checking that the events arrive
   with sequence numbers 1, 2, 3 ... without gap or repeat, and that a replay of the job's events
   afterwards is the same list.

Everything is bounded: every RPC has a deadline, each watch ``--job-timeout``, the whole wave
``--wave-timeout`` (then the jobs left are cancelled and the run fails). The master's resident
memory (VmRSS of its process) is sampled every 0.1 s throughout.

Figures: ``jobs_total``, ``jobs_succeeded``, ``events_in_order`` (jobs whose watcher saw every
event in order), throughput (jobs/min over the wave, upload MB/s over all hospitals), p50 and p99
latencies of upload (per hospital), submit (the RPC), first event (submit → first event on the
watch) and job (submit → final event), and the master's RSS at start and its peak. Human-readable
lines go to stderr; stdout carries exactly one JSON line.

Usage::

    python -m bench.load
    python -m bench.load --hospitals 5 --slices 8     # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.grid import LocalGrid, _load, _percentile, grid_session, run_benchmark, say
from rtgrid.client.sdk import Client, state_name
from rtgrid.engines.phantom import write_phantom_case
from rtgrid.protos.v1 import hospital_pb2

RSS_SAMPLE_S = 0.1
REPLAY_TIMEOUT_S = 30.0


@dataclass
class HospitalRun:
    """What one simulated hospital measured."""

    name: str
    upload_s: float = 0.0
    upload_bytes: int = 0
    submit_s: float = 0.0
    first_event_s: float = -1.0
    job_s: float = 0.0
    state: str = ""
    events: int = 0
    in_order: bool = False
    replay_matches: bool = False
    started: float = 0.0
    finished: float = 0.0
    error: str = ""
    seqs: list[int] = field(default_factory=list)


class RssSampler(threading.Thread):
    """Samples a process's resident memory (MiB) until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def run(self) -> None:
        while not self._stop_event.wait(RSS_SAMPLE_S):
            try:
                self.samples.append(self.rss_mb())
            except OSError:
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def hospital(run: HospitalRun, client: Client, ct_dir: Path, start: threading.Barrier, job_timeout_s: float) -> None:
    """One hospital: upload, submit, watch to the end (bounded), replay and compare."""
    with client:
        try:
            start.wait(timeout=120)
            run.started = time.perf_counter()
            run.upload_bytes = sum(p.stat().st_size for p in ct_dir.iterdir())
            case = client.upload_folder(ct_dir, label=run.name).case
            run.upload_s = time.perf_counter() - run.started
            t0 = time.perf_counter()
            job = client.submit(case.case_id, "contour")
            run.submit_s = time.perf_counter() - t0
            events = []
            for event in client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job.job_id),
                                                  timeout=job_timeout_s):
                if not events:
                    run.first_event_s = time.perf_counter() - t0
                events.append(event)
            run.job_s = time.perf_counter() - t0
            run.finished = time.perf_counter()
            run.seqs = [e.seq for e in events]
            run.events = len(events)
            run.in_order = run.seqs == list(range(1, len(events) + 1))
            run.state = state_name(client.job(job.job_id).state)
            replay = list(client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job.job_id),
                                                   timeout=REPLAY_TIMEOUT_S))
            run.replay_matches = [(e.seq, e.type, e.message) for e in replay] == \
                [(e.seq, e.type, e.message) for e in events]
        except Exception as exc:  # reported per hospital; the run fails below
            run.error = f"{type(exc).__name__}: {exc}"[:500]
            run.finished = time.perf_counter()


def _ms(values: list[float], q: float) -> float:
    return round(_percentile(values, q) * 1000, 1)


def summarize(runs: list[HospitalRun], wave_s: float) -> dict:
    ok = [r for r in runs if not r.error]
    succeeded = [r for r in ok if r.state == "succeeded"]
    total_bytes = sum(r.upload_bytes for r in ok)
    upload_span = (max(r.started + r.upload_s for r in ok) - min(r.started for r in ok)) if ok else 0.0
    figures: dict = {
        "jobs_total": len(runs),
        "jobs_succeeded": len(succeeded),
        "jobs_failed_or_lost": len(runs) - len(succeeded),
        "events_in_order": sum(r.in_order and r.replay_matches for r in ok),
        "events_total": sum(r.events for r in ok),
        "wave_s": round(wave_s, 3),
        "jobs_per_min": round(len(succeeded) / wave_s * 60, 2) if wave_s else 0.0,
        "upload_mb_total": round(total_bytes / 1e6, 3),
        "upload_mb_per_s": round(total_bytes / 1e6 / upload_span, 3) if upload_span else 0.0,
    }
    if ok:
        figures.update({
            "upload_p50_ms": _ms([r.upload_s for r in ok], 50), "upload_p99_ms": _ms([r.upload_s for r in ok], 99),
            "submit_p50_ms": _ms([r.submit_s for r in ok], 50), "submit_p99_ms": _ms([r.submit_s for r in ok], 99),
            "first_event_p50_ms": _ms([r.first_event_s for r in ok], 50),
            "first_event_p99_ms": _ms([r.first_event_s for r in ok], 99),
            "job_p50_s": round(_percentile([r.job_s for r in ok], 50), 3),
            "job_p99_s": round(_percentile([r.job_s for r in ok], 99), 3),
        })
    errors = [f"{r.name}: {r.error}" for r in runs if r.error]
    if errors:
        figures["errors"] = errors[:5]
    return figures


def wave(connect: Callable[[int], Client], cts: list[Path], args: argparse.Namespace) -> tuple[list[HospitalRun], float]:
    """All hospitals at once (hospital ``i`` talks through ``connect(i)``), bounded by
    ``args.wave_timeout``; returns their runs and the wave's wall time."""
    runs = [HospitalRun(f"hospital-{i:02d}") for i in range(len(cts))]
    barrier = threading.Barrier(len(cts))
    threads = [threading.Thread(target=hospital, args=(r, connect(i), ct, barrier, args.job_timeout), daemon=True)
               for i, (r, ct) in enumerate(zip(runs, cts))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    deadline = started + args.wave_timeout
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    for r, t in zip(runs, threads):
        if t.is_alive():
            r.error = f"still running after the wave timeout of {args.wave_timeout:.0f} s"
    return runs, max((r.finished for r in runs if r.finished), default=started) - started


def run(args: argparse.Namespace, figures: dict) -> None:
    shape = (args.slices, args.size, args.size)
    spacing_mm = (500.0 / args.size, 500.0 / args.size, 5.0)
    figures["config"] = {"hospitals": args.hospitals, "agents": args.agents, "agent_cpus": 1, "ct_shape": list(shape),
                         "cpu_count": os.cpu_count()}
    figures["load_avg_start"] = _load()
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        say(f"writing {args.hospitals} phantom CTs {shape} ...")
        cts = [write_phantom_case(tmp / f"h{i:02d}", shape=shape, spacing_mm=spacing_mm, seed=i).ct_dir
               for i in range(args.hospitals)]
        (tmp / "data").mkdir()
        (tmp / "logs").mkdir()
        grid = LocalGrid(tmp / "data", tmp / "logs", args.head_object_store_mb)
        with grid_session(grid):
            started = time.perf_counter()
            address = grid.start_master(grid.start_ray())
            with Client(address) as client:
                for i in range(args.agents):
                    # One after the other: raylets starting at once on busy cores can miss Ray's start limit.
                    grid.start_agent(f"load-{i}", cpus=1)
                    grid.wait_agents(client, i + 1)
            figures["grid_start_s"] = round(time.perf_counter() - started, 3)
            sampler = RssSampler(grid.master.pid)
            figures["master_rss_start_mb"] = round(sampler.rss_mb(), 1)
            say(f"grid up in {figures['grid_start_s']:.1f} s; {args.hospitals} hospitals start together ...")
            sampler.start()
            try:
                runs, wave_s = wave(lambda i: Client(address), cts, args)
            finally:
                sampler.stop()
            figures.update(summarize(runs, wave_s))
            figures["master_rss_peak_mb"] = round(max(sampler.samples, default=0.0), 1)
            figures["master_rss_samples"] = len(sampler.samples)
            say(f"{figures['jobs_succeeded']}/{figures['jobs_total']} jobs succeeded in {wave_s:.1f} s "
                f"({figures['jobs_per_min']} jobs/min); events in order for {figures['events_in_order']}; "
                f"upload {figures['upload_mb_per_s']} MB/s; master RSS {figures['master_rss_start_mb']} -> peak "
                f"{figures['master_rss_peak_mb']} MiB")
            if figures["jobs_succeeded"] != len(runs) or figures["events_in_order"] != len(runs):
                raise RuntimeError(f"not every job finished with every event in order: {figures.get('errors')}")
    figures["load_avg_end"] = _load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=20, help="simulated hospitals working at once")
    parser.add_argument("--agents", type=int, default=2, help="agent processes of one CPU each")
    parser.add_argument("--slices", type=int, default=16, help="slices of each hospital's phantom CT")
    parser.add_argument("--size", type=int, default=128, help="rows and columns of each phantom CT")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds allowed per job's watch")
    parser.add_argument("--wave-timeout", type=float, default=900.0, help="seconds allowed for all hospitals")
    parser.add_argument("--head-object-store-mb", type=int, default=512,
                        help="object store of the Ray head, where the master puts shard arguments (MiB)")
    return run_benchmark("load", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
