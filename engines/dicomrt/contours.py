"""Binary masks <-> planar contours in DICOM patient coordinates (LPS, mm).

Conventions, chosen so that mask -> contours -> mask is exact:

* A contour is a closed polygon lying in one image slice (``z_index``), its vertices in LPS mm;
  the closing edge from the last vertex back to the first is implicit (DICOM ``CLOSED_PLANAR``).
* Extraction traces the 0.5 iso-line of each slice (marching squares on the zero-padded slice),
  so every vertex sits half-way between a voxel centre inside and one outside. Holes come out
  as separate inner polygons.
* Rasterization marks a voxel when its *centre* lies inside under the even-odd rule, applied to
  all polygons of a slice together: nested polygons cut holes, a polygon inside a hole fills an
  island again. This is the rule the common planning systems use for nested contours.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from skimage.measure import find_contours

from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume


class ContourGeometryError(EngineError, ValueError):
    """A contour or mask does not fit the grid it is used with."""


@dataclass(frozen=True)
class Contour:
    """One closed planar polygon on slice ``z_index`` of a volume.

    Attributes
    ----------
    points_mm : np.ndarray
        ``(N, 3)`` float64 vertices in LPS mm, not repeating the first vertex at the end.
    z_index : int
        Index ``k`` of the slice the polygon lies in.
    """

    points_mm: np.ndarray
    z_index: int


def mask_to_contours(mask: np.ndarray, volume: Volume) -> list[Contour]:
    """Trace the outlines (outer boundaries and holes) of a mask, slice by slice.

    Parameters
    ----------
    mask : np.ndarray
        Boolean ``(nz, ny, nx)`` on ``volume``'s grid.
    volume : Volume
        The grid that gives the LPS geometry.

    Returns
    -------
    list[Contour]
        Polygons ordered by slice; within a slice in marching-squares order.

    Raises
    ------
    ContourGeometryError
        When the mask's shape differs from the volume's.
    """
    if mask.shape != volume.shape:
        raise ContourGeometryError(f"mask shape {mask.shape} does not match the volume grid {volume.shape}")
    contours: list[Contour] = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        rows, cols = np.nonzero(mask[k])
        j0, j1, i0, i1 = rows.min(), rows.max(), cols.min(), cols.max()
        # Crop to the bounding box plus a one-voxel frame of background, so every line closes.
        window = np.zeros((j1 - j0 + 3, i1 - i0 + 3), dtype=np.float32)
        window[1:-1, 1:-1] = mask[k, j0 : j1 + 1, i0 : i1 + 1]
        for line in find_contours(window, 0.5):
            ring = _drop_collinear(line[:-1])  # closed lines repeat their first vertex
            ijk = np.empty((len(ring), 3), dtype=np.float64)
            ijk[:, 0] = ring[:, 1] + (i0 - 1)
            ijk[:, 1] = ring[:, 0] + (j0 - 1)
            ijk[:, 2] = k
            contours.append(Contour(points_mm=volume.index_to_lps(ijk), z_index=int(k)))
    return contours


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """The ring without vertices that lie on the straight line through their neighbours.

    Marching squares puts a vertex on every voxel edge it crosses; along a straight boundary these
    add nothing to the polygon (the even-odd fill is unchanged) but make the RTSTRUCT several
    times larger and slower to write and read.
    """
    if len(ring) < 4:
        return ring
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    return ring[keep] if keep.sum() >= 3 else ring


def contours_to_mask(contours: Sequence[Contour], volume: Volume) -> np.ndarray:
    """Rasterize contours onto ``volume``'s grid with the even-odd rule per slice.

    Parameters
    ----------
    contours : Sequence[Contour]
        Polygons; each is placed on its ``z_index`` slice using only its in-plane coordinates.
    volume : Volume
        Target grid.

    Returns
    -------
    np.ndarray
        Boolean ``(nz, ny, nx)``: voxels whose centre lies inside an odd number of the slice's polygons.

    Raises
    ------
    ContourGeometryError
        When a contour's ``z_index`` lies outside the volume or a polygon has fewer than 3 vertices.
    """
    nz, ny, nx = volume.shape
    mask = np.zeros((nz, ny, nx), dtype=bool)
    by_slice: dict[int, list[np.ndarray]] = defaultdict(list)
    for contour in contours:
        if not 0 <= contour.z_index < nz:
            raise ContourGeometryError(f"contour z_index {contour.z_index} is outside the volume's 0..{nz - 1}")
        if len(contour.points_mm) < 3:
            raise ContourGeometryError(
                f"contour on slice {contour.z_index} has {len(contour.points_mm)} vertices; a polygon needs 3"
            )
        by_slice[contour.z_index].append(volume.lps_to_index(contour.points_mm)[:, :2])
    for k, rings in by_slice.items():
        mask[k] = rasterize_even_odd(rings, ny, nx)
    return mask


def rasterize_even_odd(rings_ij: Sequence[np.ndarray], ny: int, nx: int) -> np.ndarray:
    """Even-odd fill of polygons given in continuous ``(i, j)`` index coordinates of one slice.

    A pixel ``(j, i)`` is inside when a ray from its centre towards ``-i`` crosses the polygons'
    edges an odd number of times. Edges are half-open in ``j`` so a vertex on a pixel row is
    counted once.

    Parameters
    ----------
    rings_ij : Sequence[np.ndarray]
        ``(N, 2)`` arrays of ``(i, j)`` vertices, each implicitly closed.
    ny, nx : int
        Slice size (rows, columns).

    Returns
    -------
    np.ndarray
        Boolean ``(ny, nx)``.
    """
    starts = np.concatenate([np.asarray(r, dtype=np.float64) for r in rings_ij])
    ends = np.concatenate([np.roll(np.asarray(r, dtype=np.float64), -1, axis=0) for r in rings_ij])
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    # Rows j crossed by each edge: ymin <= j < ymax (horizontal edges cross none).
    first_row = np.ceil(np.minimum(y0, y1)).astype(np.int64)
    n_rows = np.ceil(np.maximum(y0, y1)).astype(np.int64) - first_row
    edge = np.repeat(np.arange(len(x0)), n_rows)
    offsets = np.arange(edge.size) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    rows = first_row[edge] + offsets
    x_cross = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    keep = (rows >= 0) & (rows < ny)
    rows, x_cross = rows[keep], x_cross[keep]
    # A crossing at x toggles every pixel centre i >= x; parity of a running sum is the fill.
    first_col = np.clip(np.ceil(x_cross), 0, nx).astype(np.int64)
    toggles = np.bincount(rows * (nx + 1) + first_col, minlength=ny * (nx + 1)).reshape(ny, nx + 1)
    return (np.cumsum(toggles[:, :nx], axis=1) & 1).astype(bool)
