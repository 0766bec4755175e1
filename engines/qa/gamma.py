"""3-D gamma analysis of two dose distributions on one grid (AAPM TG-218 style).

For every reference voxel at or above the low-dose threshold,

    gamma(r) = min over r' of sqrt(|r' - r|^2 / DTA^2 + (D_eval(r') - D_ref(r))^2 / dD^2)

with ``D_eval`` trilinearly interpolated between voxel centres, ``DTA`` the distance criterion
and ``dD`` the dose criterion: a percentage of the reference maximum (global) or of ``D_ref(r)``
(local). Candidate points ``r'`` lie on concentric spheres around ``r`` whose radii step by
``DTA / interp_fraction`` up to ``max_gamma * DTA``, sampled no coarser than that step along each
sphere (the sampling of pymedphys' gamma, after Wendling et al. 2007, Med. Phys. 34:1647); points
outside the evaluated grid are not candidates.

The search visits the spheres outwards and stops for a voxel as soon as no farther sphere can
lower its gamma. Two rigorous lower bounds for the trilinear field decide that: interpolated
values never leave the range of the voxel values within reach, and never change faster than the
steepest voxel edge within reach (so the mismatch at distance ``s`` is at least the mismatch at
the voxel minus slope x ``s``). Work is vectorised over the voxels still searching; sphere points
that fall in one voxel cell share one gather of its 8 corner values and one small matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtgrid.engines.errors import EngineError

_OUTSIDE = np.float32(1e18)
"""Evaluated dose beyond the grid: finite (no NaN from zero interpolation weights), never a match."""
_CHUNK_ELEMENTS = 1 << 21
"""Voxels x offsets handled per vectorised step (bounds temporary memory to tens of MB)."""


class GammaError(EngineError, ValueError):
    """Gamma cannot be computed as asked; the message names the argument and the value."""


@dataclass(frozen=True)
class GammaResult:
    """Outcome of a gamma comparison.

    Attributes
    ----------
    pass_rate_pct : float
        Percentage of evaluated voxels with gamma <= 1.
    gamma : np.ndarray
        ``float32``, the reference grid's shape; NaN below the threshold; values of
        ``max_gamma`` mean "at least ``max_gamma``".
    n_evaluated : int
        Number of voxels at or above the threshold.
    dose_percent, distance_mm, threshold_percent, global_norm, max_gamma
        The criteria used.
    """

    pass_rate_pct: float
    gamma: np.ndarray
    n_evaluated: int
    dose_percent: float
    distance_mm: float
    threshold_percent: float
    global_norm: bool
    max_gamma: float


def gamma_3d(
    reference_gy: np.ndarray,
    evaluated_gy: np.ndarray,
    spacing_mm: tuple[float, float, float] | np.ndarray,
    *,
    dose_percent: float = 3.0,
    distance_mm: float = 2.0,
    threshold_percent: float = 10.0,
    global_norm: bool = True,
    max_gamma: float = 2.0,
    interp_fraction: int = 10,
) -> GammaResult:
    """Gamma index of ``evaluated_gy`` against ``reference_gy`` on the same grid.

    Parameters
    ----------
    reference_gy, evaluated_gy : np.ndarray
        Doses in Gy, shape ``(nz, ny, nx)`` (``voxels[k, j, i]`` as in ``Volume``), finite.
    spacing_mm : (di, dj, dk)
        Column, row and slice spacing in mm (``Volume.spacing_mm``).
    dose_percent : float
        Dose criterion in percent: of the reference maximum (global) or of the local reference dose.
    distance_mm : float
        Distance-to-agreement criterion.
    threshold_percent : float
        Reference voxels below this percentage of the reference maximum are not evaluated.
    global_norm : bool
        Global (TG-218 default) or local dose normalisation.
    max_gamma : float
        Search radius ``max_gamma * distance_mm``; larger gammas are reported as ``max_gamma``.
    interp_fraction : int
        Lattice pitch is ``distance_mm / interp_fraction`` (10: the usual recommendation).

    Returns
    -------
    GammaResult

    Raises
    ------
    GammaError
        Shapes that differ or are not 3-D, non-finite doses, a reference without positive dose,
        or a criterion, spacing or search setting that is not positive.
    """
    reference = np.asarray(reference_gy, dtype=np.float64)
    evaluated = np.asarray(evaluated_gy, dtype=np.float64)
    if reference.ndim != 3 or reference.shape != evaluated.shape:
        raise GammaError(f"doses must be 3-D on one grid; got shapes {reference.shape} and {evaluated.shape}")
    for name, dose in (("reference_gy", reference), ("evaluated_gy", evaluated)):
        if not np.all(np.isfinite(dose)):
            raise GammaError(f"{name} holds {int(np.count_nonzero(~np.isfinite(dose)))} NaN or infinite values")
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.size != 3 or not np.all(spacing > 0):
        raise GammaError(f"spacing_mm must be three positive values (di, dj, dk), got {spacing.tolist()}")
    for name, value in (("dose_percent", dose_percent), ("distance_mm", distance_mm), ("max_gamma", max_gamma)):
        if not (np.isfinite(value) and value > 0):
            raise GammaError(f"{name} must be > 0, got {value}")
    if not 0 <= threshold_percent < 100:
        raise GammaError(f"threshold_percent must be in [0, 100), got {threshold_percent}")
    if int(interp_fraction) != interp_fraction or interp_fraction < 1:
        raise GammaError(f"interp_fraction must be a positive integer, got {interp_fraction}")
    norm_gy = float(reference.max())
    if not norm_gy > 0:
        raise GammaError(f"reference_gy has no positive dose (maximum {norm_gy} Gy)")

    axis_spacing = spacing[::-1]  # array axes are (k, j, i)
    radius_mm = max_gamma * distance_mm
    margin = np.ceil(radius_mm / axis_spacing).astype(int) + 1
    padded = np.pad(evaluated.astype(np.float32), [(m, m) for m in margin], constant_values=_OUTSIDE)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1], dtype=np.int64)
    padded_flat = padded.ravel()

    selected = reference >= threshold_percent / 100.0 * norm_gy
    if not global_norm:
        selected &= reference > 0
    kji = np.argwhere(selected)
    flat = (kji + margin) @ strides
    ref_values = reference[selected].astype(np.float32)
    dose_tol = (
        np.full(ref_values.shape, dose_percent / 100.0 * norm_gy, dtype=np.float32)
        if global_norm
        else (dose_percent / 100.0 * ref_values).astype(np.float32)
    )
    inv_tol2 = 1.0 / dose_tol**2
    # Two lower bounds on gamma for every offset at scaled distance >= s, both rigorous for the
    # trilinear field: evaluated values within reach lie in [local min, local max], and they
    # change by at most G (the largest voxel-edge slope within reach) per mm.
    window = tuple(int(2 * m + 1) for m in margin)
    local_min = ndimage.minimum_filter(evaluated, size=window, mode="nearest")[selected]
    local_max = ndimage.maximum_filter(evaluated, size=window, mode="nearest")[selected]
    range_gap = np.maximum.reduce([np.zeros_like(local_min), local_min - ref_values, ref_values - local_max])
    range_bound2 = (range_gap**2 * inv_tol2).astype(np.float32)
    slope2 = np.zeros(reference.shape)
    for a in range(3):
        edge_slope = np.abs(np.diff(evaluated, axis=a)) / axis_spacing[a]
        edge_slope = np.concatenate([edge_slope, np.take(edge_slope, [-1], axis=a)], axis=a)
        slope2 += ndimage.maximum_filter(edge_slope, size=window, mode="nearest") ** 2
    # In units of the criteria: dose mismatch at zero distance, and slope per unit scaled distance.
    mismatch = (np.abs(evaluated[selected] - reference[selected]) / dose_tol).astype(np.float32)
    slope = (np.sqrt(slope2[selected]) * distance_mm / dose_tol).astype(np.float32)
    closest = slope * mismatch / (1.0 + slope**2)  # where s^2 + (mismatch - slope s)^2 is least

    def lower_bound2(scaled_distance: float) -> np.ndarray:
        s = np.maximum(np.float32(scaled_distance), closest)
        slope_bound2 = s**2 + np.maximum(mismatch - slope * s, 0.0) ** 2
        return np.maximum(slope_bound2, np.float32(scaled_distance**2) + range_bound2)

    best2 = np.full(ref_values.shape, np.float32(max_gamma**2))
    step_mm = distance_mm / interp_fraction
    for shell_distance, groups in _shells(axis_spacing, strides, step_mm, radius_mm, distance_mm):
        active = np.flatnonzero(best2 > lower_bound2(shell_distance))
        if active.size == 0:
            break
        base = flat[active][:, None]
        shell_best2 = best2[active]
        for corner_index, weights, offset_d2 in groups:
            # Offsets that share a voxel cell share its 8 corner values: one gather, one matmul.
            corners = padded_flat[base + corner_index[None, :]]
            interpolated = corners @ weights
            interpolated -= ref_values[active][:, None]
            candidate = offset_d2[None, :] + interpolated**2 * inv_tol2[active][:, None]
            np.minimum(shell_best2, candidate.min(axis=1), out=shell_best2)
        best2[active] = shell_best2

    gamma = np.full(reference.shape, np.nan, dtype=np.float32)
    values = np.minimum(np.sqrt(best2), np.float32(max_gamma))
    gamma[selected] = values
    n_evaluated = int(values.size)
    pass_rate = 100.0 * np.count_nonzero(values <= 1.0) / n_evaluated if n_evaluated else float("nan")
    return GammaResult(
        pass_rate_pct=float(pass_rate),
        gamma=gamma,
        n_evaluated=n_evaluated,
        dose_percent=float(dose_percent),
        distance_mm=float(distance_mm),
        threshold_percent=float(threshold_percent),
        global_norm=bool(global_norm),
        max_gamma=float(max_gamma),
    )


def _shells(axis_spacing: np.ndarray, strides: np.ndarray, step_mm: float, radius_mm: float, distance_mm: float):
    """Yield, shell by shell outwards, the shell's scaled distance and its points grouped by voxel
    cell: ``(corner_index (8,), weights (8, M), scaled_d2 (M,))`` with flat corner offsets in the
    padded array and trilinear weights of the ``M`` points in that cell."""
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    corner_flat = corners @ strides
    for n in range(int(np.floor(radius_mm / step_mm + 1e-9)) + 1):
        radius = n * step_mm
        offsets = _sphere_points(radius, step_mm)  # mm along (k, j, i)
        # Rounded so that sin/cos noise (1e-16) never puts a sliver of weight on a voxel beyond
        # the grid, whose padding value would then swamp the interpolation.
        fractional = np.round(offsets / axis_spacing, 9)
        cell = np.floor(fractional)
        t = fractional - cell
        # (M, 8) trilinear weights; a corner across an exact voxel plane gets weight 0.
        weights = np.prod(np.where(corners[None, :, :] == 1, t[:, None, :], 1.0 - t[:, None, :]), axis=2)
        cell_flat = (cell @ strides).astype(np.int64)
        scaled_d2 = np.float32((radius / distance_mm) ** 2)
        groups = []
        for cell_index in np.unique(cell_flat):
            members = cell_flat == cell_index
            groups.append(
                (cell_index + corner_flat, weights[members].T.astype(np.float32),
                 np.full(int(members.sum()), scaled_d2, dtype=np.float32))
            )
        yield radius / distance_mm, groups


def _sphere_points(radius_mm: float, step_mm: float) -> np.ndarray:
    """``(M, 3)`` points on a sphere, no gap between neighbours wider than ``step_mm``: rings of
    constant polar angle (about the last axis) at most ``step_mm`` apart along the meridian, and
    points at most ``step_mm`` apart along each ring (the sampling of pymedphys' gamma)."""
    if radius_mm == 0:
        return np.zeros((1, 3))
    polar = np.linspace(0.0, np.pi, int(np.ceil(np.pi * radius_mm / step_mm)) + 1)
    points = []
    for phi in polar:
        count = int(np.ceil(2 * np.pi * radius_mm * np.sin(phi) / step_mm)) + 1
        azimuth = np.linspace(0.0, 2 * np.pi, count + 1)[:-1]
        points.append(
            np.column_stack([
                radius_mm * np.sin(phi) * np.cos(azimuth),
                radius_mm * np.sin(phi) * np.sin(azimuth),
                np.full(count, radius_mm * np.cos(phi)),
            ])
        )
    return np.concatenate(points)
