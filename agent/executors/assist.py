"""Semi-automatic delineation in the merge step: complete what the user drew or pointed at.

The completed structure is written beside the drawn one, marked as machine-completed: its ROI
Generation Algorithm is ``SEMIAUTOMATIC`` and its ROI Description starts with
:data:`MACHINE_COMPLETED` and says how it was made.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pydicom

from rtgrid.engines.dicomrt.rtstruct import StructureSpec, read_rtstruct, read_rtstruct_rois
from rtgrid.engines.imaging.volume import ImageSeries
from rtgrid.engines.segmentation.assist import complete_drawn_structure, refine_with_model, region_grow

MACHINE_COMPLETED = "machine-completed by rtgrid"
COMPLETED_SUFFIX = "_completed"
DRAWN_COLOR = (255, 255, 0)
COMPLETED_COLOR = (255, 140, 0)
DEFAULT_BAND_MM = 5.0


def _free_name(name: str, taken: set[str], suffix: str) -> str:
    """``name`` when unused, else ``name`` + ``suffix`` (ROI names are unique and at most 64 characters)."""
    out = name[:64] if name not in taken else (name[: 64 - len(suffix)] + suffix)
    taken.add(out)
    return out


def _refine(mask: np.ndarray, name: str, model_masks: dict[str, tuple[np.ndarray, str]], spacing_mm, band_mm: float):
    """Refine with a job model's prediction of the same structure (matched by name), if any."""
    match = model_masks.get(name.lower())
    if match is None:
        return mask, ""
    predicted, model = match
    return refine_with_model(mask, predicted, spacing_mm, band_mm), f"; border refined by model {model} within {band_mm:g} mm"


def assisted_structures(request: dict[str, Any], series: ImageSeries, model_masks: dict[str, tuple[np.ndarray, str]],
                        taken: set[str]) -> tuple[list[StructureSpec], list[dict[str, Any]]]:
    """The drawn and completed structures of an ``assist`` request, and a summary of each.

    Parameters
    ----------
    request : dict
        The job's ``assist`` parameter (``rtgrid.master.jobs.assist`` says what it holds).
    series : ImageSeries
        The case's CT.
    model_masks : dict
        ``{lower-case structure name: (mask, "model@version")}`` predicted by the job's models.
    taken : set of str
        ROI names already in the RTSTRUCT (updated).

    Raises
    ------
    AssistInputError
        When the seed or box lies outside the CT, or the seed's HU is outside the range.
    """
    volume = series.volume
    spacing = volume.spacing_mm
    band = float(request.get("band_mm", DEFAULT_BAND_MM))
    specs: list[StructureSpec] = []
    summary: list[dict[str, Any]] = []
    if "rtstruct_base64" in request:
        ds = pydicom.dcmread(io.BytesIO(base64.b64decode(request["rtstruct_base64"])))
        infos = {r.name: r for r in read_rtstruct_rois(ds)}
        for name, drawn in read_rtstruct(ds, volume, frame_of_reference_uid=series.frame_of_reference_uid).items():
            if not drawn.any():
                continue
            completed, slices = complete_drawn_structure(drawn, spacing)
            completed, refined = _refine(completed, name, model_masks, spacing, band)
            roi_type = infos[name].interpreted_type or request.get("roi_type", "ORGAN")
            how = f"shape-based interpolation between {len(slices)} drawn slices ({slices[0]}..{slices[-1]}){refined}"
            drawn_name = _free_name(name, taken, "_drawn")
            completed_name = _free_name(name + COMPLETED_SUFFIX, taken, "_2")
            specs += [
                StructureSpec(drawn_name, drawn, roi_type, infos[name].color or DRAWN_COLOR, "MANUAL",
                              "drawn by the user (assist input)"),
                StructureSpec(completed_name, completed, roi_type, COMPLETED_COLOR, "SEMIAUTOMATIC",
                              f"{MACHINE_COMPLETED}: {how}"),
            ]
            summary.append({"drawn": drawn_name, "completed": completed_name, "drawn_slices": slices, "method": how})
        return specs, summary
    low, high = request["hu_range"]
    if "seed_mm" in request:
        mask = region_grow(volume, request["seed_mm"], (low, high), float(request["max_radius_mm"]))
        how = (f"region growing from seed {request['seed_mm']} mm within HU [{low:g}, {high:g}], "
               f"at most {float(request['max_radius_mm']):g} mm")
    else:
        mask = region_grow(volume, None, (low, high), 0.0, box_mm=tuple(request["box_mm"]))
        how = f"largest region within HU [{low:g}, {high:g}] in box {request['box_mm']} mm"
    mask, refined = _refine(mask, request["name"], model_masks, spacing, band)
    name = _free_name(request["name"], taken, COMPLETED_SUFFIX)
    specs.append(StructureSpec(name, mask, request.get("roi_type", "ORGAN"), COMPLETED_COLOR, "SEMIAUTOMATIC",
                               f"{MACHINE_COMPLETED}: {how}{refined}"))
    summary.append({"completed": name, "method": how + refined})
    return specs, summary
