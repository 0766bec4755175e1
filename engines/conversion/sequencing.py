"""Leaf sequencing: a fluence map on a device's leaf pairs -> step-and-shoot segments, and the
direct-aperture refinement of their MU.

Sequencing (unidirectional sweep, Bortfeld et al., Int J Radiat Oncol Biol Phys 28 (1994) 723;
interdigitation constraint after Kamath et al., Phys Med Biol 48 (2003) 307 and 49 (2004) N7):
the map is quantised to ``n_levels`` intensity levels of ``unit = max / n_levels`` MU. Per row
(leaf pair) the levels ``f_c`` become two non-decreasing leaf trajectories over the column edges:
``A_c`` (units whose X1 leaf has opened past edge ``c``) = the cumulated rises of ``f``, and
``B_c = A_c - f_c`` (units whose X2 leaf has closed). Unit ``k`` of a row opens columns
``l_k <= c < r_k`` with ``l_k = min{c: A_c >= k}`` and ``r_k = min{c: B_c >= k}``; summing the units
gives back ``f`` exactly. Every row is padded to the same number of units with closed units at the
right edge. When the device forbids interdigitation, ``A_i >= B_j`` is enforced for neighbouring
pairs ``i, j`` (then no X1 leaf passes the neighbour's X2 leaf in any unit) by raising both
trajectories of a row by the running maximum of its deficit, which keeps its fluence, until no
deficit remains. Identical consecutive units merge into one segment of ``count * unit`` MU.

Closed pairs: with interdigitation allowed they park with the minimum gap just behind the X1 jaw
(hidden when the device has X jaws); without it they close with the minimum gap at their
trajectory position, which lies within both neighbours' openings (behind the aperture's edge when
that position is on it, else inside the field, where the gap leaks).

Refinement: the segment MU are re-fitted by non-negative least squares of the segments' doses to
a target dose, dropping segments under the minimum MU (smallest first) and beyond the segment
limit per beam, re-fitting after each drop.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize

from rtgrid.engines.errors import EngineError

from .device import DeviceModel
from .leaf_grid import LeafGrid
from .segment import Segment

DEFAULT_LEVELS = 10
_MAX_CONSTRAINT_PASSES = 10_000


class SequencingError(EngineError, ValueError):
    """A fluence map that cannot be sequenced (shape, negative or non-finite values)."""


def _sweep_trajectories(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``B`` over the ``n_cols + 1`` column edges of every row (integers)."""
    rows = levels.shape[0]
    f_ext = np.concatenate([levels, np.zeros((rows, 1), dtype=np.int64)], axis=1)
    prev = np.concatenate([np.zeros((rows, 1), dtype=np.int64), levels], axis=1)
    a = np.cumsum(np.maximum(f_ext - prev, 0), axis=1)
    return a, a - f_ext


def _pad(a: np.ndarray, b: np.ndarray) -> None:
    """Give every row the same number of units: extra units closed at the last edge."""
    n = a[:, -1].max()
    a[:, -1] = n
    b[:, -1] = n


def _forbid_interdigitation(a: np.ndarray, b: np.ndarray) -> bool:
    """Raise rows until ``A_i >= B_j`` for all neighbours; True when that was reached."""
    for _ in range(_MAX_CONSTRAINT_PASSES):
        _pad(a, b)
        deficit = np.zeros_like(a)
        deficit[1:] = np.maximum(deficit[1:], b[:-1] - a[1:])
        deficit[:-1] = np.maximum(deficit[:-1], b[1:] - a[:-1])
        if not (deficit > 0).any():
            return True
        raise_by = np.maximum.accumulate(np.maximum(deficit, 0), axis=1)
        a += raise_by
        b += raise_by
    return False


