"""The per-slab half of classical contouring: thresholds and neighbourhood operations only.

Every operation here is per slice, except the air opening, which reaches one slice each way
twice (``HALO_SLICES`` = 2). So a slab's core slices come out the same whether the slab is read
from the whole volume or from a halo'd piece of it: all global decisions wait for the merge.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from rtgrid.engines.segmentation.classical import definitions as d
from rtgrid.engines.segmentation.classical.slabs import Slab, SlabPlanError, SlabResult

# In-plane 4-connectivity, no link between slices: 3-D calls then act slice by slice.
IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)
CROSS_3D = ndimage.generate_binary_structure(3, 1)


def contour_slab(
    hu: np.ndarray, spacing_mm: Sequence[float], direction: np.ndarray, slab: Slab
) -> SlabResult:
    """Threshold and clean one slab; return the bit-field of its core slices.

    Parameters
    ----------
    hu : np.ndarray
        ``ct.voxels[slab.halo_start:slab.halo_stop]`` in HU (int16 or float32).
    spacing_mm : Sequence[float]
        ``(di, dj, dk)`` of the CT.
    direction : np.ndarray
        The CT's ``3 x 3`` direction matrix (columns: LPS unit vectors of ``i``, ``j``, ``k``).
    slab : Slab
        Which slab this is.

    Returns
    -------
    SlabResult
        ``uint8`` bits (BODY, AIR, AIRWAY_LIKE, BONE) for slices ``[slab.z_start, slab.z_stop)``.

    Raises
    ------
    SlabPlanError
        When ``hu`` does not hold exactly the slab's halo'd slices.
    """
    if hu.ndim != 3 or hu.shape[0] != slab.halo_stop - slab.halo_start:
        raise SlabPlanError(
            f"slab {slab.index}: hu has shape {hu.shape}, expected "
            f"{slab.halo_stop - slab.halo_start} slices [{slab.halo_start}, {slab.halo_stop})"
        )
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)

    ri, rj = (max(1, int(round(d.BODY_OPENING_MM / step))) for step in spacing[:2])
    body = _fill_holes_in_plane(_open_in_plane(hu > d.BODY_HU, ri, rj))

    air = ndimage.binary_opening(body & (hu < d.AIR_HU), structure=CROSS_3D)
    air = _fill_holes_in_plane(air) & body
    airway_like = _airway_like(air, body, spacing, direction)

    bone = _close_in_plane(body & (hu >= d.BONE_HU), 1, 1)
    bone = _fill_holes_in_plane(bone) & body

    core = slice(slab.z_start - slab.halo_start, slab.z_stop - slab.halo_start)
    bits = body[core].astype(np.uint8) * np.uint8(d.BIT_BODY)
    bits |= air[core].astype(np.uint8) * np.uint8(d.BIT_AIR)
    bits |= airway_like[core].astype(np.uint8) * np.uint8(d.BIT_AIRWAY_LIKE)
    bits |= bone[core].astype(np.uint8) * np.uint8(d.BIT_BONE)
    return SlabResult(slab=slab, bits=bits)


def _open_in_plane(mask: np.ndarray, ri: int, rj: int) -> np.ndarray:
    """Per-slice opening by a ``(2 rj + 1) x (2 ri + 1)`` rectangle (separable running min/max).

    Outside the slab counts as background, like ``ndimage.binary_opening``'s default.
    """
    u = mask.view(np.uint8)
    u = ndimage.minimum_filter1d(u, 2 * ri + 1, axis=2, mode="constant", cval=0)
    u = ndimage.minimum_filter1d(u, 2 * rj + 1, axis=1, mode="constant", cval=0)
    u = ndimage.maximum_filter1d(u, 2 * ri + 1, axis=2, mode="constant", cval=0)
    u = ndimage.maximum_filter1d(u, 2 * rj + 1, axis=1, mode="constant", cval=0)
    return u.view(bool)


def _close_in_plane(mask: np.ndarray, ri: int, rj: int) -> np.ndarray:
    """Per-slice closing by a ``(2 rj + 1) x (2 ri + 1)`` rectangle; outside counts as background."""
    u = mask.view(np.uint8)
    u = ndimage.maximum_filter1d(u, 2 * ri + 1, axis=2, mode="constant", cval=0)
    u = ndimage.maximum_filter1d(u, 2 * rj + 1, axis=1, mode="constant", cval=0)
    u = ndimage.minimum_filter1d(u, 2 * ri + 1, axis=2, mode="constant", cval=0)
    u = ndimage.minimum_filter1d(u, 2 * rj + 1, axis=1, mode="constant", cval=0)
    return u.view(bool)


def _fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill, slice by slice, background regions that do not reach the slice's edge (4-connected)."""
    labels, n = ndimage.label(~mask, structure=IN_PLANE_CROSS)
    reaches_edge = np.zeros(n + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        reaches_edge[edge] = True
    reaches_edge[0] = False  # label 0 is the mask itself
    return ~reaches_edge[labels]


def _airway_like(air: np.ndarray, body: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Small per-slice air components near the body's left-right centre (trachea, bronchi, oesophagus)."""
    labels, n = ndimage.label(air, structure=IN_PLANE_CROSS)
    if n == 0:
        return np.zeros_like(air)
    nz, ny, nx = air.shape
    pixel_area = spacing[0] * spacing[1]
    k_of, j_of, i_of = np.nonzero(labels)
    lab = labels[k_of, j_of, i_of]
    area = np.bincount(lab, minlength=n + 1) * pixel_area
    ci = np.bincount(lab, weights=i_of, minlength=n + 1)
    cj = np.bincount(lab, weights=j_of, minlength=n + 1)
    slice_of = np.zeros(n + 1, dtype=np.int64)
    slice_of[lab] = k_of
    counts = np.maximum(np.bincount(lab, minlength=n + 1), 1)
    ci, cj = ci / counts, cj / counts
    # Body centre per slice, in pixel indices.
    body_n = np.maximum(body.sum(axis=(1, 2)), 1)
    body_ci = body.sum(axis=1) @ np.arange(nx, dtype=np.float64) / body_n
    body_cj = body.sum(axis=2) @ np.arange(ny, dtype=np.float64) / body_n
    # Lateral (LPS x) offset of each component from its slice's body centre.
    offset_x = direction[0, 0] * spacing[0] * (ci - body_ci[slice_of]) + direction[0, 1] * spacing[1] * (
        cj - body_cj[slice_of]
    )
    small_central = (area <= d.AIRWAY_MAX_AREA_MM2) & (np.abs(offset_x) <= d.AIRWAY_MAX_MIDLINE_OFFSET_MM)
    small_central[0] = False
    return small_central[labels]
