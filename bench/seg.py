"""Segmentation benchmark: the head-and-neck models on the OpenKBP validation patients, and one
128-slice head-and-neck CT through the grid, cold and warm.

``python -m bench.seg`` (``make bench-seg``) measures

1. accuracy: both architectures' packages (the built-in U-Net ``rtgrid-hn-oar`` and the DeepLabv3+
   it was compared with) segment the OpenKBP validation patients (all 33 unless ``--patients N``)
   exactly as the grid does (runner + post-processing); DSC per organ (TG-263 names) and the mean;
2. engine throughput: slices per second of each package on CPU (``--threads``), CT in, labels out,
   and on CUDA with autocast when a GPU is present;
3. the grid end to end (unless ``--no-grid``): a fresh grid on 127.0.0.1 (Ray head, ``rtgrid up``,
   one agent) that registers the built-in model by itself; one validation patient written as a
   128-slice DICOM CT is uploaded and contoured with ``--models rtgrid-hn-oar`` twice: ``cold`` —
   the agent has no model actor and an empty package cache — and ``warm`` — a new upload of the
   same CT served by the loaded actor. Each is timed from the first upload byte to the RTSTRUCT on
   disk.

Human-readable lines go to stderr; stdout carries exactly one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.grid import BenchError, BenchGrid, run_benchmark, say, watch_job, with_jobs_cancelled
from rtgrid.client.sdk import state_name
from rtgrid.engines.imaging.openkbp import load_openkbp_patient, openkbp_patients, write_openkbp_dicom
from rtgrid.engines.segmentation.deep.builtin import BUILTIN_DIR, HN_OAR_PACKAGE
from rtgrid.engines.segmentation.deep.hn_eval import evaluate_openkbp, goals_met
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
from rtgrid.protos.v1 import common_pb2

SHARED_OPENKBP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "openkbp"
# The shipped network and the one it was compared with (kept beside, not registered).
PACKAGES = (HN_OAR_PACKAGE, *sorted((BUILTIN_DIR / "comparison").iterdir()))


def measure_models(args: argparse.Namespace, figures: dict) -> None:
    torch.set_num_threads(args.threads)
    figures["cpu_threads"] = args.threads
    paths = openkbp_patients(args.openkbp / "validation")[: args.patients or None]
    figures["validation_patients"] = len(paths)
    for package in PACKAGES:
        runner = SegmentationRunner(package, batch_slices=16)
        architecture = runner.card.architecture
        say(f"{architecture}: {runner.card.name}@{runner.card.version} on {len(paths)} validation patients")
        summary = evaluate_openkbp(runner, paths, say if args.verbose else None)["summary"]
        figures[f"{architecture}_dsc"] = {k: round(v["dsc"]["mean"], 4) for k, v in summary["organs"].items()}
        figures[f"{architecture}_mean_dsc"] = round(summary["mean_dsc"], 4)
        figures[f"{architecture}_goals_met"] = goals_met(summary)
        say(f"{architecture}: mean DSC {summary['mean_dsc']:.3f}; " + ", ".join(
            f"{k} {v['dsc']['mean']:.3f}" for k, v in summary["organs"].items()))
        volume = load_openkbp_patient(paths[0]).volume
        runner.predict_volume(volume)  # warm-up
        started = time.perf_counter()
        runner.predict_volume(volume)
        rate = volume.shape[0] / (time.perf_counter() - started)
        figures[f"{architecture}_cpu_slices_per_s"] = round(rate, 2)
        say(f"{architecture}: {rate:.1f} slices/s ({volume.shape[1]}x{volume.shape[2]}) on {args.threads} CPU threads")
        if torch.cuda.is_available():
            gpu = SegmentationRunner(package, device="cuda", batch_slices=64)
            gpu.predict_volume(volume)
            torch.cuda.synchronize()
            started = time.perf_counter()
            gpu.predict_volume(volume)
            torch.cuda.synchronize()
            figures[f"{architecture}_cuda_slices_per_s"] = round(volume.shape[0] / (time.perf_counter() - started), 1)


def grid_job(client, ct_dir: Path, model: str, out_dir: Path, timeout_s: float) -> dict:
    """Upload ``ct_dir``, contour it with ``model``, download the RTSTRUCT: the times, end to end."""
    started = time.perf_counter()
    case = client.upload_folder(ct_dir, label="bench-seg").case
    uploaded = time.perf_counter()
    job = client.submit(case.case_id, "contour", params={"models": model})
    events = watch_job(client, job.job_id, timeout_s)
    final = events[-1][1]
    if final.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise BenchError(f"job {job.job_id} ended {state_name(final.state)}: {final.message}")
    artifacts = {a.name: a for a in client.artifacts(job.job_id)}
    rtstruct = client.download(artifacts["RS.contours.dcm"], out_dir)
    done = time.perf_counter()
    summary = json.loads(client.download(artifacts["contours.json"], out_dir).read_text())
    stage_ms = {}
    for _, e in events:
        if e.type == common_pb2.EVENT_TYPE_PROGRESS and e.shards_done == 0:
            stage_ms.setdefault(e.stage, e.time_ms)
    segment_shards = [s for s in client.shards(job.job_id) if s.stage == "segment"]
    actors = summary["models"][0]["actors"]
    return {
        "upload_to_rtstruct_s": round(done - started, 3),
        "upload_s": round(uploaded - started, 3),
        "job_s": round(events[-1][0] - uploaded, 3),
        "segment_stage_s": round((stage_ms["merge"] - stage_ms["segment"]) / 1000, 3),
        "segment_shards": len(segment_shards),
        "segment_shard_s_max": round(max((s.finished_ms - s.started_ms) / 1000 for s in segment_shards), 3),
        "actor_load_s": round(max(a["load_s"] for a in actors), 3),
        "actor_shards_served": max(a["shards"] for a in actors),
        "package_from_cache": all(a["from_cache"] for a in actors),
        "structures": sorted(summary["structures"]),
        "rtstruct_bytes": rtstruct.stat().st_size,
    }


def measure_grid(args: argparse.Namespace, figures: dict) -> None:
    from rtgrid.client.sdk import Client

    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-seg-") as tmp_name:
        tmp = Path(tmp_name)
        patient = load_openkbp_patient(openkbp_patients(args.openkbp / "validation")[0])
        ct_dir = write_openkbp_dicom(patient, tmp / "case", structures=[]).ct_dir
        figures["grid_ct"] = f"OpenKBP {patient.patient_id}, {list(patient.volume.shape)} voxels"
        # The agent starts with an empty package cache of its own: the first job is a true cold start.
        (tmp / "logs").mkdir()
        # A fresh grid: its agent's model cache (under the master's data folder) starts empty.
        grid = BenchGrid(tmp / "master", tmp / "logs", head_object_store_mb=1024)
        try:
            grid.start_ray()
            grid.start_master()
            grid.start_agent("bench-seg-agent", cpus=args.agent_cpus)
            with Client(grid.target) as client:
                listed = [m for m in client.models() if m.name == args.model]
                if not listed:
                    raise BenchError(f"a fresh grid does not list the built-in model {args.model}")
                model = listed[0]
                say(f"fresh grid lists {model.name}@{model.version} ({model.sha256[:12]})")
                figures["grid_model"] = f"{model.name}@{model.version}"
                figures["grid_agent_cpus"] = args.agent_cpus
                for run_name in ("cold", "warm"):
                    result = grid_job(client, ct_dir, model.name, tmp / run_name, args.job_timeout)
                    figures[f"grid_{run_name}"] = result
                    say(f"{run_name}: upload → RTSTRUCT {result['upload_to_rtstruct_s']:.1f} s (segment stage "
                        f"{result['segment_stage_s']:.1f} s, actor load {result['actor_load_s']:.2f} s)")
            cold, warm = figures["grid_cold"], figures["grid_warm"]
            figures["grid_cold_s"] = cold["upload_to_rtstruct_s"]
            figures["grid_warm_s"] = warm["upload_to_rtstruct_s"]
        except BaseException:
            grid.dump_log_tails()
            raise
        finally:
            with_jobs_cancelled(grid)
            grid.close()


def run(args: argparse.Namespace, figures: dict) -> None:
    if not (args.openkbp / "validation").is_dir():
        raise BenchError(f"{args.openkbp / 'validation'} is missing: ../shared/data/openkbp must sit beside the repository")
    measure_models(args, figures)
    if not args.no_grid:
        measure_grid(args, figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openkbp", type=Path, default=SHARED_OPENKBP, help="the OpenKBP folder (train/, validation/)")
    parser.add_argument("--patients", type=int, default=0, help="score only the first N validation patients (0: all)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--verbose", action="store_true", help="a line per patient")
    parser.add_argument("--no-grid", action="store_true", help="model figures only")
    parser.add_argument("--model", default="rtgrid-hn-oar", help="the built-in model the grid job names")
    parser.add_argument("--agent-cpus", type=int, default=2, help="CPUs of the grid's one agent")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds allowed per grid job")
    return run_benchmark("seg", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
