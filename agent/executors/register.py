"""Registration executor: one MR or PET series registered to the planning CT -> DICOM REG objects,
a fused overlay and the figures of the registration."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pydicom

from rtgrid.engines.dicomrt.registration import write_deformable_registration, write_spatial_registration
from rtgrid.engines.dicomrt.rtstruct import StructureSpec, write_rtstruct
from rtgrid.engines.imaging.volume import ImageSeries
from rtgrid.engines.registration import (
    DeformableResult,
    RegistrationError,
    RigidResult,
    fused_overlay_png,
    map_structures_to_fixed,
    register_deformable,
    register_rigid,
    resample_deformed,
    resample_to_fixed,
)
from rtgrid.protos.grid_contract import RegisterSeriesCall

from .files import artifact, dataset_bytes

_LABELS = {"MR": "MR", "PT": "PET"}


def register_series(call: RegisterSeriesCall) -> dict[str, Any]:
    """Register ``call.moving`` to the CT ``call.fixed`` and publish the results.

    Publishes ``REG.<name>.dcm`` (Spatial Registration, the rigid MOVING -> CT matrix),
    ``DREG.<name>.dcm`` (Deformable Spatial Registration, when ``call.deformable``),
    ``fused.<name>.png`` (the CT with the registered image, resampled on its grid),
    ``registration.<name>.json``: the 4 x 4 matrix (LPS, mm), angles (degrees), translation (mm),
    Mattes mutual information, iterations and seconds of each step, and, when ``call.rtstructs``
    holds structure sets drawn on the moving series, ``RS.<name>.mapped.dcm``: their ROIs on the
    CT's frame (rigid: through the matrix; deformable: through the B-spline field).

    Raises
    ------
    RegistrationError
        From the engine, named: wrong modality, empty image, no overlap, another patient, a
        structure set on another frame or two ROIs of one name.
    """
    started = time.monotonic()
    fixed, moving, name = call.fixed, call.moving, call.name
    rigid = register_rigid(fixed, moving)
    summary: dict[str, Any] = {
        "moving": {"modality": moving.modality, "series_instance_uid": moving.series_instance_uid,
                   "frame_of_reference_uid": moving.frame_of_reference_uid},
        "fixed": {"modality": fixed.modality, "series_instance_uid": fixed.series_instance_uid,
                  "frame_of_reference_uid": fixed.frame_of_reference_uid},
        "rigid": {
            "matrix_moving_to_fixed": rigid.matrix_moving_to_fixed.tolist(),
            "rotation_deg": rigid.rotation_deg.tolist(),
            "translation_mm": rigid.translation_mm.tolist(),
            "metric": "Mattes mutual information",
            "final_metric": float(rigid.final_metric),
            "iterations": int(rigid.iterations),
            "seconds": round(float(rigid.elapsed_s), 2),
            "stopped_by_budget": bool(rigid.stopped_by_budget),
            "overlap_fraction": round(float(rigid.overlap_fraction), 4),
        },
    }
    files = [(f"REG.{name}.dcm", "registration", "REG", dataset_bytes(write_spatial_registration(
        fixed, moving, rigid, description=f"{moving.modality} to planning CT, rigid, MI {rigid.final_metric:.4f}")))]
    result: RigidResult | DeformableResult = rigid
    if call.deformable:
        deformable = result = register_deformable(fixed, moving, rigid)
        summary["deformable"] = {
            "grid_spacing_mm": float(deformable.settings.grid_spacing_mm),
            "final_metric": float(deformable.final_metric),
            "iterations": int(deformable.iterations),
            "seconds": round(float(deformable.elapsed_s), 2),
            "stopped_by_budget": bool(deformable.stopped_by_budget),
        }
        files.append((f"DREG.{name}.dcm", "registration", "REG", dataset_bytes(write_deformable_registration(
            fixed, moving, deformable,
            description=f"{moving.modality} to planning CT, B-spline, MI {deformable.final_metric:.4f}"))))
        registered = resample_deformed(fixed.volume, moving.volume, deformable)
        how = "rigid + B-spline"
    else:
        registered = resample_to_fixed(fixed.volume, moving.volume, rigid.matrix_moving_to_fixed)
        how = "rigid"
    label = _LABELS.get(moving.modality, moving.modality)
    png = fused_overlay_png(fixed.volume, registered, moving_label=label,
                            title=f"{label} registered to the planning CT ({how}), MI {rigid.final_metric:.3f}")
    if call.rtstructs:
        specs = mapped_structures(call.rtstructs, moving, fixed, result)
        summary["mapped_structures"] = [spec.name for spec in specs]
        files.append((f"RS.{name}.mapped.dcm", "rtstruct", "RTSTRUCT", dataset_bytes(write_rtstruct(
            fixed, specs, label=f"{moving.modality}_MAPPED",
            description=f"contours drawn on {moving.modality} {moving.series_instance_uid}, mapped ({how})"))))
    summary["seconds"] = round(time.monotonic() - started, 2)
    files += [
        (f"fused.{name}.png", "image", "", png),
        (f"registration.{name}.json", "report", "", json.dumps(summary, indent=2).encode()),
    ]
    return artifact(*files)


def mapped_structures(
    rtstructs: tuple[bytes, ...], moving: ImageSeries, fixed: ImageSeries, result: RigidResult | DeformableResult
) -> list[StructureSpec]:
    """The ROIs of every structure set drawn on ``moving``, as masks on the CT's grid.

    Raises
    ------
    RegistrationError
        Two structure sets name the same ROI (which one to plan on would be a guess), or an ROI is
        on another frame than ``moving``'s (``StructureFrameError``).
    """
    specs: list[StructureSpec] = []
    for data in rtstructs:
        specs.extend(map_structures_to_fixed(pydicom.dcmread(io.BytesIO(data)), moving, fixed, result))
    names = [spec.name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RegistrationError(f"ROI(s) {twice} are drawn in more than one structure set on the "
                                f"{moving.modality} series {moving.series_instance_uid}: keep one of each")
    return specs
