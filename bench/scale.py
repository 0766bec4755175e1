"""Scale-out benchmark: the same full-size contour job on 1, 2 and 4 agents.

``python -m bench.scale`` builds one grid on 127.0.0.1 with ``bench.grid.BenchGrid`` (a Ray head
from Ray's cluster utilities, a master process, agent processes of one CPU each, every agent its
own Ray worker node), uploads a phantom CT of ``--slices`` x ``--size`` x ``--size`` (100 x 512 x
512 by default, about 50 MB of DICOM) once, and then, for each agent count N of ``--agents``:

1. grows the grid to N agents (agents are only ever added, one after the other, so the counts must
   increase; the master, its store and the uploaded case stay the same throughout);
2. runs small warm-up jobs until every agent has run a shard (its shard worker process started
   and its imports done), at most ``WARMUP_TRIES`` of them;
3. runs the same contour job on the big CT ``--repeats`` times, each timed from submit to its last
   event (the fastest is reported, all walls listed).

Why a contour job and not a ``full`` one: its contour stage is one independent shard per z-slab,
all of the same size, which any number of agents share evenly (``--shards`` 8 splits into 8, 4, 2
per agent); only the merge (3-D steps, RTSTRUCT, overlays) is serial. A ``full`` job adds serial
stages (setup, optimization) and its dose stage has one shard per beam, so a few beams give few,
unequal shards, and a plan on a 512 x 512 CT runs for minutes per agent count.

Reported per N: wall seconds, speed-up against the first count (N=1 by default), efficiency =
speed-up / N, the contour stage's seconds and speed-up (the part that can scale), the merge's
seconds, the agents that ran contour shards, and the load averages. The machine's CPU count is
reported beside them: N agents of one CPU on a machine of C cores cannot go faster than min(N, C)
times one agent (``speedup_ceiling``), and a machine others use at the same time gives less.

Human-readable lines go to stderr; stdout carries exactly one JSON line (with ``"error"`` and the
figures so far when a step fails, and exit status 1). Every wait is bounded: agent start
(``bench.grid.START_TIMEOUT_S``), each job (``--job-timeout``; a job past it is cancelled).

Usage::

    python -m bench.scale
    python -m bench.scale --slices 8 --size 64 --agents 1,2 --shards 2 --repeats 1   # the smallest (the test's)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.grid import (
    BIG_SPACING_MM,
    SMALL_SHAPE,
    SMALL_SPACING_MM,
    TINY_JOB_TIMEOUT_S,
    BenchError,
    BenchGrid,
    _load,
    grid_session,
    job_timings,
    run_benchmark,
    say,
)
from rtgrid.client.sdk import Client

WARMUP_TRIES = 3
DEFAULT_AGENTS = "1,2,4"
DEFAULT_SHARDS = 8  # divides evenly among 1, 2 and 4 agents; 12-13 slices a slab for 100 slices


def parse_agent_counts(text: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]``.

    Raises
    ------
    ValueError
        When a count is not a positive integer or the counts do not increase (the grid only grows).
    """
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--agents {text!r}: give comma-separated positive integers, e.g. 1,2,4") from None
    if any(n < 1 for n in counts):
        raise ValueError(f"--agents {text!r}: every agent count must be at least 1")
    if any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"--agents {text!r}: counts must increase (agents are added, never removed)")
    return counts


def warm_up(client: Client, case_id: str, n_agents: int) -> dict:
    """Small jobs (``n_agents`` x 2 slabs) until every alive agent has run a shard of one of them.

    A new agent starts its shard worker process (Python, numpy, scipy, the engines) on its first
    shard: that cost belongs to the agent's start, not to the job being timed.
    """
    alive = {a.agent_id for a in client.agents()}
    warmed: set[str] = set()
    walls = []
    for _ in range(WARMUP_TRIES):
        timing = job_timings(client, case_id, {"shards": str(2 * n_agents)}, TINY_JOB_TIMEOUT_S)
        walls.append(timing["wall_s"])
        warmed |= {s.agent_id for s in client.shards(timing["job_id"])}
        if alive <= warmed:
            break
    return {"jobs": len(walls), "wall_s": walls, "all_agents_warm": alive <= warmed}


def measure(client: Client, case_id: str, shards: int, repeats: int, timeout_s: float) -> dict:
    """The big contour job ``repeats`` times; the fastest run's figures, with every run's wall."""
    runs = []
    for i in range(repeats):
        runs.append(job_timings(client, case_id, {"shards": str(shards)}, timeout_s))
        say(f"    run {i + 1}: {runs[-1]['wall_s']:.2f} s")
    best = min(runs, key=lambda r: r["wall_s"])  # the least disturbed by other load on the machine
    return {**best, "wall_s_runs": [r["wall_s"] for r in runs]}


