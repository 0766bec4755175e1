"""Radiological depth by ray tracing through a density grid, once per beam on a BEV-aligned grid.

Rays leave the source through a regular lattice of points on the isocenter plane; the relative
electron density is sampled (trilinear) at equal steps along the beam axis and integrated from
the source. Dose points then read their radiological depth from this fan-shaped grid by trilinear
interpolation, so the cost is set by the beam's footprint, not by the number of dose voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from rtgrid.engines.dose.beams import BeamAxes
from rtgrid.engines.parallel import ordered_map
from rtgrid.engines.imaging.volume import Volume

SLAB_SAMPLES = 2_000_000
"""Density samples interpolated together (a slab of the grid): bounds the temporary arrays of one slab."""
SLABS_PER_THREAD = 4
"""Slabs per thread at least, so that threads finish their shares of the trace together."""


@dataclass(frozen=True)
class BevDepthGrid:
    """Radiological depth (mm water-equivalent) on a fan grid: ``depth[iz, iy, ix]`` at along-axis
    distance ``z0 + iz * dz`` from the source and iso-plane BEV position
    ``(x0 + ix * dxy, y0 + iy * dxy)``."""

    depth_mm: object  # numpy or cupy array
    z0_mm: float
    dz_mm: float
    x0_mm: float
    y0_mm: float
    dxy_mm: float


def _volume_z_range(density: Volume, axes: BeamAxes) -> tuple[float, float]:
    corners = np.array([[i, j, k] for i in (-0.5, density.shape[2] - 0.5)
                        for j in (-0.5, density.shape[1] - 0.5) for k in (-0.5, density.shape[0] - 0.5)])
    z = (density.index_to_lps(corners) - axes.source_mm) @ axes.beam_dir
    return float(z.min()), float(z.max())


def bev_radiological_depth(xp: ModuleType, ndi: ModuleType, density_voxels, density: Volume, axes: BeamAxes,
                           sad_mm: float, x_range_mm: tuple[float, float], y_range_mm: tuple[float, float],
                           z_max_mm: float, *, workers: int = 1) -> BevDepthGrid:
    """Integrate relative electron density along the rays of one beam.

    Parameters
    ----------
    xp, ndi
        Array module and its ``ndimage`` (numpy + scipy.ndimage, or cupy + cupyx.scipy.ndimage).
    density_voxels
        ``density.voxels`` as an ``xp`` float32 array (relative electron density).
    density
        Geometry of the density grid.
    axes
        The beam frame.
    sad_mm
        Source-axis distance.
    x_range_mm, y_range_mm
        Iso-plane BEV extent the dose points occupy.
    z_max_mm
        Largest along-axis distance of a dose point.
    workers
        Threads over slabs of the grid (numpy only; each slab is computed as on one thread, so
        the depths are bitwise the same for every count).
    """
    step = float(np.min(density.spacing_mm))
    dxy = step
    dz = step / 2.0
    z_in, _ = _volume_z_range(density, axes)
    z0 = max(z_in, 1.0)
    nz = int(np.ceil((z_max_mm - z0) / dz)) + 2
    # lattice anchored at multiples of dxy, so any subset of dose points reads identical depths
    x0 = (np.floor(x_range_mm[0] / dxy) - 1.0) * dxy
    y0 = (np.floor(y_range_mm[0] / dxy) - 1.0) * dxy
    nx = int(np.ceil((x_range_mm[1] - x0) / dxy)) + 2
    ny = int(np.ceil((y_range_mm[1] - y0) / dxy)) + 2
    xs = xp.asarray(x0 + dxy * np.arange(nx))
    ys = xp.asarray(y0 + dxy * np.arange(ny))
    # LPS -> continuous (k, j, i) index: the affine map of the density grid
    to_index = np.linalg.inv(density.direction * density.spacing_mm[None, :])  # rows: i, j, k
    src = xp.asarray(to_index @ (axes.source_mm - density.origin_mm))
    w = xp.asarray(to_index @ axes.beam_dir)
    u = xp.asarray(to_index @ axes.x_bev) / sad_mm
    v = xp.asarray(to_index @ axes.y_bev) / sad_mm
    lateral = xs[None, :, None] * u + ys[:, None, None] * v  # (ny, nx, 3) per mm of z
    path_per_dz = xp.sqrt(1.0 + (xs[None, :] ** 2 + ys[:, None] ** 2) / sad_mm**2) * dz
    rho = xp.empty((nz, ny, nx), dtype=xp.float32)
    threads = workers if xp is np else 1
    # at least SLABS_PER_THREAD slabs per thread: two slabs of 165 and 54 planes left one of two
    # threads idle for most of a TG-119 beam's trace
    chunk = max(1, min(int(SLAB_SAMPLES // (nx * ny)), -(-nz // (SLABS_PER_THREAD * threads))))

    def sample_slab(start: int) -> None:  # slabs of z write disjoint planes
        zs = xp.asarray(z0 + dz * np.arange(start, min(nz, start + chunk)))
        pts = src + zs[:, None, None, None] * (w + lateral[None])  # (c, ny, nx, 3) in (i, j, k)
        coords = xp.stack([pts[..., 2].ravel(), pts[..., 1].ravel(), pts[..., 0].ravel()])
        rho[start:start + zs.size] = ndi.map_coordinates(
            density_voxels, coords, order=1, mode="grid-constant", cval=0.0).reshape(zs.size, ny, nx)

    ordered_map(sample_slab, range(0, nz, chunk), threads)
    # trapezoid rule along each ray, integrated from the first sample (outside the volume: zero;
    # grid-constant interpolation puts the density edge on the outer voxel faces); rays are
    # independent, so threads take bands of rows (y)
    depth = xp.zeros((nz, ny, nx), dtype=xp.float32)
    band = -(-ny // threads)

    def integrate_band(y0: int) -> None:
        rows = slice(y0, y0 + band)
        depth[1:, rows] = xp.cumsum(0.5 * (rho[1:, rows] + rho[:-1, rows]), axis=0,
                                    dtype=xp.float64) * path_per_dz[None, rows]

    ordered_map(integrate_band, range(0, ny, band), threads)
    return BevDepthGrid(depth, z0, dz, x0, y0, dxy)


def sample_depth(xp: ModuleType, ndi: ModuleType, grid: BevDepthGrid, x_mm, y_mm, z_mm):
    """Radiological depth (mm) at iso-plane BEV points ``(x, y)`` and along-axis distances ``z``."""
    coords = xp.stack([(z_mm - grid.z0_mm) / grid.dz_mm, (y_mm - grid.y0_mm) / grid.dxy_mm, (x_mm - grid.x0_mm) / grid.dxy_mm])
    return ndi.map_coordinates(grid.depth_mm, coords, order=1, mode="nearest")
