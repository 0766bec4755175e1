"""Conversion benchmark: one standard plan converted for 1, 2 and 3 linacs on a two-agent grid.

``python -m bench.conversion`` builds a real grid on 127.0.0.1 (a Ray head from Ray's cluster
utilities, one master process, two agent processes of one CPU each: ``bench.grid.BenchGrid``),
uploads a case with its manual RTSTRUCT (for the digital phantom, a ``contour`` job adds BODY and
lungs first, named in the plan jobs' ``contours_job``), and runs one ``plan`` job per device count with
``devices=`` the first 1, 2 and 3 of ``--devices``. There is no conversion-only job kind, so each
job plans the standard plan again (same inputs, so the same plan: the benchmark checks that its
report's metrics are identical across jobs) and then runs the ``convert`` stage: one shard per
device, spread over the agents.

Reported per job:

- ``convert_stage_s``: the convert stage's wall time (its first event to the job's end), beside
  ``convert_shards_s_sum`` (the shards' own times added up) and their ratio ``parallelism``
  (about 1 for one device, up to 2 on two agents);
- per device, from the convert shard's ``started_ms``/``finished_ms`` and from ``qa.<device>.json``:
  conversion time, agent, QA verdict, gamma pass rate (3 %/2 mm global, 10 % threshold), segments,
  total MU and MU per beam, the coincidence score and whether the standard plan was reused or
  re-optimized (per attempt: a regeneration after a QA failure re-optimizes), the attempts with
  their gamma pass rates, and the engine's own stage timings;
- the standard plan's stage times (setup, dose, optimize) and job wall time.

A device whose plan fails QA is a measured outcome, not a benchmark failure: its figures are
reported with ``qa_passed: false`` and its reasons, and the job's final state and message are kept.

Human-readable lines go to stderr; stdout carries exactly one JSON line with all figures (with
``"error"`` and the figures gathered so far when a step fails, and exit status 1).

Usage::

    python -m bench.conversion
    python -m bench.conversion --case tg119 --beams 9      # the TG-119 C-shape (needs pyRadPlan)
    python -m bench.conversion --case tg119 --beams 9 --dose-grid-mm 3 --bixel-mm 3 --devices TB-M120 --counts 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.grid import (
    BenchError,
    BenchGrid,
    _load,
    grid_session,
    run_benchmark,
    say,
    watch_job,
)
from rtgrid.client.sdk import Client, state_name
from rtgrid.engines.conversion.coincidence import DEFAULT_THRESHOLD
from rtgrid.protos.v1 import common_pb2

PHANTOM_SHAPE = (36, 112, 112)
PHANTOM_SPACING_MM = (4.5, 4.5, 3.0)
PHANTOM_SEED = 12
DEFAULT_DEVICES = "TB-M120,VERSA-AGILITY,SYNERGY-MLCI2"
STANDARD_STAGES = ("setup", "dose", "optimize")


def write_case(kind: str, out_dir: Path) -> tuple[Path, Path, str, str, bool]:
    """The case's CT folder, its manual RTSTRUCT, the order text, the target's name, and whether
    the automatic contours are needed (the phantom's manual RTSTRUCT has no BODY or lungs)."""
    if kind == "phantom":
        from rtgrid.engines.phantom import make_phantom, write_phantom_case, write_plan_inputs

        case = write_phantom_case(out_dir, shape=PHANTOM_SHAPE, spacing_mm=PHANTOM_SPACING_MM, seed=PHANTOM_SEED)
        rtstruct, order = write_plan_inputs(case, make_phantom(PHANTOM_SHAPE, PHANTOM_SPACING_MM, PHANTOM_SEED),
                                            out_dir / "manual")
        return case.ct_dir, rtstruct, order.read_text(), "PTV", True
    from rtgrid.engines.phantom.tg119_dicom import write_tg119_case

    ct_dir, rtstruct, order = write_tg119_case(out_dir)
    return ct_dir, rtstruct, order, "OuterTarget", False


def _stage_starts(events: list[common_pb2.JobEvent]) -> dict[str, int]:
    """Event time (ms) at which each stage started: the first at RUNNING, the others at their
    "stage ... started" progress event."""
    starts: dict[str, int] = {}
    for e in events:
        if e.type == common_pb2.EVENT_TYPE_STATE and e.state == common_pb2.JOB_STATE_RUNNING:
            starts.setdefault("running", e.time_ms)
        elif e.type == common_pb2.EVENT_TYPE_PROGRESS and e.shards_done == 0:
            starts.setdefault(e.stage, e.time_ms)
    return starts


def _device_figures(shard: common_pb2.Shard, qa: dict) -> dict:
    coincidence = qa["coincidence"]
    return {
        "conversion_s": round((shard.finished_ms - shard.started_ms) / 1000, 3),
        "agent_id": shard.agent_id,
        "qa_passed": bool(qa["passed"]),
        "released": bool(qa["released"]),
        "gamma_pass_rate_pct": round(float(qa["gamma_pass_rate_pct"]), 2),
        "segments": int(qa["segments"]),
        "total_mu": round(float(qa["total_mu"]), 1),
        "mu_per_beam": [round(float(m), 1) for m in qa["mu_per_beam"]],
        "coincidence_score": coincidence["overall"],
        "coincidence_threshold": coincidence["threshold"],
        "reused_standard_plan": bool(coincidence["reused_standard_plan"]),
        "strategy": "reuse" if coincidence["reused_standard_plan"] else "re-optimize",  # of the last attempt
        "attempts": len(qa["attempts"]),
        # Attempts after a QA failure may raise the threshold (force re-optimization): each one's strategy.
        "strategy_per_attempt": ["reuse" if coincidence["overall"] >= a["settings"].get("threshold", DEFAULT_THRESHOLD)
                                 else "re-optimize" for a in qa["attempts"]],
        "gamma_per_attempt_pct": [round(float(a["gamma_pass_rate_pct"]), 2) for a in qa["attempts"]],
        "reasons": qa["reasons"],
        "engine_timings_s": {k: round(float(v), 3) for k, v in qa["timings_s"].items()},
    }


def run_conversion_job(client: Client, case_id: str, params: dict[str, str], devices: list[str], out_dir: Path,
                       timeout_s: float) -> dict:
    """One plan job with ``devices``: wall, stage and shard times, and every device's QA figures."""
    started = time.perf_counter()
    job = client.submit(case_id, "plan", params={**params, "devices": ",".join(devices)})
    timed = watch_job(client, job.job_id, timeout_s)
    wall_s = timed[-1][0] - started
    events = [e for _, e in timed]
    final = events[-1]
    shards = client.shards(job.job_id)
    files = {a.name: client.download(a, out_dir) for a in client.artifacts(job.job_id)}
    if "plan-report.json" not in files:
        raise BenchError(f"job {job.job_id} ({len(devices)} devices) ended {state_name(final.state)} without a "
                         f"standard plan: {final.message}")
    report = json.loads(files["plan-report.json"].read_text())
    starts = _stage_starts(events)
    if "convert" not in starts:
        raise BenchError(f"job {job.job_id} ended {state_name(final.state)} before its convert stage: {final.message}")
    by_stage: dict[str, list[common_pb2.Shard]] = {}
    for s in shards:
        by_stage.setdefault(s.stage, []).append(s)
    # Shard records carry no device over the API: convert shard i converts devices[i] (the order of an
    # explicit ``devices=`` list; no device is down here, so none is rerouted).
    per_device = {}
    for s in by_stage["convert"]:
        device = devices[s.index]
        qa_name = f"qa.{device}.json"
        if qa_name not in files:
            shard_state = common_pb2.ShardState.Name(s.state)
            raise BenchError(f"job {job.job_id}: no {qa_name} (convert shard {s.index} {shard_state}: {s.error})")
        qa = json.loads(files[qa_name].read_text())
        if qa["device"] != device:
            raise BenchError(f"job {job.job_id}: {qa_name} is for device {qa['device']!r}")
        per_device[device] = _device_figures(s, qa)
    convert = by_stage["convert"]
    shard_sum_s = sum((s.finished_ms - s.started_ms) / 1000 for s in convert)
    convert_stage_s = (final.time_ms - starts["convert"]) / 1000
    return {
        "job_id": job.job_id,
        "devices": devices,
        "state": state_name(final.state),
        "message": final.message if final.state != common_pb2.JOB_STATE_SUCCEEDED else "",
        "wall_s": round(wall_s, 3),
        "standard_plan_s": round((starts["convert"] - starts["running"]) / 1000, 3),
        "stage_shard_s": {st: round(sum((s.finished_ms - s.started_ms) / 1000 for s in by_stage[st]), 3)
                          for st in STANDARD_STAGES},
        "convert_stage_s": round(convert_stage_s, 3),
        "convert_shards_span_s": round(
            (max(s.finished_ms for s in convert) - min(s.started_ms for s in convert)) / 1000, 3),
        "convert_shards_s_sum": round(shard_sum_s, 3),
        "parallelism": round(shard_sum_s / convert_stage_s, 3) if convert_stage_s > 0 else None,
        "convert_agents_used": len({s.agent_id for s in convert}),
        "released": sorted(n for n in files if n.startswith(("RP.", "RD.")) and n != "RD.standard.dcm"),
        "per_device": per_device,
        "standard_plan": {"all_goals_met": report["all_goals_met"],
                          "metrics": report["metrics"],
                          "goals": [{"goal": g["goal"], "achieved_gy": round(g["achieved_gy"], 3), "met": g["met"]}
                                    for g in report["goals"]]},
    }


def run_contour_job(client: Client, case_id: str, timeout_s: float, figures: dict) -> str:
    """The automatic contours the plan jobs use; returns the contour job's id."""
    started = time.perf_counter()
    job = client.submit(case_id, "contour")
    final = watch_job(client, job.job_id, timeout_s)[-1]
    if final[1].state != common_pb2.JOB_STATE_SUCCEEDED:
        raise BenchError(f"contour job {job.job_id} ended {state_name(final[1].state)}: {final[1].message}")
    figures["contour_job_s"] = round(final[0] - started, 3)
    say(f"automatic contours (BODY, lungs) in {figures['contour_job_s']:.1f} s")
    return job.job_id


def summarize(runs: dict[str, dict], target: str) -> dict:
    """The headline figures: convert-stage wall per device count, and per-device results."""
    summary: dict = {"convert_stage_s": {n: r["convert_stage_s"] for n, r in runs.items()},
                     "parallelism": {n: r["parallelism"] for n, r in runs.items()},
                     "job_wall_s": {n: r["wall_s"] for n, r in runs.items()}}
    one = runs.get("1")
    if one:
        for n, r in runs.items():
            if n != "1":
                # The stage's growth against one device: 1.0 would be perfectly parallel conversions.
                summary[f"convert_stage_{n}_vs_1"] = round(r["convert_stage_s"] / one["convert_stage_s"], 3)
    metrics = [json.dumps(r["standard_plan"]["metrics"], sort_keys=True) for r in runs.values()]
    summary["same_standard_plan_in_every_job"] = len(set(metrics)) == 1
    last = runs[max(runs, key=int)]
    summary["standard_plan_goals_met"] = last["standard_plan"]["all_goals_met"]
    summary[f"standard_{target}_D95_gy"] = round(last["standard_plan"]["metrics"][target]["D95"], 3)
    devices: dict[str, dict] = {}
    for r in runs.values():
        for name, d in r["per_device"].items():
            entry = devices.setdefault(name, {"conversion_s": [], "gamma_pass_rate_pct": []})
            entry["conversion_s"].append(d["conversion_s"])
            entry["gamma_pass_rate_pct"].append(d["gamma_pass_rate_pct"])
            entry.update({k: d[k] for k in ("qa_passed", "segments", "total_mu", "mu_per_beam", "coincidence_score",
                                            "strategy", "strategy_per_attempt", "attempts")})
    summary["devices"] = devices
    return summary


def run(args: argparse.Namespace, figures: dict) -> None:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    counts = [int(n) for n in args.counts.split(",")]
    if any(not 1 <= n <= len(devices) for n in counts):
        raise BenchError(f"--counts {args.counts}: each count must lie in 1..{len(devices)} (the --devices given)")
    params = {"beams": str(args.beams), "dose_grid_mm": str(args.dose_grid_mm), "bixel_mm": str(args.bixel_mm)}
    figures["config"] = {"case": args.case, "devices": devices, "counts": counts, **params, "agents": 2,
                         "agent_cpus": 1, "cpu_count": os.cpu_count()}
    figures["load_avg_start"] = _load()
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-conversion-") as tmp_name:
        tmp = Path(tmp_name)
        ct_dir, rtstruct, order, target, needs_contours = write_case(args.case, tmp / "case")
        params["order"] = order
        (tmp / "data").mkdir()
        (tmp / "logs").mkdir()
        grid = BenchGrid(tmp / "data", tmp / "logs", args.head_object_store_mb)
        with grid_session(grid):
            started = time.perf_counter()
            grid.start_ray()
            address = grid.start_master()
            for name in ("bench-a", "bench-b"):
                # One after the other: two raylets starting at once on 2 busy cores can miss Ray's start limit.
                grid.start_agent(name, cpus=1)
            figures["grid_start_s"] = round(time.perf_counter() - started, 3)
            say(f"grid up in {figures['grid_start_s']:.1f} s: master {address}, two 1-CPU agents")
            with Client(address) as client:
                case_id = client.upload_folder(ct_dir, rtstruct, label=f"bench-conversion-{args.case}").case.case_id
                if needs_contours:
                    # Once, before the plan jobs, which then plan on its BODY and lungs plus the manual RTSTRUCT.
                    params["contours_job"] = run_contour_job(client, case_id, args.job_timeout, figures)
                runs: dict[str, dict] = {}
                for n in counts:
                    say(f"plan job converting for {n} device(s): {', '.join(devices[:n])} ...")
                    r = run_conversion_job(client, case_id, params, devices[:n], tmp / f"out-{n}", args.job_timeout)
                    runs[str(n)] = r
                    say(f"  {r['state']} in {r['wall_s']:.1f} s; standard plan {r['standard_plan_s']:.1f} s; convert "
                        f"stage {r['convert_stage_s']:.1f} s (shards {r['convert_shards_s_sum']:.1f} s in all, "
                        f"parallelism {r['parallelism']}, on {r['convert_agents_used']} agent(s))")
                    for name, d in r["per_device"].items():
                        say(f"    {name}: {d['conversion_s']:.1f} s, QA {'pass' if d['qa_passed'] else 'FAIL'}, gamma "
                            f"{d['gamma_pass_rate_pct']:.1f} %, {d['segments']} segments, {d['total_mu']:.0f} MU, "
                            f"coincidence {d['coincidence_score']:.3f} -> {'/'.join(d['strategy_per_attempt'])}")
                figures["runs"] = runs
                figures["summary"] = summarize(runs, target)
                say(f"summary: convert stage {figures['summary']['convert_stage_s']}")
    figures["load_avg_end"] = _load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("phantom", "tg119"), default="phantom",
                        help="the digital phantom (lung tumour, 60 Gy) or the TG-119 C-shape (needs pyRadPlan)")
    parser.add_argument("--devices", default=DEFAULT_DEVICES, help="device ids, in the order they are added")
    parser.add_argument("--counts", default="1,2,3", help="device counts to convert for, one plan job each")
    parser.add_argument("--beams", type=int, default=5, help="equispaced coplanar beams of the standard plan")
    parser.add_argument("--dose-grid-mm", type=float, default=5.0, help="dose grid spacing (mm)")
    parser.add_argument("--bixel-mm", type=float, default=5.0, help="bixel size at the isocenter (mm)")
    parser.add_argument("--head-object-store-mb", type=int, default=1024,
                        help="object store of the Ray head, where the master puts shard arguments (MiB)")
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds allowed per plan job")
    return run_benchmark("conversion", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
