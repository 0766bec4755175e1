"""Semi-automatic delineation: complete a structure from a few drawn slices or a seed.

- :func:`interpolate_slices`: shape-based interpolation (Raya & Udupa 1990; Herman et al. 1992):
  each drawn slice becomes a signed distance map, maps are interpolated linearly between drawn
  slices, and the zero level set is the completed contour.
- :func:`region_grow`: the connected region of voxels within an HU range around a seed point
  (LPS mm), bounded by a radius; or the largest such region inside a box.
- :func:`refine_with_model`: snap a rough mask to a deep model's prediction of the same
  structure, within a band around the user's contour.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume


class AssistInputError(EngineError, ValueError):
    """The drawn slices, seed or box cannot define a structure."""


def _signed_distance(mask: np.ndarray, spacing_yx: tuple[float, float], empty_value: float) -> np.ndarray:
    """Negative inside, positive outside; ±d to the nearest voxel of the other side (mm)."""
    if not mask.any():
        return np.full(mask.shape, empty_value, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_yx)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_yx)
    return (outside - inside).astype(np.float32)


def interpolate_slices(
    partial: Mapping[int, np.ndarray],
    shape: Sequence[int],
    spacing_mm: Sequence[float] = (1.0, 1.0),
) -> np.ndarray:
    """Complete a structure drawn on some axial slices by signed-distance interpolation.

    Slices between two drawn slices get the linear blend of their signed distance maps;
    slices outside the drawn range stay empty (a structure ends where the user stopped drawing).
    A drawn slice may be empty, which tapers the structure towards it.

    Parameters
    ----------
    partial : mapping of int to np.ndarray
        ``{z_index: 2-D mask (ny, nx)}`` for the drawn slices.
    shape : sequence of int
        ``(nz, ny, nx)`` of the output.
    spacing_mm : sequence of float
        ``(di, dj[, dk])`` in mm; only the in-plane values matter (when pixels are not square).

    Returns
    -------
    np.ndarray
        Boolean ``(nz, ny, nx)`` mask; drawn slices are reproduced exactly.

    Raises
    ------
    AssistInputError
        No slice drawn, a slice index outside ``0..nz-1``, or a slice of the wrong shape.
    """
    nz, ny, nx = (int(v) for v in shape)
    if not partial:
        raise AssistInputError("no drawn slice: interpolation needs at least one")
    for z, mask in partial.items():
        if not 0 <= int(z) < nz:
            raise AssistInputError(f"drawn slice index {z} is outside 0..{nz - 1}")
        if np.shape(mask) != (ny, nx):
            raise AssistInputError(f"drawn slice {z} has shape {np.shape(mask)}, expected {(ny, nx)}")
    result = np.zeros((nz, ny, nx), dtype=bool)
    z_drawn = sorted(int(z) for z in partial)
    # An empty slice is "far outside": farther than any distance within the slice.
    spacing_yx = (float(spacing_mm[1]), float(spacing_mm[0]))
    far = float(np.hypot(ny * spacing_yx[0], nx * spacing_yx[1]))
    maps = {z: _signed_distance(np.asarray(partial[z], dtype=bool), spacing_yx, far) for z in z_drawn}
    for z in z_drawn:
        result[z] = np.asarray(partial[z], dtype=bool)
    for z0, z1 in zip(z_drawn[:-1], z_drawn[1:]):
        for z in range(z0 + 1, z1):
            weight = (z - z0) / (z1 - z0)
            result[z] = (1.0 - weight) * maps[z0] + weight * maps[z1] < 0
    return result


def complete_drawn_structure(drawn: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, list[int]]:
    """Complete a structure drawn on some slices of a volume (e.g. rasterised from an RTSTRUCT).

    Parameters
    ----------
    drawn : np.ndarray
        Boolean ``(nz, ny, nx)``: the user's contours; slices without any are "not drawn".
    spacing_mm : sequence of float
        ``(di, dj, dk)`` in mm.

    Returns
    -------
    (np.ndarray, list of int)
        The completed mask (:func:`interpolate_slices` between the drawn slices) and the indices
        of the drawn slices.

    Raises
    ------
    AssistInputError
        When nothing is drawn.
    """
    drawn = np.asarray(drawn, dtype=bool)
    slices = [int(z) for z in np.flatnonzero(drawn.any(axis=(1, 2)))]
    if not slices:
        raise AssistInputError("the structure has no drawn contour")
    return interpolate_slices({z: drawn[z] for z in slices}, drawn.shape, spacing_mm), slices


def _index_of(volume: Volume, point_mm: Sequence[float], what: str) -> tuple[int, int, int]:
    """Nearest voxel ``(k, j, i)`` of an LPS point, or AssistInputError when outside the volume."""
    i, j, k = np.rint(volume.lps_to_index(np.asarray(point_mm, dtype=np.float64))).astype(int)
    nz, ny, nx = volume.shape
    if not (0 <= i < nx and 0 <= j < ny and 0 <= k < nz):
        raise AssistInputError(f"{what} {list(point_mm)} mm (voxel i={i}, j={j}, k={k}) lies outside the volume {volume.shape}")
    return int(k), int(j), int(i)


def region_grow(
    volume: Volume,
    seed_mm: Sequence[float] | None,
    hu_range: tuple[float, float],
    max_radius_mm: float,
    *,
    box_mm: tuple[Sequence[float], Sequence[float]] | None = None,
) -> np.ndarray:
    """The face-connected region of voxels with HU in ``hu_range``, from a seed or in a box.

    Parameters
    ----------
    volume : Volume
        CT in HU.
    seed_mm : sequence of float or None
        LPS seed point (mm). The region contains the seed's voxel and is limited to voxels whose
        centres lie within ``max_radius_mm`` of the seed. ``None`` when ``box_mm`` is given.
    hu_range : (float, float)
        Inclusive HU interval.
    max_radius_mm : float
        Growth limit around the seed (mm); ignored with a box.
    box_mm : (corner, corner), optional
        Two opposite LPS corners (mm). The result is the largest face-connected in-range region
        inside the box.

    Returns
    -------
    np.ndarray
        Boolean mask on the volume's grid.

    Raises
    ------
    AssistInputError
        Neither or both of seed and box given, seed or box outside the volume, seed HU outside
        the range, or no in-range voxel in the box.
    """
    low, high = float(hu_range[0]), float(hu_range[1])
    if low > high:
        raise AssistInputError(f"hu_range {hu_range} is empty (low > high)")
    if (seed_mm is None) == (box_mm is None):
        raise AssistInputError("give exactly one of seed_mm and box_mm")
    nz, ny, nx = volume.shape
    mask = np.zeros(volume.shape, dtype=bool)
    face = ndimage.generate_binary_structure(3, 1)
    if box_mm is not None:
        corners = [_index_of(volume, corner, "box corner") for corner in box_mm]
        box = tuple(slice(min(a, b), max(a, b) + 1) for a, b in zip(*corners))
        hu = volume.voxels[box]
        in_range = (hu >= low) & (hu <= high)
        components, count = ndimage.label(in_range, structure=face)
        if count == 0:
            raise AssistInputError(f"no voxel in HU range {hu_range} inside box {box_mm} mm")
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask[box] = components == int(sizes.argmax())
        return mask
    if max_radius_mm <= 0:
        raise AssistInputError(f"max_radius_mm must be positive, got {max_radius_mm}")
    k, j, i = _index_of(volume, seed_mm, "seed")
    seed_hu = float(volume.voxels[k, j, i])
    if not low <= seed_hu <= high:
        raise AssistInputError(f"seed {list(seed_mm)} mm has {seed_hu:g} HU, outside the range {hu_range}")
    # Only the box around the sphere of max_radius_mm can be reached.
    reach = np.ceil(max_radius_mm / volume.spacing_mm).astype(int)  # (i, j, k)
    box = (
        slice(max(0, k - reach[2]), min(nz, k + reach[2] + 1)),
        slice(max(0, j - reach[1]), min(ny, j + reach[1] + 1)),
        slice(max(0, i - reach[0]), min(nx, i + reach[0] + 1)),
    )
    kk, jj, ii = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    offsets = np.stack([ii - i, jj - j, kk - k], axis=-1) * volume.spacing_mm
    within = np.einsum("...c,...c->...", offsets, offsets) <= max_radius_mm**2
    hu = volume.voxels[box]
    candidates = within & (hu >= low) & (hu <= high)
    components, _ = ndimage.label(candidates, structure=face)
    mask[box] = components == components[k - box[0].start, j - box[1].start, i - box[2].start]
    return mask


def refine_with_model(user_mask: np.ndarray, predicted_mask: np.ndarray, spacing_mm: Sequence[float], band_mm: float) -> np.ndarray:
    """Snap a rough user mask to a model's prediction of the same structure.

    Within ``band_mm`` of the user's contour the model decides; deeper inside the user's mask
    the user's mask is kept; beyond the band nothing is added. The user stays in control of
    where the structure is, the model of where exactly its border runs.

    Parameters
    ----------
    user_mask, predicted_mask : np.ndarray
        Boolean ``(nz, ny, nx)`` masks on the same grid (the prediction e.g. from
        ``SegmentationRunner.predict_volume(ct).voxels == class_index``).
    spacing_mm : sequence of float
        ``(di, dj, dk)`` in mm.
    band_mm : float
        Half-width of the band around the user's contour (mm).

    Returns
    -------
    np.ndarray
        Boolean refined mask.
    """
    user_mask = np.asarray(user_mask, dtype=bool)
    predicted_mask = np.asarray(predicted_mask, dtype=bool)
    if user_mask.shape != predicted_mask.shape:
        raise AssistInputError(f"user mask shape {user_mask.shape} differs from predicted mask shape {predicted_mask.shape}")
    if band_mm <= 0:
        raise AssistInputError(f"band_mm must be positive, got {band_mm}")
    sampling = np.asarray(spacing_mm, dtype=np.float64)[::-1]
    depth_inside = ndimage.distance_transform_edt(user_mask, sampling=sampling)
    distance_outside = ndimage.distance_transform_edt(~user_mask, sampling=sampling)
    core = depth_inside > band_mm
    band = (depth_inside > 0) & ~core | (distance_outside > 0) & (distance_outside <= band_mm)
    return core | (band & predicted_mask)
