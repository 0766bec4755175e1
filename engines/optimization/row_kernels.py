"""The optimizer's loops over rows of a CSR matrix, compiled with numba (no GIL, one thread each).

scipy's products run over every row of a matrix. The optimizer needs less: ``Dij.T @ g`` only over
the rows where the gradient is not zero (a few percent: one-sided penalties act only where the dose
crosses their level), and ``Dij @ x`` only over the rows whose dose can matter
(:mod:`.quiet_rows`). A subset of rows of a CSR matrix is a gather scipy can only make as a copy;
these loops take the rows where they lie. Each computes what scipy's loop computes, in the same
order and precision (float32 sums, no reassociation), so the results are the same bit for bit.

Each function works on rows ``r0:r1`` and writes only their outputs (or, for the transposed
product, its own partial sums), so callers run row blocks side by side on threads. Indices are
read as unsigned: numba checks a signed index for wrap-around on every access, which made the
product 1.5-2x slower than scipy's.
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = {"nopython": True, "nogil": True, "cache": True}


@numba.jit(**_JIT)
def rows_matvec(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, x: np.ndarray, r0: int, r1: int,
                skip: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = sum_k data[k] * x[indices[k]]`` for rows ``r0:r1``; 0 where ``skip[r]``.

    ``skip`` may be empty (every row). float32 sums in index order, as scipy's ``csr_matvec``.
    """
    any_skip = skip.size > 0
    for r in range(r0, r1):
        if any_skip and skip[r]:
            out[r] = 0
            continue
        start, end = indptr[r], indptr[r + 1]
        values, columns = data[start:end], indices[start:end]
        total = np.float32(0.0)
        for k in range(end - start):
            total += values[k] * x[np.uint64(columns[k])]
        out[r] = total


@numba.jit(**_JIT)
def rows_rmatvec(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, y: np.ndarray, r0: int, r1: int,
                 out: np.ndarray) -> None:
    """``out += data[r, :] * y[r]`` over rows ``r0:r1`` in order, rows where ``y`` is 0 left out.

    A left-out row would add exact zeros, so ``out`` (float32) holds the product over every row of
    the range, as scipy's ``csc_matvec`` on the range's transpose computes it.
    """
    for r in range(r0, r1):
        weight = y[r]
        if weight == 0:
            continue
        start, end = indptr[r], indptr[r + 1]
        values, columns = data[start:end], indices[start:end]
        for k in range(end - start):
            out[np.uint64(columns[k])] += values[k] * weight


@numba.jit(**_JIT)
def rows_group_sums(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, group_of_column: np.ndarray, r0: int,
                    r1: int, out: np.ndarray) -> None:
    """``out[r, g] = sum of |data[r, j]|`` over the columns ``j`` of group ``g``, rows ``r0:r1``."""
    for r in range(r0, r1):
        start, end = indptr[r], indptr[r + 1]
        values, columns = data[start:end], indices[start:end]
        for k in range(end - start):
            out[r, group_of_column[np.uint64(columns[k])]] += abs(values[k])


@numba.jit(**_JIT)
def rows_under_limits(group_sums: np.ndarray, base_dose: np.ndarray, rise: np.ndarray, limits: np.ndarray,
                      row_nonzeros: np.ndarray, r0: int, r1: int, skip: np.ndarray) -> int:
    """``skip[r] = base_dose[r] + sum_g group_sums[r, g] * rise[g] < limits[r]`` for rows ``r0:r1``
    (float64); returns the nonzeros of the rows it marks."""
    marked = 0
    for r in range(r0, r1):
        limit = limits[r]
        if limit <= 0:
            skip[r] = False
            continue
        bound = np.float64(base_dose[r])
        sums = group_sums[r]
        for g in range(rise.size):
            bound += np.float64(sums[g]) * rise[g]
        skip[r] = bound < limit
        if skip[r]:
            marked += row_nonzeros[r]
    return marked