def sequence_beam(fluence_map: np.ndarray, grid: LeafGrid, device: DeviceModel, *,
                  n_levels: int = DEFAULT_LEVELS) -> list[Segment]:
    """Step-and-shoot segments that deliver a fluence map on a device.

    Parameters
    ----------
    fluence_map
        ``grid.shape`` = (leaf pairs, columns) map in MU per fraction (MU-equivalent fluence).
    grid
        The map's geometry (leaf pairs from ``grid.first_pair``, column edges in mm).
    device
    n_levels
        Number of intensity levels the map is quantised to.

    Returns
    -------
    list of Segment
        In delivery order (the sweep), MU per fraction; empty for an all-zero map.

    Raises
    ------
    SequencingError
        Shape that does not match the grid, negative or non-finite values, ``n_levels < 1``.
    """
    fluence = np.asarray(fluence_map, dtype=np.float64)
    if fluence.shape != grid.shape:
        raise SequencingError(f"fluence map of shape {fluence.shape} does not match the leaf grid {grid.shape}")
    if not np.isfinite(fluence).all() or fluence.min() < -1e-9 * max(1.0, float(np.abs(fluence).max())):
        raise SequencingError("fluence map holds negative or non-finite values")
    if n_levels < 1:
        raise SequencingError(f"n_levels must be >= 1, got {n_levels}")
    peak = float(fluence.max())
    if peak <= 0:
        return []
    unit = peak / n_levels
    a, b = _sweep_trajectories(np.rint(np.clip(fluence, 0, None) / unit).astype(np.int64))
    if device.machine.interdigitation:
        _pad(a, b)
    else:
        _forbid_interdigitation(a, b)
    n_units = int(a[:, -1].max())
    ks = np.arange(1, n_units + 1)
    left = np.stack([np.searchsorted(row, ks, side="left") for row in a])
    right = np.stack([np.searchsorted(row, ks, side="left") for row in b])
    segments: list[Segment] = []
    k = 0
    while k < n_units:
        run = 1
        while k + run < n_units and np.array_equal(left[:, k + run], left[:, k]) and np.array_equal(right[:, k + run], right[:, k]):
            run += 1
        segment = _aperture(left[:, k], right[:, k], grid, device, run * unit)
        if segment is not None:
            segments.append(segment)
        k += run
    return segments


def _aperture(left: np.ndarray, right: np.ndarray, grid: LeafGrid, device: DeviceModel, mu: float) -> Segment | None:
    """Leaf and jaw positions of one unit (column-edge indices per row); None when nothing is open."""
    machine = device.machine
    edges = grid.column_edges_mm
    is_open = right > left
    if not is_open.any():
        return None
    gap = machine.min_leaf_gap_mm
    x1_rows, x2_rows = edges[left].astype(np.float64), edges[right].astype(np.float64)
    open_rows = np.flatnonzero(is_open)
    ap_x1, ap_x2 = float(x1_rows[is_open].min()), float(x2_rows[is_open].max())
    ap_y1, ap_y2 = float(grid.row_edges_mm[open_rows[0]]), float(grid.row_edges_mm[open_rows[-1] + 1])
    limits = machine.jaw_limits_mm
    # a jaw sits on the aperture's edge, or at its travel limit when the edge lies beyond it (the
    # leaves then collimate; an edge outside the field is reported by the deliverability check)
    jaw_x = (float(np.clip(ap_x1, *limits["X1"])), float(np.clip(ap_x2, *limits["X2"]))) if device.x_jaws else (ap_x1, ap_x2)
    jaw_y = (float(np.clip(ap_y1, *limits["Y1"])), float(np.clip(ap_y2, *limits["Y2"])))

    n_pairs = device.n_pairs
    x1 = np.empty(n_pairs)
    x2 = np.empty(n_pairs)
    rows = slice(grid.first_pair, grid.first_pair + grid.shape[0])
    if machine.interdigitation:
        # closed pairs wait with the minimum gap just behind the X1 jaw (or the aperture's edge)
        x2[:] = jaw_x[0]
        x1[:] = jaw_x[0] - gap
        x1[rows] = np.where(is_open, x1_rows, jaw_x[0] - gap)
        x2[rows] = np.where(is_open, x2_rows, jaw_x[0])
    else:
        # a closed pair closes on its trajectory position e, inside both neighbours' openings; its
        # gap [e - g, e] or [e, e + g] satisfies them as well, so it goes behind the aperture's edge
        # when e lies on or beyond it (hidden by the X jaws), and is centred on e otherwise
        centre = np.where(is_open, 0.5 * (x1_rows + x2_rows), x1_rows)
        shift = np.where(x1_rows >= ap_x2, gap / 2.0, np.where(x1_rows <= ap_x1, -gap / 2.0, 0.0))
        x1[rows] = np.where(is_open, x1_rows, centre + shift - gap / 2.0)
        x2[rows] = np.where(is_open, x2_rows, centre + shift + gap / 2.0)
        x1[:grid.first_pair] = centre[0] - gap / 2.0
        x2[:grid.first_pair] = centre[0] + gap / 2.0
        x1[rows.stop:] = centre[-1] - gap / 2.0
        x2[rows.stop:] = centre[-1] + gap / 2.0
    return Segment(leaf_x1_mm=x1, leaf_x2_mm=x2, jaw_x_mm=jaw_x, jaw_y_mm=jaw_y, mu=float(mu))


