"""Segmentation benchmark: engine slices per second, and one CT through the grid, cold and warm.

``python -m bench.seg`` measures

1. engine throughput: :class:`SegmentationRunner.predict_slices` (windowing, network, logit
   upsampling, argmax to uint8) on random-weight networks of the first model's size, at 512x512,
   on 2 CPU threads, and on CUDA with fp16 autocast when a GPU is present;
2. the grid end to end (unless ``--no-grid``): a real grid on 127.0.0.1 (Ray head, ``rtgrid up``,
   one agent), a model package registered (the small phantom model trained here, or
   ``--package DIR``), then one phantom CT uploaded and contoured with ``--models`` (classical
   structures + the model's, one RTSTRUCT downloaded) twice: ``cold`` — the agent has no model
   actor and an empty package cache, so the package is fetched and loaded — and ``warm`` — a
   new upload of the same CT served by the actor that is already loaded. Each is timed from
   the first upload byte to the RTSTRUCT on disk, with the segment stage and the actor's load time.

Human-readable lines go to stderr; stdout carries exactly one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.grid import BenchError, LocalGrid, run_benchmark, say, watch_job, with_jobs_cancelled
from rtgrid.client.sdk import state_name
from rtgrid.engines.segmentation.deep.card import CardLabel, ModelCard
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
from rtgrid.engines.segmentation.deep.models import build_model
from rtgrid.protos.v1 import common_pb2

ARCHITECTURES = {
    "unet2d": {"base_channels": 16, "depth": 4},
    "deeplabv3plus_mobilenetv2": {},
}
N_CLASSES = 6
SPACING_MM = (0.9765625, 0.9765625)


def _runner(architecture: str, device: str, batch: int, precision: str) -> SegmentationRunner:
    torch.manual_seed(0)
    kwargs = ARCHITECTURES[architecture]
    card = ModelCard(
        name=f"bench-{architecture}", version="0", architecture=architecture, architecture_kwargs=kwargs,
        labels=tuple(CardLabel(i, f"class{i}", f"Class{i}") for i in range(1, N_CLASSES)),
        input_spacing_mm=SPACING_MM, hu_window=(-400.0, 600.0), in_channels=1,
        training_data={}, validation_metrics={}, licence="none (random weights)",
    )
    model = build_model(architecture, 1, N_CLASSES, **kwargs)
    return SegmentationRunner((model, card), device=device, batch_slices=batch, precision=precision)


def slices_per_second(architecture: str, device: str, n_slices: int, batch: int, precision: str = "auto") -> float:
    """Throughput of one runner on ``n_slices`` random 512x512 HU slices (after one warm-up batch)."""
    runner = _runner(architecture, device, batch, precision)
    hu = np.random.default_rng(0).integers(-1000, 1500, size=(n_slices, 512, 512), dtype=np.int16)
    runner.predict_slices(hu[:batch], SPACING_MM)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    runner.predict_slices(hu, SPACING_MM)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n_slices / (time.perf_counter() - started)


def measure_engine(args: argparse.Namespace, figures: dict) -> None:
    torch.set_num_threads(args.threads)
    figures["cpu_threads"] = args.threads
    for architecture in ARCHITECTURES:
        rate = slices_per_second(architecture, "cpu", args.cpu_slices, batch=4)
        figures[f"{architecture}_cpu_slices_per_s"] = round(rate, 3)
        say(f"{architecture}: {rate:.2f} slices/s at 512x512 on {args.threads} CPU threads")
    if torch.cuda.is_available():
        figures["cuda_device"] = torch.cuda.get_device_name()
        for architecture in ARCHITECTURES:
            rate = slices_per_second(architecture, "cuda", args.cuda_slices, batch=32, precision="fp16")
            figures[f"{architecture}_cuda_fp16_slices_per_s"] = round(rate, 1)
            figures[f"{architecture}_cuda_fp16_ms_per_slice"] = round(1000.0 / rate, 3)
            say(f"{architecture}: {rate:.1f} slices/s at 512x512 on CUDA fp16")


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
    from rtgrid.engines.phantom import write_phantom_case
    from rtgrid.engines.segmentation.deep.phantom_model import train_phantom_model

    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-seg-") as tmp_name:
        tmp = Path(tmp_name)
        package = args.package
        if package is None:
            started = time.perf_counter()
            package = train_phantom_model(tmp / "model").package_dir
            figures["phantom_model_train_s"] = round(time.perf_counter() - started, 3)
            say(f"phantom model trained in {figures['phantom_model_train_s']:.1f} s")
        shape = (args.grid_slices, 512, 512)
        ct_dir = write_phantom_case(tmp / "ct", shape=shape, spacing_mm=(0.98, 0.98, 2.0), seed=7).ct_dir
        figures["grid_ct_shape"] = list(shape)
        # The agent starts with an empty package cache of its own: the first job is a true cold start.
        os.environ["RTGRID_MODEL_CACHE"] = str(tmp / "agent-model-cache")
        (tmp / "logs").mkdir()
        grid = LocalGrid(tmp / "master", tmp / "logs", head_object_store_mb=1024)
        try:
            grid.start_master(grid.start_ray())
            grid.start_agent("bench-seg-agent", cpus=args.agent_cpus)
            with Client(grid.target) as client:
                grid.wait_agents(client, 1)
                model = client.register_model(package)
                say(f"registered {model.name}@{model.version} ({model.sha256[:12]})")
                figures["grid_model"] = f"{model.name}@{model.version}"
                figures["grid_agent_cpus"] = args.agent_cpus
                for run_name in ("cold", "warm"):
                    result = grid_job(client, ct_dir, model.name, tmp / run_name, args.job_timeout)
                    figures[f"grid_{run_name}"] = result
                    say(f"{run_name}: upload → RTSTRUCT {result['upload_to_rtstruct_s']:.1f} s (segment stage "
                        f"{result['segment_stage_s']:.1f} s, actor load {result['actor_load_s']:.2f} s)")
            cold, warm = figures["grid_cold"], figures["grid_warm"]
            figures["grid_warm_saves_s"] = round(cold["upload_to_rtstruct_s"] - warm["upload_to_rtstruct_s"], 3)
            figures["grid_warm_segment_stage_saves_s"] = round(cold["segment_stage_s"] - warm["segment_stage_s"], 3)
        except BaseException:
            grid.dump_log_tails()
            raise
        finally:
            with_jobs_cancelled(grid)
            grid.close()


def run(args: argparse.Namespace, figures: dict) -> None:
    measure_engine(args, figures)
    if not args.no_grid:
        measure_grid(args, figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-slices", type=int, default=8, help="slices timed per architecture on CPU")
    parser.add_argument("--cuda-slices", type=int, default=256, help="slices timed per architecture on CUDA")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--no-grid", action="store_true", help="engine figures only")
    parser.add_argument("--grid-slices", type=int, default=64, help="slices of the 512x512 CT sent through the grid")
    parser.add_argument("--agent-cpus", type=int, default=2, help="CPUs of the grid's one agent")
    parser.add_argument("--package", type=Path, default=None,
                        help="model package to register (default: the phantom model, trained here)")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="seconds allowed per grid job")
    return run_benchmark("seg", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
