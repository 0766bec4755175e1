"""Contours drawn on a registered MR or PET (an RTSTRUCT on its frame) carried onto the planning CT.

Points map exactly through the registration (rigid: the matrix; deformable: the field, inverted
point by point). A structure becomes a mask on the CT grid that the existing RTSTRUCT writer
(:func:`rtgrid.engines.dicomrt.rtstruct.write_rtstruct`) turns into contours on the CT's slices: the
ROI's polygons are rasterized on the moving slices (in-plane supersampled), and every CT voxel
centre is mapped into the moving frame and looks up the structure there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from rtgrid.engines.dicomrt.rtstruct import (
    GENERATION_ALGORITHMS,
    ROI_INTERPRETED_TYPES,
    StructureSpec,
    rasterize_contours,
    read_rtstruct_rois,
    rtstruct_contours,
)
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.registration.deformable import DeformableResult
from rtgrid.engines.registration.errors import RegistrationError
from rtgrid.engines.registration.rigid import RigidResult

Registration = RigidResult | DeformableResult
DEFAULT_COLOR = (255, 0, 255)
MARGIN_MM = 10.0
"""CT voxels this far around a structure's mapped polygons are tested."""


class StructureFrameError(RegistrationError):
    """An RTSTRUCT's ROI is not drawn on the frame of reference the registration maps from."""


def map_points_to_fixed(points_mm: np.ndarray, result: Registration) -> np.ndarray:
    """Map ``(N, 3)`` moving-frame LPS points (mm) to the CT frame.

    Parameters
    ----------
    points_mm : np.ndarray
        Points in the moving image's patient coordinates (e.g. contour vertices drawn on the MR).
    result : RigidResult or DeformableResult
        The registration (its direction is MOVING -> FIXED).

    Returns
    -------
    np.ndarray
        ``(N, 3)`` points in the CT's patient coordinates (LPS, mm): exact for a rigid result,
        through the inverted displacement field for a deformable one.
    """
    return result.moving_to_fixed(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3))


def map_structures_to_fixed(
    rtstruct: Dataset,
    moving: ImageSeries,
    fixed: ImageSeries,
    result: Registration,
    *,
    names: Sequence[str] | None = None,
    supersample: int = 2,
) -> list[StructureSpec]:
    """Carry the ROIs of an RTSTRUCT drawn on ``moving`` onto the planning CT's grid.

    Parameters
    ----------
    rtstruct : pydicom.Dataset
        An RT Structure Set whose ROIs lie in ``moving``'s Frame of Reference.
    moving : ImageSeries
        The MR or PET the contours were drawn on (registered by ``result``).
    fixed : ImageSeries
        The planning CT.
    result : RigidResult or DeformableResult
        The registration of ``moving`` to ``fixed``.
    names : sequence of str, optional
        The ROIs to map (all when omitted).
    supersample : int
        In-plane supersampling of the moving slices the polygons are rasterized on (1..4).

    Returns
    -------
    list of StructureSpec
        One per ROI, mask on ``fixed.volume``'s grid, ready for ``write_rtstruct(fixed, specs)``.

    Raises
    ------
    StructureFrameError
        An ROI lies in another Frame of Reference than ``moving``, or ``result`` connects other
        frames than ``moving`` -> ``fixed``.
    RegistrationError
        A requested name is not in the structure set, or ``supersample`` is out of range.
    RtStructError
        The structure set cannot be read.
    """
    rigid = result.rigid if isinstance(result, DeformableResult) else result
    if (rigid.moving_frame_of_reference_uid, rigid.fixed_frame_of_reference_uid) != (
        moving.frame_of_reference_uid,
        fixed.frame_of_reference_uid,
    ):
        raise StructureFrameError(
            f"the registration maps frame {rigid.moving_frame_of_reference_uid} -> {rigid.fixed_frame_of_reference_uid}, "
            f"not the {moving.modality}'s {moving.frame_of_reference_uid} -> the CT's {fixed.frame_of_reference_uid}"
        )
    if not 1 <= supersample <= 4:
        raise RegistrationError(f"supersample {supersample} must lie in 1..4")
    rois = read_rtstruct_rois(rtstruct)
    polygons = rtstruct_contours(rtstruct)
    wanted = list(names) if names is not None else [roi.name for roi in rois]
    unknown = sorted(set(wanted) - {roi.name for roi in rois})
    if unknown:
        raise RegistrationError(f"ROI(s) {unknown} are not in the structure set (it holds {[r.name for r in rois]})")
    fine = _supersampled(moving.volume, supersample)
    specs = []
    for roi in rois:
        if roi.name not in wanted:
            continue
        if roi.frame_of_reference_uid != moving.frame_of_reference_uid:
            raise StructureFrameError(
                f"ROI {roi.name!r} is drawn in Frame of Reference {roi.frame_of_reference_uid!r}, not the "
                f"{moving.modality} series' {moving.frame_of_reference_uid!r} that the registration maps from"
            )
        mask = _mapped_mask(polygons[roi.name], fine, fixed.volume, result)
        specs.append(
            StructureSpec(
                name=roi.name,
                mask=mask,
                rt_roi_interpreted_type=roi.interpreted_type if roi.interpreted_type in ROI_INTERPRETED_TYPES else "ORGAN",
                color=roi.color or DEFAULT_COLOR,
                generation_algorithm=(
                    roi.generation_algorithm if roi.generation_algorithm in GENERATION_ALGORITHMS else "MANUAL"
                ),
                description=f"mapped from {moving.modality} frame {moving.frame_of_reference_uid}"[:64],
            )
        )
    return specs


