"""The dose grid: CT (or density) and masks resampled onto a coarser regular grid.

The dose grid keeps the CT's orientation and covers the same physical extent (voxel faces of
the CT's outer voxels), with voxel centres ``spacing_mm`` apart, starting half a dose voxel inside
the CT's outer faces.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume


class DoseGridError(EngineError, ValueError):
    """A resampling request is inconsistent (bad spacing, mask not on its grid)."""


def dose_grid_geometry(ct: Volume, spacing_mm: float = 3.0) -> Volume:
    """An empty (``float32`` zeros) volume with the dose grid's geometry for ``ct``."""
    if not spacing_mm > 0:
        raise DoseGridError(f"dose grid spacing must be > 0 mm, got {spacing_mm}")
    extent = np.asarray(ct.shape[::-1], dtype=np.float64) * ct.spacing_mm  # (i, j, k) extents in mm
    n = np.maximum(np.floor(extent / spacing_mm + 1e-6).astype(int), 1)
    # centre the dose grid on the CT's extent along each axis
    first_face = -0.5 * ct.spacing_mm
    offset = first_face + 0.5 * (extent - n * spacing_mm) + 0.5 * spacing_mm  # mm along i, j, k
    origin = ct.origin_mm + ct.direction @ offset
    return Volume(np.zeros((n[2], n[1], n[0]), dtype=np.float32), origin, (spacing_mm,) * 3, ct.direction)


def _interpolate(values: np.ndarray, src: Volume, dst: Volume, mode: str) -> np.ndarray:
    """Trilinear interpolation of ``values`` (on ``src``) at ``dst``'s voxel centres."""
    if np.allclose(src.direction, dst.direction, atol=1e-9):
        # same orientation: index maps are diagonal, no coordinate arrays needed
        scale = (dst.spacing_mm / src.spacing_mm)[::-1]  # (k, j, i)
        offset = (src.direction.T @ (dst.origin_mm - src.origin_mm) / src.spacing_mm)[::-1]
        return ndimage.affine_transform(values, scale, offset, output_shape=dst.shape, order=1, mode=mode, cval=0.0)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in dst.shape), indexing="ij")
    src_ijk = src.lps_to_index(dst.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)))
    coords = np.stack([src_ijk[:, 2], src_ijk[:, 1], src_ijk[:, 0]])
    return ndimage.map_coordinates(values, coords, order=1, mode=mode, cval=0.0).reshape(dst.shape)


def resample_to_dose_grid(ct: Volume, spacing_mm: float = 3.0) -> Volume:
    """Trilinear resampling of a CT (HU) or density volume onto the dose grid.

    Parameters
    ----------
    ct
        Source volume (HU or relative electron density).
    spacing_mm
        Isotropic dose voxel size (default 3 mm).

    Returns
    -------
    Volume
        ``float32`` voxels on :func:`dose_grid_geometry`; outside the source: nearest edge value.
    """
    dst = dose_grid_geometry(ct, spacing_mm)
    values = _interpolate(np.asarray(ct.voxels, dtype=np.float32), ct, dst, "nearest")
    return dst.with_voxels(values.astype(np.float32, copy=False))


def resample_mask(mask: np.ndarray, src: Volume, dst: Volume) -> np.ndarray:
    """A structure mask on ``src``'s grid resampled to ``dst``: a dose voxel belongs to the structure
    when at least half of it does (trilinear interpolation of the mask's occupancy >= 0.5).

    Raises
    ------
    DoseGridError
        ``mask`` is not on ``src``'s grid.
    """
    mask = np.asarray(mask)
    if mask.shape != src.shape:
        raise DoseGridError(f"mask shape {mask.shape} does not match its source grid {src.shape}")
    return _interpolate(mask.astype(np.float32), src, dst, "constant") >= 0.5


def resample_dose(dose_gy: np.ndarray, src: Volume, dst: Volume) -> np.ndarray:
    """A dose on ``src``'s grid (Gy) at ``dst``'s voxel centres: trilinear, 0 Gy outside ``src``.

    Raises
    ------
    DoseGridError
        ``dose_gy`` is not on ``src``'s grid.
    """
    dose_gy = np.asarray(dose_gy, dtype=np.float32)
    if dose_gy.shape != src.shape:
        raise DoseGridError(f"dose shape {dose_gy.shape} does not match its grid {src.shape}")
    return _interpolate(dose_gy, src, dst, "constant").astype(np.float32, copy=False)