def summarize(rows: list[dict], cpu_count: int) -> list[dict]:
    """Speed-up and efficiency of each row against the first (the smallest agent count).

    ``speedup = wall(first) / wall(N) x first's N`` (so with N=1 first it is the plain ratio),
    ``efficiency = speedup / N``; the same for the contour stage alone.
    """
    base = rows[0]
    out = []
    for row in rows:
        n = row["agents"]
        speedup = base["wall_s"] / row["wall_s"] * base["agents"]
        stage_speedup = base["contour_stage_s"] / row["contour_stage_s"] * base["agents"]
        out.append({
            "agents": n,
            "wall_s": row["wall_s"],
            "speedup": round(speedup, 3),
            "efficiency": round(speedup / n, 3),
            "contour_stage_s": row["contour_stage_s"],
            "contour_stage_speedup": round(stage_speedup, 3),
            "contour_stage_efficiency": round(stage_speedup / n, 3),
            "merge_s": row["merge_s"],
            "agents_used": row["agents_used"],
            "speedup_ceiling": min(n, cpu_count),
        })
    return out


def run(args: argparse.Namespace, figures: dict) -> None:
    from rtgrid.engines.phantom import write_phantom_case

    counts = parse_agent_counts(args.agents)
    shape = (args.slices, args.size, args.size)
    spacing = (BIG_SPACING_MM[0] * 512 / args.size, BIG_SPACING_MM[1] * 512 / args.size, BIG_SPACING_MM[2])
    cpu_count = os.cpu_count() or 1
    figures["config"] = {"shape": list(shape), "spacing_mm": [round(s, 4) for s in spacing], "job": "contour",
                         "shards": args.shards, "agents": counts, "agent_cpus": 1, "repeats": args.repeats,
                         "grid": "one grid, agents added", "cpu_count": cpu_count}
    figures["load_avg_start"] = _load()
    say(f"{cpu_count} CPUs here: {counts[-1]} one-CPU agents can be at most {min(counts[-1], cpu_count)}x "
        "faster than one")
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        big = write_phantom_case(tmp / "big", shape=shape, spacing_mm=spacing, seed=7)
        small = write_phantom_case(tmp / "small", shape=SMALL_SHAPE, spacing_mm=SMALL_SPACING_MM, seed=7)
        figures["phantom_write_s"] = round(time.perf_counter() - started, 3)
        say(f"phantoms written in {figures['phantom_write_s']:.1f} s: {shape} and {SMALL_SHAPE}")

        (tmp / "data").mkdir()
        (tmp / "logs").mkdir()
        grid = BenchGrid(tmp / "data", tmp / "logs", args.head_object_store_mb)
        with grid_session(grid):
            started = time.perf_counter()
            grid.start_ray()
            target = grid.start_master()
            figures["grid_start_s"] = round(time.perf_counter() - started, 3)
            with Client(target) as client:
                big_case = client.upload_folder(big.ct_dir, label="bench-scale-big").case.case_id
                small_case = client.upload_folder(small.ct_dir, label="bench-scale-small").case.case_id
                rows, details = [], {}
                for n in counts:
                    started = time.perf_counter()
                    while len(grid.agents) < n:
                        # One after the other: raylets starting at once on busy cores can miss Ray's start limit.
                        grid.start_agent(f"scale-{len(grid.agents) + 1}", cpus=1)
                    agents_start_s = round(time.perf_counter() - started, 3)
                    say(f"{n} agent(s) up ({agents_start_s:.1f} s); warming up ...")
                    warm = warm_up(client, small_case, n)
                    if not warm["all_agents_warm"]:
                        raise BenchError(f"{WARMUP_TRIES} warm-up jobs did not reach all {n} agents")
                    say(f"  contour job, {args.shards} shards, {args.repeats} run(s) on {n} agent(s) ...")
                    load_before = _load()
                    result = measure(client, big_case, args.shards, args.repeats, args.job_timeout)
                    details[str(n)] = {**result, "agents_start_s": agents_start_s, "warmup": warm,
                                       "load_avg_before": load_before,
                                       "load_avg_after": _load()}
                    rows.append({"agents": n, **result})
                    say(f"  {n} agent(s): {result['wall_s']:.2f} s (contour stage {result['contour_stage_s']:.2f} s "
                        f"on {result['agents_used']} agents, merge {result['merge_s']:.2f} s)")
                figures["runs"] = details
                figures["results"] = summarize(rows, cpu_count)
    for r in figures["results"]:
        say(f"N={r['agents']}: {r['wall_s']:.2f} s, speed-up {r['speedup']:.2f}x, efficiency {r['efficiency']:.2f} "
            f"(contour stage {r['contour_stage_speedup']:.2f}x; ceiling on {cpu_count} CPUs {r['speedup_ceiling']}x)")
    figures["load_avg_end"] = _load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100, help="slices of the phantom CT")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of the phantom CT")
    parser.add_argument("--agents", default=DEFAULT_AGENTS, help="comma-separated, increasing agent counts")
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="z-slabs of the contour job")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of the job per agent count; the fastest is reported, all walls are listed")
    parser.add_argument("--head-object-store-mb", type=int, default=1024,
                        help="object store of the Ray head, where the master puts shard arguments (MiB)")
    parser.add_argument("--job-timeout", type=float, default=300.0, help="seconds allowed per big contour job")
    args = parser.parse_args(argv)
    for name in ("slices", "size", "shards", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        counts = parse_agent_counts(args.agents)
    except ValueError as exc:
        parser.error(str(exc))
    if args.shards < counts[-1]:
        parser.error(f"--shards {args.shards} is below the largest agent count {counts[-1]}: "
                     "some agents would have nothing to do")
    return run_benchmark("scale", run, args)


if __name__ == "__main__":
    raise SystemExit(main())
