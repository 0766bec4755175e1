"""Segmentation throughput: 512x512 slices per second for both architectures.

``python -m bench.seg`` times :class:`SegmentationRunner.predict_slices` (windowing, network,
logit upsampling, argmax to uint8) on random-weight networks of the first model's size, on 2 CPU
threads, and on CUDA with fp16 autocast when a GPU is present. The last line printed is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from rtgrid.engines.segmentation.deep.card import CardLabel, ModelCard
from rtgrid.engines.segmentation.deep.inference import SegmentationRunner
from rtgrid.engines.segmentation.deep.models import build_model

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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-slices", type=int, default=8, help="slices timed per architecture on CPU")
    parser.add_argument("--cuda-slices", type=int, default=256, help="slices timed per architecture on CUDA")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    figures: dict[str, float] = {"cpu_threads": args.threads}
    for architecture in ARCHITECTURES:
        rate = slices_per_second(architecture, "cpu", args.cpu_slices, batch=4)
        figures[f"{architecture}_cpu_slices_per_s"] = round(rate, 3)
        print(f"{architecture}: {rate:.2f} slices/s at 512x512 on {args.threads} CPU threads")
    if torch.cuda.is_available():
        figures["cuda_device"] = torch.cuda.get_device_name()
        for architecture in ARCHITECTURES:
            rate = slices_per_second(architecture, "cuda", args.cuda_slices, batch=32, precision="fp16")
            figures[f"{architecture}_cuda_fp16_slices_per_s"] = round(rate, 1)
            figures[f"{architecture}_cuda_fp16_ms_per_slice"] = round(1000.0 / rate, 3)
            print(f"{architecture}: {rate:.1f} slices/s at 512x512 on CUDA fp16")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
