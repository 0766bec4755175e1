"""Contour executors: classical structures per z-slab, then the merge into one RTSTRUCT."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.volume import ImageSeries
from rtgrid.engines.report.overlay import render_overlays
from rtgrid.engines.segmentation import classical

from .files import artifact, dataset_bytes

# How each classical structure is typed in the RTSTRUCT, and drawn.
CLASSICAL_ROI = {
    "BODY": ("EXTERNAL", (255, 224, 189)),
    "Lung_L": ("ORGAN", (0, 160, 255)),
    "Lung_R": ("ORGAN", (0, 96, 200)),
    "Bones": ("ORGAN", (255, 255, 255)),
    "AirCavity": ("CAVITY", (128, 255, 128)),
}


def contour_slab(hu: np.ndarray, spacing_mm: np.ndarray, direction: np.ndarray, slab: classical.Slab) -> dict[str, Any]:
    """Classical structures of one z-slab (its core slices)."""
    result = classical.contour_slab(np.asarray(hu), spacing_mm, direction, slab)
    return {"slab": dataclasses.asdict(result.slab), "bits": result.bits}


def contour_merge(slab_results: list[dict[str, Any]], series: ImageSeries) -> dict[str, Any]:
    """Merge slabs, write the RTSTRUCT on the uploaded series, render overlays and a summary."""
    results = [classical.SlabResult(classical.Slab(**r["slab"]), r["bits"]) for r in slab_results]
    masks = classical.merge_slabs(results, series.volume)
    specs = [
        StructureSpec(name, masks[name], *CLASSICAL_ROI.get(name, ("ORGAN", (255, 0, 0))), "AUTOMATIC")
        for name in masks
    ]
    ds = write_rtstruct(series, specs, label="RTGRID-AUTO", description="rtgrid classical auto-contouring")
    rtstruct = dataset_bytes(ds)
    voxel_cc = series.volume.voxel_volume_mm3 / 1000.0
    summary = {
        "structures": {name: {"volume_cc": round(float(mask.sum()) * voxel_cc, 3)} for name, mask in masks.items()},
        "series_instance_uid": series.series_instance_uid,
        "notes": list(series.notes),
    }
    png = render_overlays(series.volume, masks, {n: CLASSICAL_ROI.get(n, ("", (255, 0, 0)))[1] for n in masks})
    return artifact(
        ("RS.contours.dcm", "rtstruct", "RTSTRUCT", rtstruct),
        ("contours.png", "image", "", png),
        ("contours.json", "report", "", json.dumps(summary, indent=2).encode()),
    )
