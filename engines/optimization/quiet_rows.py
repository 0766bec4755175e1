"""Rows of the optimizer's dose that provably add nothing to the objective, left out of ``Dij @ x``.

A row whose only penalties are maxima (``max_dose``: the body's hot-spot limit, an organ's maximum)
adds nothing to the objective or to its gradient while its dose stays under the lowest of them,
and a row no penalty reads adds nothing at all. Most of a plan's matrix is such rows (TG-119 at
3 mm: 89 % of the nonzeros lie in rows whose only penalty is the body's 60 Gy maximum), and most of
them stay far below their limit.

Their dose is bounded without computing it. From the last fluence ``x_b`` whose dose ``d_b`` was
computed on every row, for any fluence ``x``::

    d_r(x) = d_b,r + sum_j D_rj (x_j - x_b,j)  <=  d_b,r + sum_g S_rg * max_{j in g} (x_j - x_b,j)^+

where ``S_rg`` sums ``|D_rj|`` over a group ``g`` of consecutive bixels (:data:`GROUPS` groups). A
row whose bound stays under its limit (less :data:`MARGIN`, far more than float32 sums err) is
left out, its dose 0 instead of a value under the limit: the penalties, the gradient and so the
whole optimization are the same, bit for bit. Once fewer than :data:`REBASE_SHARE` of the
nonzeros could be left out, the product runs over every row and its fluence becomes ``x_b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtgrid.engines.parallel import ordered_map

from .objectives import PenaltyTerm
from .row_blocks import RowBlockMatrix

GROUPS = 16
"""Groups of consecutive bixels in the bound: more give a tighter bound and a larger table
(``n_rows x GROUPS`` float32)."""
MARGIN = 1e-3
"""A row is left out when its bound is under ``1 - MARGIN`` of its limit."""
REBASE_SHARE = 0.3
"""Below this share of nonzeros left out, ``Dij @ x`` runs over every row and starts a new bound."""


def quiet_dose_limits(terms: Sequence[PenaltyTerm], n_rows: int) -> np.ndarray:
    """Per row, the dose (Gy) under which it adds nothing to the objective or its gradient.

    Parameters
    ----------
    terms : sequence of PenaltyTerm
        The penalties, their ``voxels`` being rows.
    n_rows : int

    Returns
    -------
    np.ndarray
        ``(n_rows,)`` float64: ``inf`` where no term reads the row, the lowest level of its
        ``max_dose`` terms where only those read it, 0 where any other term does (uniformity,
        minima, means and DVH points read every dose of their structure).
    """
    limits = np.full(n_rows, np.inf)
    for term in terms:
        if term.kind == "max_dose":
            limits[term.voxels] = np.minimum(limits[term.voxels], term.dose_gy)
    for term in terms:
        if term.kind != "max_dose":
            limits[term.voxels] = 0.0
    return limits


class QuietDose:
    """``Dij @ x`` for an objective, with the rows that stay under their limits left out.

    Parameters
    ----------
    products : RowBlockMatrix
    limits_gy : np.ndarray
        ``(n_rows,)`` from :func:`quiet_dose_limits`.
    groups : int
        Groups of consecutive bixels in the bound.

    A matrix with a negative entry (no dose influence has one) gets every row computed.

    Attributes
    ----------
    left_out : list of float
        Per product, the share of the nonzeros left out (0 for a product over every row).
    """

    def __init__(self, products: RowBlockMatrix, limits_gy: np.ndarray, *, groups: int = GROUPS):
        n_rows, n_cols = products.shape
        limits_gy = np.asarray(limits_gy, dtype=np.float64)
        if limits_gy.shape != (n_rows,):
            raise ValueError(f"limits_gy must hold one dose per row ({n_rows}), got {limits_gy.shape}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.products = products
        from . import row_kernels  # numba, loaded with the first optimization (see RowBlockMatrix)

        self._kernels = row_kernels
        self.limits = limits_gy * (1.0 - MARGIN)
        m = products.matrix
        # the bound holds for non-negative influence (doses, far-scatter corrected or not)
        self.active = bool(n_cols) and bool(m.nnz) and bool((limits_gy > 0).any()) and float(m.data.min()) >= 0.0
        groups = min(groups, max(n_cols, 1))
        self.group_starts = (np.arange(groups) * n_cols) // groups
        group_of_column = (np.searchsorted(self.group_starts, np.arange(n_cols), side="right") - 1).astype(np.int64)
        self.group_sums = np.zeros((n_rows, groups), dtype=np.float32)
        if self.active:
            ordered_map(lambda block: row_kernels.rows_group_sums(m.indptr, m.indices, m.data, group_of_column, *block,
                                                                 self.group_sums), products.blocks, products.threads)
        self.row_nonzeros = np.diff(m.indptr).astype(np.int64)
        self.base_x: np.ndarray | None = None
        self.base_dose: np.ndarray | None = None
        self.left_out: list[float] = []

    def dose(self, x: np.ndarray) -> np.ndarray:
        """``Dij @ x`` (float32), 0 on rows shown to stay under their limits.

        Parameters
        ----------
        x : np.ndarray
            ``(n_cols,)`` bixel weights.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.active and self.base_x is not None:
            rise = np.maximum.reduceat(np.maximum(x.astype(np.float64) - self.base_x, 0.0), self.group_starts)
            skip = np.empty(self.products.shape[0], dtype=bool)
            marked = ordered_map(lambda block: self._kernels.rows_under_limits(
                self.group_sums, self.base_dose, rise, self.limits, self.row_nonzeros, *block, skip),
                self.products.blocks, self.products.threads)
            share = sum(marked) / max(self.products.matrix.nnz, 1)
            if share >= REBASE_SHARE:
                self.left_out.append(share)
                return self.products.matvec(x, skip=skip)
        dose = self.products.matvec(x)
        if self.active:
            self.base_x, self.base_dose = x.astype(np.float64), dose.copy()  # the caller may change its own
        self.left_out.append(0.0)
        return dose
