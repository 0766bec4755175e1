"""The photon pencil-beam dose influence matrix (voxels x bixels, sparse CSR, float32).

Per beam: every dose voxel is projected into the beam's eye view (iso-plane ``X, Y`` and
along-axis distance ``z``); its radiological depth comes from one ray-traced BEV grid per beam
(:mod:`rtgrid.engines.dose.raytrace`); the finite-size pencil-beam kernel
(:mod:`rtgrid.engines.dose.kernel`, inverse square included) is evaluated for the bixels whose
centres lie within the lateral cutoff of the centre of the bixel-lattice cell that holds the
voxel's projection (the list of bixels is made once per cell, so the stored pairs are exactly the
matrix's nonzeros). The kernel is separable in ``X`` and ``Y``: per voxel, the 1-D overlaps of the
nearby bixel columns and rows are computed once (erf at shared edges) and each stored entry is a
sum over the kernel components of one product. No dense voxels x bixels array is ever made; the
CPU path is numpy (with torch's vectorised erf), the GPU path the same code on cupy. On the CPU
the ray trace and the voxel blocks run on threads (:mod:`rtgrid.engines.parallel`,
``RTGRID_ENGINE_THREADS``); every block is computed as on one thread, so the results are bitwise
the same for any thread count.

Unit of the matrix: Gy per unit bixel weight, where weight 1 on every bixel of a 10 x 10 cm2
open field at SSD 100 cm gives the machine's MU calibration (1 cGy = 0.01 Gy) at the calibration
depth (dmax) in water, i.e. a bixel weight is an MU-equivalent fluence. Beams are independent
shards: compute them anywhere and join them with :func:`assemble_dij`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.sparse as sp

from rtgrid.engines.dose.beams import Beam, BixelGrid, beam_axes
from rtgrid.engines.dose.kernel import component_amplitudes, component_sigmas_mm, open_field_axis_dose
from rtgrid.engines.dose.machine import MachineModel
from rtgrid.engines.dose.raytrace import BevDepthGrid, bev_radiological_depth, sample_depth
from rtgrid.engines.errors import EngineError
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.parallel import blas_threads, engine_threads, ordered_map

BLOCK_ELEMENTS = 2_000_000
"""Voxel-bixel pairs evaluated together: bounds the temporary arrays of one block."""


class DoseEngineError(EngineError, ValueError):
    """Inputs of the dose engine are inconsistent (grid, mask, bixels, device)."""


def calibration_constant(machine: MachineModel) -> float:
    """Gy per unit kernel dose so that the calibration field gives the MU calibration at its depth."""
    ref = open_field_axis_dose(machine.kernel, machine.calibration_field_mm,
                               np.array([machine.calibration_depth_mm]), machine.calibration_ssd_mm, machine.sad_mm)[0]
    return machine.mu_calibration_cgy_per_mu * 0.01 / float(ref)


def _backend(device: str) -> tuple[ModuleType, ModuleType, Callable]:
    """The array module, its ``ndimage`` and the :func:`_overlaps` function of ``device``."""
    if device == "cpu":
        import torch  # its vectorised erf is several times faster than scipy.special.erf
        from scipy import ndimage

        def overlaps(edges_mm: np.ndarray, inv: np.ndarray) -> np.ndarray:
            # _overlaps in torch: the same float32 operations (bitwise the same result) in fewer
            # passes over memory than numpy's temporaries (15 % of a full-kernel dose)
            e = torch.special.erf(torch.from_numpy(edges_mm)[:, None, :] * torch.from_numpy(inv)[:, :, None])
            return (e[:, :, 1:] - e[:, :, :-1]).mul_(0.5).numpy()

        return np, ndimage, overlaps
    if device in ("gpu", "cuda"):
        try:
            import cupy
            from cupyx.scipy import ndimage as cu_ndimage
            from cupyx.scipy.special import erf as cu_erf
        except ImportError as exc:
            raise DoseEngineError(f"device={device!r} needs cupy (pip install 'rtgrid[gpu]'): {exc}") from exc
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise DoseEngineError(f"device={device!r}: cupy found no CUDA device")
        return cupy, cu_ndimage, lambda edges_mm, inv: _overlaps(cu_erf, edges_mm, inv)
    raise DoseEngineError(f"device must be 'cpu' or 'gpu', got {device!r}")


def _to_host(xp: ModuleType, a) -> np.ndarray:
    return a if xp is np else xp.asnumpy(a)


def compute_beam_dij(density: Volume, dose_mask: np.ndarray, beam: Beam, bixels: BixelGrid, machine: MachineModel,
                     *, device: str = "cpu", lateral_cutoff_mm: float | None = None,
                     workers: int | None = None) -> sp.csr_matrix:
    """Dose influence matrix of one beam.

    Parameters
    ----------
    density
        Relative electron density (water = 1) on the dose grid (see
        :func:`rtgrid.engines.dose.density.hu_to_relative_electron_density` and
        :func:`rtgrid.engines.dose.grid.resample_to_dose_grid`).
    dose_mask
        Boolean ``(nz, ny, nx)`` on ``density``'s grid: voxels that get dose rows (e.g. BODY).
    beam
        The beam; must be the beam ``bixels`` were made for.
    bixels
        The beam's bixel grid.
    machine
        Kernel, SAD, calibration, default lateral cutoff.
    device
        ``"cpu"`` (numpy) or ``"gpu"`` (cupy, imported only here).
    lateral_cutoff_mm
        A bixel is stored for a voxel when its centre lies within this distance (iso plane) of the
        centre of the bixel-lattice cell holding the voxel's projection (so within the cutoff
        +- half a cell diagonal of the projection itself); ``None`` takes the machine's
        ``lateral_cutoff_mm``; ``float('inf')`` keeps every bixel (exact kernel).
    workers
        Threads for the ray trace and the voxel blocks (CPU only; the GPU path uses one);
        ``None``: :func:`rtgrid.engines.parallel.engine_threads`. The matrix is bitwise the
        same for every count.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``float32``, shape ``(density.voxels.size, bixels.n_bixels)``; row ``r`` is voxel
        ``np.unravel_index(r, density.shape)`` (C order ``k, j, i``); column ``n`` is bixel ``n``.
        Unit: Gy per unit bixel weight (see module docstring).

    Raises
    ------
    DoseEngineError
        Mask not on the grid, bixels of another beam, or an unavailable device.
    EngineThreadsError
        ``workers`` (or ``RTGRID_ENGINE_THREADS``) is not a positive integer.
    PatientPositionError
        Unsupported patient position.
    """
    xp, ndi, overlaps = _backend(device)
    threads = _threads(xp, workers)
    cutoff = machine.lateral_cutoff_mm if lateral_cutoff_mm is None else float(lateral_cutoff_mm)
    if not cutoff > 0:
        raise DoseEngineError(f"lateral_cutoff_mm must be > 0, got {cutoff}")
    n_vox, n_bix = density.voxels.size, bixels.n_bixels
    b = bixels.bixel_mm
    # the cutoff is measured from the cell centre: voxels up to a cell further out can be reached
    pts = _beam_points(density, dose_mask, beam, bixels, machine, xp, ndi, reach_mm=cutoff + b, workers=threads)
    if pts is None:
        return sp.csr_matrix((n_vox, n_bix), dtype=np.float32)
    # lattice cell of every voxel's projection; the bixels kept for a cell are those whose centres
    # lie within the cutoff of the cell centre (sorted by column)
    cx_all = np.floor(pts.x / b).astype(np.int64)
    cy_all = np.floor(pts.y / b).astype(np.int64)
    cx_min, cy_min = int(cx_all.min()), int(cy_all.min())
    row_len = int(cx_all.max()) - cx_min + 1
    codes, cell_of_voxel = np.unique((cy_all - cy_min) * row_len + (cx_all - cx_min), return_inverse=True)
    cells = np.stack([codes // row_len + cy_min, codes % row_len + cx_min])  # (cy, cx) of occupied cells
    if np.isfinite(cutoff):
        d2 = ((cells[1][:, None] - bixels.ix[None, :]) ** 2 + (cells[0][:, None] - bixels.iy[None, :]) ** 2) * b * b
        cell_cols = np.nonzero(d2 <= cutoff**2)  # (cell, column) pairs, grouped by cell, columns ascending
        m = int(np.ceil(cutoff / b + 0.5))  # window half-width in bixels around the voxel's cell
        wx = wy = 2 * m + 1
    else:
        cell_cols = np.nonzero(np.ones((cells.shape[1], n_bix), dtype=bool))
        wx, wy = int(np.ptp(bixels.ix)) + 1, int(np.ptp(bixels.iy)) + 1
    cols_flat = xp.asarray(cell_cols[1].astype(np.int32))
    # each entry's column and row inside its voxel's window of bixels (a window depends on the cell only)
    if np.isfinite(cutoff):
        window_x, window_y = cells[1] - m, cells[0] - m
    else:
        window_x = np.full(cells.shape[1], bixels.ix.min())
        window_y = np.full(cells.shape[1], bixels.iy.min())
    rel_x_flat = xp.asarray((bixels.ix[cell_cols[1]] - window_x[cell_cols[0]]).astype(np.int32))
    rel_y_flat = xp.asarray((bixels.iy[cell_cols[1]] - window_y[cell_cols[0]]).astype(np.int32))
    per_cell = np.bincount(cell_cols[0], minlength=cells.shape[1])
    cell_start = np.concatenate([[0], np.cumsum(per_cell)[:-1]])
    per_voxel_all = per_cell[cell_of_voxel]
    pairs_before = np.concatenate([[0], np.cumsum(per_voxel_all)])

    # blocks of voxels holding about BLOCK_ELEMENTS voxel-bixel pairs each, fixed before any runs so
    # that every thread count computes the same blocks
    blocks = []
    start = 0
    while start < pts.rows.size:
        stop = int(np.searchsorted(pairs_before, pairs_before[start] + BLOCK_ELEMENTS, side="right")) - 1
        stop = min(max(stop, start + 1), pts.rows.size)
        blocks.append(slice(start, stop))
        start = stop

    def block_entries(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Values and columns of a block's voxel-bixel pairs (voxel-major, columns ascending)."""
        xb, yb, amp, inv = _block_kernel(pts, sl, machine, xp, ndi)
        nb = xb.size
        sx = xp.asarray(window_x[cell_of_voxel[sl]].astype(np.int32))
        sy = xp.asarray(window_y[cell_of_voxel[sl]].astype(np.int32))
        # the kernel is separable: 1-D overlaps of the window's bixel columns and rows, from erf
        # at their shared edges
        edges_x = ((sx[:, None] + xp.arange(wx + 1, dtype=xp.int32)[None, :]) * b - xb[:, None]).astype(xp.float32)
        edges_y = ((sy[:, None] + xp.arange(wy + 1, dtype=xp.int32)[None, :]) * b - yb[:, None]).astype(xp.float32)
        n_comp = inv.shape[1]
        fx = overlaps(edges_x, inv).ravel()  # (nb, n_comp, wx)
        fy = (overlaps(edges_y, inv) * amp[:, :, None]).ravel()  # (nb, n_comp, wy)
        counts = xp.asarray(per_voxel_all[sl])
        n_pairs = int(pairs_before[sl.stop] - pairs_before[sl.start])
        first = xp.asarray((cell_start[cell_of_voxel[sl]] - (pairs_before[sl] - pairs_before[sl.start])).astype(np.int32))
        pos = _repeat(xp, first, counts, n_pairs) + xp.arange(n_pairs, dtype=xp.int32)
        cols = cols_flat[pos]
        voxel_base = _repeat(xp, xp.arange(nb, dtype=xp.int32) * n_comp, counts, n_pairs)
        ox = rel_x_flat[pos] + voxel_base * wx
        oy = rel_y_flat[pos] + voxel_base * wy
        vals = fy[oy] * fx[ox]
        for c in range(1, n_comp):
            vals += fy[oy + c * wy] * fx[ox + c * wx]
        return _to_host(xp, vals), _to_host(xp, cols)

    parts = ordered_map(block_entries, blocks, threads)
    data_parts = [p[0] for p in parts]
    col_parts = [p[1] for p in parts]
    del parts
    count_parts = [per_voxel_all[sl] for sl in blocks]

    counts = np.zeros(n_vox, dtype=np.int64)
    counts[pts.rows] = np.concatenate(count_parts)
    indptr = np.zeros(n_vox + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    index_dtype = np.int32 if indptr[-1] < 2**31 else np.int64
    return sp.csr_matrix(
        (np.concatenate(data_parts), np.concatenate(col_parts).astype(index_dtype, copy=False), indptr.astype(index_dtype)),
        shape=(n_vox, n_bix),
    )


def compute_beam_dose(density: Volume, dose_mask: np.ndarray, beam: Beam, bixels: BixelGrid, machine: MachineModel,
                      weights: np.ndarray, *, device: str = "cpu", workers: int | None = None) -> np.ndarray:
    """Dose of one beam for given bixel weights with the full kernel (no lateral cutoff), without
    a matrix: the final dose of an optimised fluence.

    Per voxel block and kernel component the separable kernel makes the sum over all bixels two
    matrix products with the fluence map, ``fy^T W fx``. For several fluences of one beam use
    :class:`FullKernelBeam`, which projects and ray-traces the voxels once.

    Parameters
    ----------
    weights
        ``(n_bixels,)`` bixel weights (MU-equivalent), in the column order of ``bixels``.
    Other parameters
        As :func:`compute_beam_dij` (``workers``: the dose is bitwise the same for every count).

    Returns
    -------
    np.ndarray
        ``float32`` dose in Gy, shape ``density.shape`` (zero outside ``dose_mask``). Equals
        ``compute_beam_dij(..., lateral_cutoff_mm=inf) @ weights``.
    """
    return FullKernelBeam(density, dose_mask, beam, bixels, machine, device=device, workers=workers).dose(weights)


class FullKernelBeam:
    """One beam's full-kernel dose (:func:`compute_beam_dose`) for any number of fluences.

    The beam's voxels are projected into its eye view, ray-traced and given their kernel (depth,
    component amplitudes and widths) once, at construction: the ray trace was 40 % of a TG-119
    beam's dose on the 3 mm grid and the kernel 12 % of the rest, and a plan computes its beams'
    doses once per optimization round.

    Parameters
    ----------
    density, dose_mask, beam, bixels, machine, device, workers
        As :func:`compute_beam_dij` (``workers``: threads of :meth:`dose`).
    trace_workers : int, optional
        Threads of the construction's ray trace (default: ``workers``); one when several beams
        are traced side by side.
    """

    def __init__(self, density: Volume, dose_mask: np.ndarray, beam: Beam, bixels: BixelGrid, machine: MachineModel,
                 *, device: str = "cpu", workers: int | None = None, trace_workers: int | None = None):
        self._xp, self._ndi, self._overlaps = _backend(device)
        self._threads = _threads(self._xp, workers)
        self._shape = density.shape
        self.bixels, self.machine = bixels, machine
        points = _beam_points(density, dose_mask, beam, bixels, machine, self._xp, self._ndi, reach_mm=float("inf"),
                              workers=self._threads if trace_workers is None else _threads(self._xp, trace_workers))
        # rows, then x and y (iso plane, mm), amplitudes and 1 / (sqrt(2) sigma) of every point;
        # each point's values are its own, whatever the block, so doses stay bitwise the same
        self._rows = None if points is None else points.rows
        self._kernel = None if points is None else _block_kernel(points, slice(None), machine, self._xp, self._ndi)

    def dose(self, weights: np.ndarray) -> np.ndarray:
        """``float32`` dose in Gy of the bixel ``weights`` (``(n_bixels,)``, MU-equivalent),
        shape of the density grid (zero outside the dose mask)."""
        xp, bixels, machine, rows = self._xp, self.bixels, self.machine, self._rows
        weights = np.asarray(weights, dtype=np.float64).ravel()
        if weights.size != bixels.n_bixels:
            raise DoseEngineError(f"{weights.size} weights given for {bixels.n_bixels} bixels")
        dose = np.zeros(int(np.prod(self._shape)), dtype=np.float32)
        if rows is None:
            return dose.reshape(self._shape)
        b = bixels.bixel_mm
        ix0, iy0 = int(bixels.ix.min()), int(bixels.iy.min())
        fluence = np.zeros((int(bixels.iy.max()) - iy0 + 1, int(bixels.ix.max()) - ix0 + 1))
        fluence[bixels.iy - iy0, bixels.ix - ix0] = weights
        fluence_d = xp.asarray(fluence.astype(np.float32))
        ny, nx = fluence.shape
        edges_x0 = xp.asarray(((ix0 + np.arange(nx + 1)) * b)[None, :])
        edges_y0 = xp.asarray(((iy0 + np.arange(ny + 1)) * b)[None, :])
        block = max(1, BLOCK_ELEMENTS // (len(machine.kernel) * max(nx, ny) + 1))

        def block_dose(sl: slice) -> None:  # blocks write disjoint voxels
            xb, yb, amp, inv = (a[sl] for a in self._kernel)
            fx = self._overlaps((edges_x0 - xb[:, None]).astype(xp.float32), inv)  # (nb, n_comp, nx)
            fy = self._overlaps((edges_y0 - yb[:, None]).astype(xp.float32), inv) * amp[:, :, None]
            # one (nb * n_comp, nx) x (nx, ny) product: a stacked matmul of (n_comp, nx) slices took twice as long
            through_x = (fx.reshape(-1, nx) @ fluence_d.T).reshape(fy.shape)  # (nb, n_comp, ny)
            dose[rows[sl]] = _to_host(xp, (fy * through_x).sum(axis=(1, 2)))

        with blas_threads(1):  # the blocks are the parallel work
            ordered_map(block_dose, [slice(s, s + block) for s in range(0, rows.size, block)], self._threads)
        return dose.reshape(self._shape)


@dataclass(frozen=True)
class _BeamPoints:
    """Dose voxels of one beam in BEV: rows (host), iso-plane ``x, y`` and axis distance ``z``
    (host, mm), and the beam's radiological-depth grid (device)."""

    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    depth_grid: BevDepthGrid


def _beam_points(density: Volume, dose_mask: np.ndarray, beam: Beam, bixels: BixelGrid, machine: MachineModel,
                 xp: ModuleType, ndi: ModuleType, reach_mm: float, workers: int = 1) -> _BeamPoints | None:
    """Validate the inputs, project the masked voxels into the BEV, keep those within ``reach_mm``
    (iso plane) of the bixels, and ray-trace the beam; ``None`` when no voxel is in reach."""
    dose_mask = np.asarray(dose_mask, dtype=bool)
    if dose_mask.shape != density.shape:
        raise DoseEngineError(f"dose mask shape {dose_mask.shape} does not match the density grid {density.shape}")
    if bixels.beam is not beam and not (
        np.allclose(bixels.beam.isocenter_mm, beam.isocenter_mm)
        and (bixels.beam.gantry_deg, bixels.beam.couch_deg, bixels.beam.collimator_deg)
        == (beam.gantry_deg, beam.couch_deg, beam.collimator_deg)
    ):
        raise DoseEngineError("bixels were made for another beam (angles or isocenter differ)")
    sad, b = machine.sad_mm, bixels.bixel_mm
    axes = beam_axes(beam, sad)
    # LPS -> BEV is affine in (i, j, k): sum per-axis tables instead of a (voxels x 3) product
    rows = np.flatnonzero(dose_mask.ravel())
    k, j, i = np.unravel_index(rows, density.shape)
    steps = density.direction * density.spacing_mm[None, :]  # columns: LPS step of i, j, k
    rel0 = density.origin_mm - axes.source_mm
    bev = []
    for axis in (axes.x_bev, axes.y_bev, axes.beam_dir):
        per_axis = steps.T @ axis
        bev.append(rel0 @ axis + per_axis[0] * np.arange(density.shape[2])[i]
                   + per_axis[1] * np.arange(density.shape[1])[j] + per_axis[2] * np.arange(density.shape[0])[k])
    z = bev[2]
    x, y = bev[0] * (sad / z), bev[1] * (sad / z)
    bx, by = bixels.positions_mm[:, 0], bixels.positions_mm[:, 1]
    reach = min(reach_mm, 1e6)
    near = (z > 0) & (x >= bx.min() - b / 2 - reach) & (x <= bx.max() + b / 2 + reach) \
        & (y >= by.min() - b / 2 - reach) & (y <= by.max() + b / 2 + reach)
    rows, x, y, z = rows[near], x[near], y[near], z[near]
    if rows.size == 0:
        return None
    grid = bev_radiological_depth(xp, ndi, xp.asarray(density.voxels, dtype=xp.float32), density, axes, sad,
                                  (float(x.min()), float(x.max())), (float(y.min()), float(y.max())), float(z.max()),
                                  workers=workers)
    return _BeamPoints(rows, x, y, z, grid)


def _threads(xp: ModuleType, workers: int | None) -> int:
    """Threads of the hot loops: the CPU path's count; one on the GPU (its kernels are parallel)."""
    count = engine_threads(workers)
    return count if xp is np else 1


def _block_kernel(pts: _BeamPoints, sl: slice, machine: MachineModel, xp: ModuleType, ndi: ModuleType):
    """For a block of voxels: iso-plane ``x, y`` (device), the calibrated component amplitudes with
    inverse square ``(nb, n_comp)`` and ``1 / (sqrt(2) sigma_iso)`` ``(nb, n_comp)``, float32."""
    sad = machine.sad_mm
    xb, yb, zb = xp.asarray(pts.x[sl]), xp.asarray(pts.y[sl]), xp.asarray(pts.z[sl])
    depth = xp.maximum(sample_depth(xp, ndi, pts.depth_grid, xb, yb, zb).astype(xp.float64), 0.0)
    comps = machine.kernel
    inverse_square = (sad / zb) ** 2
    amp = xp.asarray(component_amplitudes(comps, _to_host(xp, depth)).T) * (calibration_constant(machine) * inverse_square)[:, None]
    sigma = xp.asarray(component_sigmas_mm(comps, _to_host(xp, depth)).T) * (sad / zb)[:, None]
    return xb, yb, amp.astype(xp.float32), (1.0 / (np.sqrt(2.0) * sigma)).astype(xp.float32)


def _repeat(xp: ModuleType, values, counts, total: int):
    """``values[n]`` repeated ``counts[n]`` times (``total`` = ``counts.sum()``), on either backend."""
    if xp is np:
        return np.repeat(values, counts)
    return values[xp.searchsorted(xp.cumsum(counts), xp.arange(total), side="right")]


def _overlaps(erf: object, edges_mm, inv):
    """Bixel overlaps ``F`` of every component: erf at consecutive edges ``(nb, n_edges)`` scaled by
    ``inv`` ``(nb, n_comp)``, differenced -> ``(nb, n_comp, n_edges - 1)``."""
    e = erf(edges_mm[:, None, :] * inv[:, :, None])
    return 0.5 * (e[:, :, 1:] - e[:, :, :-1])


def assemble_dij(per_beam: Sequence[sp.csr_matrix] | list[sp.csr_matrix], *, release: bool = False,
                 workers: int | None = None) -> sp.csr_matrix:
    """Join per-beam matrices side by side (columns of beam 0, then beam 1, ...).

    Equivalent to ``scipy.sparse.hstack(per_beam, format="csr")`` but without the COO detour.

    Parameters
    ----------
    per_beam
        The beams' matrices, all with the same rows.
    release
        When ``per_beam`` is a list, replace each entry by ``None`` once it is copied, so that
        (with no other reference held) the peak memory stays near the result's own size.
    workers
        Threads copying beams at once (each into its own slots of every row); ``None``:
        :func:`rtgrid.engines.parallel.engine_threads`.

    Raises
    ------
    DoseEngineError
        No matrices, or row counts differ.
    EngineThreadsError
        ``workers`` (or ``RTGRID_ENGINE_THREADS``) is not a positive integer.
    """
    if not per_beam:
        raise DoseEngineError("assemble_dij needs at least one beam matrix")
    n_rows = per_beam[0].shape[0]
    for n, mat in enumerate(per_beam):
        if mat.shape[0] != n_rows:
            raise DoseEngineError(f"beam matrix {n} has {mat.shape[0]} rows, beam 0 has {n_rows}")
    threads = engine_threads(workers)
    # first slot of every row for each beam: the row's start plus the entries of the beams before it
    starts = []
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for mat in per_beam:
        starts.append(indptr[1:].copy())
        indptr[1:] += np.diff(mat.indptr)
    np.cumsum(indptr, out=indptr)
    nnz = int(indptr[-1])
    n_cols = int(sum(m.shape[1] for m in per_beam))
    index_dtype = np.int32 if max(nnz, n_cols) < 2**31 else np.int64
    data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=index_dtype)
    col_offsets = np.cumsum([0] + [m.shape[1] for m in per_beam])

    def copy_beam(n: int) -> None:  # beams fill disjoint slots
        mat = per_beam[n].tocsr()
        if release and isinstance(per_beam, list):
            per_beam[n] = None
        if mat.nnz:
            # slot of every entry: its row's slot for this beam plus its place in the row, worked
            # out on the rows the beam reaches and in the result's index type (half the traffic
            # of int64 when that is int32)
            counts = np.diff(mat.indptr)
            rows = np.flatnonzero(counts)
            shift = (indptr[rows] + starts[n][rows] - mat.indptr[rows]).astype(index_dtype)
            dest = np.repeat(shift, counts[rows])
            dest += np.arange(mat.nnz, dtype=index_dtype)
            data[dest] = mat.data
            indices[dest] = mat.indices + index_dtype(col_offsets[n])
        starts[n] = None

    ordered_map(copy_beam, range(len(per_beam)), threads)
    return sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(n_rows, n_cols))