def _nnls_normal(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``argmin_{x >= 0} x^T G x - 2 h^T x`` through the Cholesky factor of ``G`` (lightly regularised)."""
    n = gram.shape[0]
    ridge = 1e-10 * max(float(np.trace(gram)) / n, 1e-30)
    chol = scipy.linalg.cholesky(gram + ridge * np.eye(n), lower=True)
    x, _ = scipy.optimize.nnls(chol.T, scipy.linalg.solve_triangular(chol, rhs, lower=True), maxiter=50 * n)
    return x


def refine_segment_mu(segment_doses: np.ndarray, target_dose: np.ndarray, voxel_weights: np.ndarray,
                      beam_of_segment: np.ndarray, *, min_mu: float, max_segments_per_beam: int) -> np.ndarray:
    """Segment MU that best reproduce a target dose, every kept segment at least ``min_mu``.

    Minimises ``sum_i w_i (sum_s S_is mu_s - t_i)^2`` over ``mu >= 0`` (non-negative least
    squares), then drops the weakest segment while one is below ``min_mu`` or a beam holds more
    than ``max_segments_per_beam`` segments, re-fitting after each drop.

    Parameters
    ----------
    segment_doses
        ``(n_voxels, n_segments)`` dose per MU of each segment (Gy/MU).
    target_dose
        ``(n_voxels,)`` Gy.
    voxel_weights
        ``(n_voxels,)`` non-negative weights.
    beam_of_segment
        ``(n_segments,)`` beam index of each segment.
    min_mu, max_segments_per_beam
        The device's limits.

    Returns
    -------
    np.ndarray
        ``(n_segments,)`` MU; 0 marks a dropped segment.
    """
    s = np.asarray(segment_doses, dtype=np.float64)
    w = np.asarray(voxel_weights, dtype=np.float64)
    gram = s.T @ (w[:, None] * s)
    rhs = s.T @ (w * np.asarray(target_dose, dtype=np.float64))
    beam_of_segment = np.asarray(beam_of_segment)
    active = np.flatnonzero(np.diag(gram) > 0)
    mu = np.zeros(s.shape[1])
    while active.size:
        x = _nnls_normal(gram[np.ix_(active, active)], rhs[active])
        keep = x > 0
        active, x = active[keep], x[keep]
        if not active.size:
            break
        counts = np.bincount(beam_of_segment[active], minlength=int(beam_of_segment.max()) + 1)
        too_many = counts[beam_of_segment[active]] > max_segments_per_beam
        if (x < min_mu).any():
            candidates = np.flatnonzero(x < min_mu)
        elif too_many.any():
            candidates = np.flatnonzero(too_many)
        else:
            mu[active] = x
            break
        active = np.delete(active, candidates[np.argmin(x[candidates])])
    return mu
