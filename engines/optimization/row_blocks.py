"""The optimizer's matrix products on every core: a CSR matrix cut into fixed row blocks.

An optimization spends most of its time in ``Dij @ x`` and ``Dij.T @ g`` (85 % on TG-119 at 3 mm,
55 M nonzeros). scipy computes each on one thread but releases the GIL, so row blocks run side by
side on the engine's threads. ``Dij @ x`` is the blocks' results placed one after the other, equal
to scipy's single product bit for bit. ``Dij.T @ g`` adds the blocks' partial sums (one per bixel,
few) in block order; blocks are fixed by the matrix alone, so the result is bitwise the same for
every thread count.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rtgrid.engines.parallel import engine_threads, ordered_map

BLOCK_NONZEROS = 4_000_000
"""Nonzeros of a row block: some 30 MB of a float32 matrix, a few blocks per thread at 3 mm."""
SPARSE_ROW_SHARE = 0.25
"""``Dij.T @ g`` copies out a block's rows where ``g`` is not zero when they are at most this
share of the block's rows, and runs over the whole block otherwise."""


class RowBlockMatrix:
    """A CSR matrix whose products with vectors run over fixed row blocks on threads.

    Parameters
    ----------
    matrix : scipy.sparse matrix
        ``(n_rows, n_cols)``; converted to float32 CSR (no copy when it already is one). The
        blocks are views of its arrays.
    workers : int, optional
        Threads (:func:`rtgrid.engines.parallel.engine_threads` when ``None``).
    block_nonzeros : int
        Nonzeros per block, about (a block holds whole rows).
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
        self.blocks = [(int(r0), int(r1), *self._rows(int(r0), int(r1))) for r0, r1 in zip(bounds[:-1], bounds[1:])]

    def _rows(self, r0: int, r1: int) -> tuple[sp.csr_matrix, sp.csc_matrix]:
        """Rows ``r0:r1`` and their transpose, both on views of the matrix's arrays."""
        m, (s, e) = self.matrix, self.matrix.indptr[[r0, r1]]
        arrays = (m.data[s:e], m.indices[s:e], m.indptr[r0:r1 + 1] - s)
        return _on_arrays(sp.csr_matrix((r1 - r0, self.shape[1]), dtype=np.float32), *arrays), \
            _on_arrays(sp.csc_matrix((self.shape[1], r1 - r0), dtype=np.float32), *arrays)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``matrix @ x`` as float32 (``x`` is cast to float32), equal to scipy's product."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty(self.shape[0], dtype=np.float32)

        def block_product(block: tuple[int, int, sp.csr_matrix, sp.csc_matrix]) -> None:  # disjoint rows
            r0, r1, rows, _ = block
            out[r0:r1] = rows @ x

        ordered_map(block_product, self.blocks, self.threads)
        return out

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """``matrix.T @ y`` as float64 (``y`` is cast to float32; each block's partial sum is float32).

        Only the rows where ``y`` is not zero count; the result is the same, bit for bit, as the
        product over every row (see the module's docstring)."""
        y = np.asarray(y, dtype=np.float32)

        def block_product(block: tuple[int, int, sp.csr_matrix, sp.csc_matrix]) -> np.ndarray | None:
            r0, r1, rows, transposed = block
            part = y[r0:r1]
            active = np.flatnonzero(part)
            if active.size == 0:
                return None
            if active.size > SPARSE_ROW_SHARE * (r1 - r0):
                return transposed @ part
            return rows[active].T @ part[active]  # the rows in the same order: the same sums

        total = np.zeros(self.shape[1], dtype=np.float64)
        for partial in ordered_map(block_product, self.blocks, self.threads):
            if partial is not None:
                total += partial
        return total


def _on_arrays(empty: sp.csr_matrix | sp.csc_matrix, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray):
    """``empty`` (a matrix of the right shape and no entries) made to hold the given arrays.

    The constructor would copy views of a much larger array (scipy prunes them), doubling the
    memory of a matrix of tens of millions of entries; products use the arrays as they are.
    """
    empty.data, empty.indices, empty.indptr = data, indices, indptr.astype(indices.dtype, copy=False)
    return empty
