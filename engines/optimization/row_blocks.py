"""The optimizer's matrix products on every core: a CSR matrix cut into fixed row blocks.

An optimization spends most of its time in ``Dij @ x`` and ``Dij.T @ g`` (TG-119 at 3 mm: 55 M
nonzeros, 251 evaluations per plan). Each block's product runs in a compiled loop without the GIL
(:mod:`.row_kernels`), blocks side by side on the engine's threads. ``Dij @ x`` is the blocks'
rows placed one after the other, equal to scipy's product bit for bit; rows the caller marks as
not needed are left out (0). ``Dij.T @ g`` runs over the rows where ``g`` is not zero and adds the
blocks' partial sums (one per bixel, few) in block order; blocks are fixed by the matrix alone, so
the result is bitwise the same for every thread count.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rtgrid.engines.parallel import engine_threads, ordered_map

BLOCK_NONZEROS = 4_000_000
"""Nonzeros of a row block: some 30 MB of a float32 matrix, a few blocks per thread at 3 mm."""
_EVERY_ROW = np.zeros(0, dtype=bool)


class RowBlockMatrix:
    """A CSR matrix whose products with vectors run over fixed row blocks on threads.

    Parameters
    ----------
    matrix : scipy.sparse matrix
        ``(n_rows, n_cols)``; converted to float32 CSR (no copy when it already is one).
    workers : int, optional
        Threads (:func:`rtgrid.engines.parallel.engine_threads` when ``None``).
    block_nonzeros : int
        Nonzeros per block, about (a block holds whole rows).

    Attributes
    ----------
    blocks : list of (int, int)
        First and end row of each block.
    """

    def __init__(self, matrix: sp.spmatrix, *, workers: int | None = None, block_nonzeros: int = BLOCK_NONZEROS):
        if block_nonzeros < 1:
            raise ValueError(f"block_nonzeros must be >= 1, got {block_nonzeros}")
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.shape = self.matrix.shape
        self.threads = engine_threads(workers)
        indptr = self.matrix.indptr
        # a row boundary at about every block_nonzeros-th entry (duplicates dropped)
        marks = np.searchsorted(indptr, np.arange(block_nonzeros, self.matrix.nnz, block_nonzeros), side="right") - 1
        bounds = np.unique(np.concatenate([[0], marks, [self.shape[0]]]))
        self.blocks = [(int(r0), int(r1)) for r0, r1 in zip(bounds[:-1], bounds[1:])]
        # numba (some 150 MB) is loaded with the first matrix, not while the matrix is being built
        from . import row_kernels

        self._kernels = row_kernels

    def matvec(self, x: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
        """``matrix @ x`` as float32 (``x`` is cast to float32), equal to scipy's product.

        Parameters
        ----------
        x : np.ndarray
            ``(n_cols,)``.
        skip : np.ndarray, optional
            ``(n_rows,)`` bool: rows left out, 0 in the result; every other row is scipy's, bit
            for bit.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if skip is None:
            skip = _EVERY_ROW
        elif skip.shape != (self.shape[0],) or skip.dtype != bool:
            raise ValueError(f"skip must be one bool per row ({self.shape[0]}), got {skip.dtype} {skip.shape}")
        m, out = self.matrix, np.empty(self.shape[0], dtype=np.float32)
        product = self._kernels.rows_matvec
        ordered_map(lambda block: product(m.indptr, m.indices, m.data, x, *block, skip, out),  # disjoint rows
                    self.blocks, self.threads)
        return out

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """``matrix.T @ y`` as float64 (``y`` is cast to float32; each block's partial sum is float32).

        Only the rows where ``y`` is not zero are read; the result is the same, bit for bit, as the
        product over every row (see the module's docstring)."""
        y = np.ascontiguousarray(y, dtype=np.float32)
        m = self.matrix

        def block_product(block: tuple[int, int]) -> np.ndarray | None:
            r0, r1 = block
            if not y[r0:r1].any():
                return None
            partial = np.zeros(self.shape[1], dtype=np.float32)
            self._kernels.rows_rmatvec(m.indptr, m.indices, m.data, y, r0, r1, partial)
            return partial

        total = np.zeros(self.shape[1], dtype=np.float64)
        for partial in ordered_map(block_product, self.blocks, self.threads):
            if partial is not None:
                total += partial
        return total
