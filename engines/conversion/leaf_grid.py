"""A device's own beamlets: one row per leaf pair, columns along the leaf motion.

A device bixel spans one leaf pair along Y (its height is that pair's width) and one column of
``column_mm`` along X. Its dose influence is the sum of the pencil-beam dose of the square
lattice cells (side ``lattice_mm``, dividing every leaf width and the column width) that tile it,
computed with the device's own kernel by :func:`rtgrid.engines.dose.pencil_beam.compute_beam_dij`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from functools import reduce
from math import gcd

import numpy as np
import scipy.sparse as sp

from rtgrid.engines.dose.beams import Beam, BixelGrid, make_bixel_grid
from rtgrid.engines.dose.pencil_beam import compute_beam_dij
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume

from .device import DeviceModel
from .segment import Violation


class LeafGridError(EngineError, ValueError):
    """A leaf grid cannot be built (sizes that do not tile the leaves, empty target, bad weights)."""


@dataclass(frozen=True)
class LeafGrid:
    """The beamlets of one beam on a device: rows are leaf pairs, columns positions along X.

    Attributes
    ----------
    beam : Beam
    first_pair : int
        Device leaf pair of row 0 (rows are consecutive pairs).
    row_edges_mm : np.ndarray
        ``(n_rows + 1,)`` leaf-pair edges along Y (mm at isocenter), the outer two moved in to the
        Y jaws' opening: a leaf wider than the lattice may reach beyond the field, the jaws trim it.
    column_edges_mm : np.ndarray
        ``(n_cols + 1,)`` column edges along X.
    lattice_mm : float
        Side of the square dose-engine cells that tile every bixel.
    rows, cols : np.ndarray
        Row and column of each bixel, in the dose influence matrix's column order (row-major).
    """

    beam: Beam
    first_pair: int
    row_edges_mm: np.ndarray
    column_edges_mm: np.ndarray
    lattice_mm: float
    rows: np.ndarray
    cols: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_edges_mm.size - 1, self.column_edges_mm.size - 1)

    @property
    def n_bixels(self) -> int:
        return int(self.rows.size)

    @property
    def positions(self) -> np.ndarray:
        """``(n_bixels, 2)`` ``(row, col)`` of each bixel (for the smoothness operator)."""
        return np.stack([self.rows, self.cols], axis=1)

    def to_map(self, weights: np.ndarray) -> np.ndarray:
        """Bixel weights as a ``(n_rows, n_cols)`` fluence map (zero where there is no bixel)."""
        weights = np.asarray(weights, dtype=np.float64).ravel()
        if weights.size != self.n_bixels:
            raise LeafGridError(f"{weights.size} weights given for a leaf grid of {self.n_bixels} bixels")
        fluence = np.zeros(self.shape)
        fluence[self.rows, self.cols] = weights
        return fluence

    def from_map(self, fluence_map: np.ndarray) -> np.ndarray:
        """The bixel weights of a ``(n_rows, n_cols)`` fluence map."""
        return np.asarray(fluence_map, dtype=np.float64)[self.rows, self.cols]


def lattice_mm(device: DeviceModel, column_mm: float) -> float:
    """Largest cell side that divides every leaf width of ``device`` and ``column_mm`` (0.01 mm steps)."""
    values = [int(round(w * 100)) for w in (*device.machine.leaf_widths_mm, column_mm)]
    if min(values) <= 0:
        raise LeafGridError(f"column width must be > 0.01 mm, got {column_mm}")
    return float(Fraction(reduce(gcd, values), 100))


def device_leaf_grid(beam: Beam, target_mask: np.ndarray, dose_grid: Volume, device: DeviceModel,
                     column_mm: float = 5.0, margin_mm: float = 5.0) -> tuple[LeafGrid, list[Violation]]:
    """The device bixels covering a target's beam's-eye-view projection plus a margin.

    Whole leaf pairs are kept: a pair holds bixels in every column where any part of it covers
    the projection. Along Y the Y jaws close on the projection's edges (on the lattice), so the
    outermost pairs' bixels may be narrower than their leaves: with 10 mm leaves a field edge
    would otherwise land up to a leaf width beyond the target and its margin. Parts of the
    projection beyond the leaf bank or the maximum field are not deliverable: they are dropped
    and reported.

    Parameters
    ----------
    beam
    target_mask
        Boolean mask on ``dose_grid``.
    dose_grid
    device
    column_mm
        Column width along X (mm at isocenter); columns start at X = 0.
    margin_mm
        Margin around the projected target.

    Returns
    -------
    grid, violations
        The leaf grid, and ``field_size`` violations for target parts the device cannot reach.

    Raises
    ------
    LeafGridError
        Nothing of the target lies within the device's field.
    """
    lat = lattice_mm(device, column_mm)
    per_column = int(round(column_mm / lat))
    # project without the device's field limit, so that what lies beyond it is reported, not refused
    unlimited = replace(device.machine, max_field_mm=(1e9, 1e9))
    fine = make_bixel_grid(beam, target_mask, dose_grid, unlimited, bixel_mm=lat, margin_mm=margin_mm)
    bounds = device.leaf_boundaries_mm
    y_centres = (fine.iy + 0.5) * lat
    pair = np.searchsorted(bounds, y_centres, side="right") - 1
    col = np.floor_divide(fine.ix, per_column)
    half_x = device.machine.max_field_mm[0] / 2.0
    in_y = (pair >= 0) & (pair < device.n_pairs)
    in_x = (col * column_mm >= -half_x - 1e-6) & ((col + 1) * column_mm <= half_x + 1e-6)
    violations = []
    label = f"beam at gantry {beam.gantry_deg:g} deg"
    if not in_y.all():
        y = y_centres[~in_y]
        violations.append(Violation(
            "field_size", None, None,
            f"{label}: the target projection reaches Y = {y.min() - lat / 2:.1f} .. {y.max() + lat / 2:.1f} mm, beyond the "
            f"leaf bank of {device.id} ({bounds[0]:.1f} .. {bounds[-1]:.1f} mm, maximum field Y "
            f"{device.machine.max_field_mm[1]:g} mm): that part of the target cannot be irradiated",
        ))
    if not in_x.all():
        x = (fine.ix[~in_x] + 0.5) * lat
        violations.append(Violation(
            "field_size", None, None,
            f"{label}: the target projection reaches X = {x.min() - lat / 2:.1f} .. {x.max() + lat / 2:.1f} mm, beyond the "
            f"maximum field X {device.machine.max_field_mm[0]:g} mm of {device.id}",
        ))
    keep = in_y & in_x
    if not keep.any():
        raise LeafGridError(f"{label}: no part of the target projection lies within the field of {device.id}")
    cells = np.unique(np.stack([pair[keep], col[keep]], axis=1), axis=0)
    first, last = int(cells[:, 0].min()), int(cells[:, 0].max())
    c0, c1 = int(cells[:, 1].min()), int(cells[:, 1].max())
    row_edges = bounds[first:last + 2].astype(np.float64)
    row_edges[0] = max(row_edges[0], float(fine.iy[keep].min()) * lat)
    row_edges[-1] = min(row_edges[-1], float(fine.iy[keep].max() + 1) * lat)
    return LeafGrid(
        beam=beam,
        first_pair=first,
        row_edges_mm=row_edges,
        column_edges_mm=np.arange(c0, c1 + 2) * column_mm,
        lattice_mm=lat,
        rows=cells[:, 0] - first,
        cols=cells[:, 1] - c0,
    ), violations


def lattice_cells(grid: LeafGrid, sad_mm: float) -> tuple[BixelGrid, sp.csr_matrix]:
    """The square dose-engine cells tiling a leaf grid's bixels, and the map cells -> bixels.

    Returns
    -------
    cells, aggregation
        A :class:`BixelGrid` of side ``grid.lattice_mm`` and a ``(n_cells, n_bixels)`` 0/1 matrix
        whose column ``b`` marks the cells of bixel ``b``.
    """
    lat = grid.lattice_mm
    row_cells = np.rint(grid.row_edges_mm / lat).astype(np.int64)
    col_cells = np.rint(grid.column_edges_mm / lat).astype(np.int64)
    ix_parts, iy_parts, owner_parts = [], [], []
    for b, (r, c) in enumerate(zip(grid.rows, grid.cols)):
        iy, ix = np.meshgrid(np.arange(row_cells[r], row_cells[r + 1]), np.arange(col_cells[c], col_cells[c + 1]), indexing="ij")
        iy_parts.append(iy.ravel())
        ix_parts.append(ix.ravel())
        owner_parts.append(np.full(iy.size, b))
    ix, iy, owner = np.concatenate(ix_parts), np.concatenate(iy_parts), np.concatenate(owner_parts)
    order = np.lexsort((ix, iy))  # the order BixelGrid keeps its cells in
    cells = BixelGrid(grid.beam, lat, sad_mm, ix, iy)
    aggregation = sp.csr_matrix((np.ones(ix.size, dtype=np.float32), (np.arange(ix.size), owner[order])),
                                shape=(ix.size, grid.n_bixels))
    return cells, aggregation


def device_beam_dij(density: Volume, dose_mask: np.ndarray, grid: LeafGrid, device: DeviceModel,
                    *, compute_device: str = "cpu") -> sp.csr_matrix:
    """Dose influence matrix of one beam's device bixels, with the device's own kernel.

    Parameters
    ----------
    density
        Relative electron density on the dose grid.
    dose_mask
        Voxels that get dose rows.
    grid
        From :func:`device_leaf_grid`.
    device
    compute_device
        ``"cpu"`` or ``"gpu"`` for the dose engine.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_voxels, grid.n_bixels)`` float32, Gy per MU-equivalent bixel weight.
    """
    cells, aggregation = lattice_cells(grid, device.machine.sad_mm)
    dij = compute_beam_dij(density, dose_mask, grid.beam, cells, device.machine, device=compute_device)
    return sp.csr_matrix(dij @ aggregation, dtype=np.float32)


def resample_fluence(bixels: BixelGrid, weights: np.ndarray, grid: LeafGrid) -> tuple[np.ndarray, float]:
    """A square-bixel fluence (e.g. the standard plan's) averaged over each device bixel.

    Both fluences are piecewise constant; a device bixel gets the area-weighted mean of the
    standard fluence over its footprint.

    Parameters
    ----------
    bixels
        The source bixel lattice (same beam).
    weights
        Its weights (MU-equivalent).
    grid
        The device leaf grid.

    Returns
    -------
    device_weights, lost_fraction
        Weights of ``grid``'s bixels, and the fraction of the source fluence (by integral) that no
        device bixel covers.
    """
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.size != bixels.n_bixels:
        raise LeafGridError(f"{weights.size} weights given for {bixels.n_bixels} bixels")
    step = float(Fraction(gcd(int(round(bixels.bixel_mm * 100)), int(round(grid.lattice_mm * 100))), 100))
    per_src = int(round(bixels.bixel_mm / step))
    per_lat = int(round(grid.lattice_mm / step))
    cells, aggregation = lattice_cells(grid, bixels.sad_mm)
    # raster of step-sized cells: source fluence, then the mean over each device bixel's cells
    x0 = min(int(bixels.ix.min()) * per_src, int(cells.ix.min()) * per_lat)
    y0 = min(int(bixels.iy.min()) * per_src, int(cells.iy.min()) * per_lat)
    x1 = max((int(bixels.ix.max()) + 1) * per_src, (int(cells.ix.max()) + 1) * per_lat)
    y1 = max((int(bixels.iy.max()) + 1) * per_src, (int(cells.iy.max()) + 1) * per_lat)
    raster = np.zeros((y1 - y0, x1 - x0))
    for dy in range(per_src):
        for dx in range(per_src):
            raster[bixels.iy * per_src - y0 + dy, bixels.ix * per_src - x0 + dx] = weights
    covered = np.zeros_like(raster, dtype=bool)
    cell_means = np.zeros(cells.n_bixels)
    for dy in range(per_lat):
        for dx in range(per_lat):
            r, c = cells.iy * per_lat - y0 + dy, cells.ix * per_lat - x0 + dx
            cell_means += raster[r, c] / per_lat**2
            covered[r, c] = True
    cells_per_bixel = np.asarray(aggregation.sum(axis=0)).ravel()
    device_weights = (aggregation.T @ cell_means) / cells_per_bixel
    total = raster.sum()
    lost = float(raster[~covered].sum() / total) if total > 0 else 0.0
    return device_weights, lost