def _supersampled(volume: Volume, factor: int) -> Volume:
    """The same slices with ``factor`` times finer rows and columns (voxel centres stay centred)."""
    spacing = volume.spacing_mm / np.array([factor, factor, 1.0])
    shift = -(factor - 1) / 2 * np.array([spacing[0], spacing[1], 0.0])
    origin = volume.origin_mm + volume.direction @ shift
    nz, ny, nx = volume.shape
    return Volume(np.zeros((nz, ny * factor, nx * factor), dtype=bool), origin, spacing, volume.direction)


def _mapped_mask(polygons: list[np.ndarray], fine: Volume, ct: Volume, result: Registration) -> np.ndarray:
    mask = np.zeros(ct.shape, dtype=bool)
    if not polygons:
        return mask
    on_moving = rasterize_contours(polygons, fine)
    if not on_moving.any():
        return mask
    # Only CT voxels near the mapped polygons can be inside: bound them first.
    vertices = result.moving_to_fixed(np.concatenate(polygons))
    ijk = ct.lps_to_index(vertices)
    margin = MARGIN_MM / ct.spacing_mm
    low = np.maximum(np.floor(ijk.min(axis=0) - margin).astype(int), 0)
    high = np.minimum(np.ceil(ijk.max(axis=0) + margin).astype(int), np.array(ct.shape[::-1]) - 1)
    if np.any(high < low):
        return mask
    i, j, k = np.meshgrid(*[np.arange(lo, hi + 1) for lo, hi in zip(low, high)], indexing="ij")
    box = np.column_stack([i.ravel(), j.ravel(), k.ravel()]).astype(np.float64)
    in_moving = np.rint(fine.lps_to_index(result.fixed_to_moving(ct.index_to_lps(box)))).astype(int)
    upper = np.array(fine.shape[::-1])
    inside = np.all((in_moving >= 0) & (in_moving < upper), axis=1)
    hit = np.zeros(len(box), dtype=bool)
    fi, fj, fk = in_moving[inside].T
    hit[inside] = on_moving[fk, fj, fi]
    mask[box[hit, 2].astype(int), box[hit, 1].astype(int), box[hit, 0].astype(int)] = True
    return mask
