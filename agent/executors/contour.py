"""Contour executors: classical structures per z-slab, then the merge into one RTSTRUCT."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.report.overlay import render_overlays
from rtgrid.engines.segmentation import classical
from rtgrid.engines.segmentation.deep.card import ModelCard
from rtgrid.engines.segmentation.deep.postprocess import postprocess
from rtgrid.protos.grid_contract import ContourMergeCall, ContourSlabCall, ContourSlabResult

from .assist import assisted_structures
from .files import artifact, dataset_bytes

# How each classical structure is typed in the RTSTRUCT, and drawn.
CLASSICAL_ROI = {
    "BODY": ("EXTERNAL", (255, 224, 189)),
    "Lung_L": ("ORGAN", (0, 160, 255)),
    "Lung_R": ("ORGAN", (0, 96, 200)),
    "Bones": ("ORGAN", (255, 255, 255)),
    "AirCavity": ("CAVITY", (128, 255, 128)),
}
# Colours of model structures, in class order (distinct from the classical ones).
MODEL_COLORS = ((220, 60, 60), (60, 200, 90), (240, 160, 40), (170, 80, 220), (40, 200, 200), (240, 90, 170),
                (140, 140, 40), (90, 120, 250))


def contour_slab(call: ContourSlabCall) -> dict[str, Any]:
    """Classical structures of one z-slab (its core slices)."""
    result = classical.contour_slab(np.asarray(call.hu), call.spacing_mm, call.direction, call.slab)
    return ContourSlabResult(dataclasses.asdict(result.slab), result.bits).to_result()


def model_structures(model: dict[str, Any], taken: set[str]) -> tuple[list[StructureSpec], dict[str, Any], ModelCard]:
    """One model's label slabs → post-processed structures named by its card, a summary, the card.

    A name the RTSTRUCT already holds gets the model's name appended, so nothing is overwritten.
    """
    card = ModelCard.from_dict(json.loads(model["card_json"]), source=f"model {model['name']}")
    labels = postprocess(np.concatenate([np.asarray(slab, dtype=np.uint8) for slab in model["labels"]]), card)
    origin = f"rtgrid model {model['name']}@{model['version']} sha256 {model['sha256'][:16]}"
    specs = []
    for position, label in enumerate(card.labels):
        name = label.rtstruct_name if label.rtstruct_name not in taken else f"{label.rtstruct_name}_{card.name}"[:64]
        taken.add(name)
        specs.append(StructureSpec(name, labels == label.index, label.roi_type, MODEL_COLORS[position % len(MODEL_COLORS)],
                                   "AUTOMATIC", origin))
    summary = {"name": model["name"], "version": model["version"], "sha256": model["sha256"],
               "structures": [spec.name for spec in specs], "actors": model["actors"]}
    return specs, summary, card


def contour_merge(call: ContourMergeCall) -> dict[str, Any]:
    """Merge slabs (and model label maps), complete what the user drew (``assist``), write the
    RTSTRUCT on the uploaded series, render overlays and a summary (which lists the
    ``skipped_models`` the master ruled out for this CT, with the reason)."""
    series, assist = call.series, call.assist
    results = [classical.SlabResult(classical.Slab(**r.slab), r.bits)
               for r in map(ContourSlabResult.from_result, call.slab_results)]
    masks = classical.merge_slabs(results, series.volume)
    specs = [
        StructureSpec(name, masks[name], *CLASSICAL_ROI.get(name, ("ORGAN", (255, 0, 0))), "AUTOMATIC")
        for name in masks
    ]
    taken = set(masks)
    model_summaries = []
    model_masks: dict[str, tuple[np.ndarray, str]] = {}  # what assist may refine with, by structure name
    for model in call.model_results:
        model_specs, summary, card = model_structures(model, taken)
        specs += model_specs
        model_summaries.append(summary)
        for label, spec in zip(card.labels, model_specs):
            for name in (label.name, label.rtstruct_name):
                model_masks.setdefault(name.lower(), (spec.mask, f"{model['name']}@{model['version']}"))
    assisted: list[dict[str, Any]] = []
    if assist:
        assist_specs, assisted = assisted_structures(assist, series, model_masks, taken)
        specs += assist_specs
    ds = write_rtstruct(series, specs, label="RTGRID-AUTO", description="rtgrid auto-contouring (classical"
                        + (" + deep models" if model_summaries else "") + ")")
    rtstruct = dataset_bytes(ds)
    voxel_cc = series.volume.voxel_volume_mm3 / 1000.0
    summary = {
        "structures": {s.name: {"volume_cc": round(float(s.mask.sum()) * voxel_cc, 3)} for s in specs},
        "models": model_summaries,
        "skipped_models": list(call.skipped_models),
        "assisted": assisted,
        "series_instance_uid": series.series_instance_uid,
        "notes": list(series.notes),
    }
    png = render_overlays(series.volume, {s.name: s.mask for s in specs}, {s.name: s.color for s in specs})
    return artifact(
        ("RS.contours.dcm", "rtstruct", "RTSTRUCT", rtstruct),
        ("contours.png", "image", "", png),
        ("contours.json", "report", "", json.dumps(summary, indent=2).encode()),
    )
