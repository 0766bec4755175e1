"""Far-scatter correction of a dose influence matrix.

The sparse matrix keeps each bixel's dose only within the kernel's lateral cutoff; the scatter
beyond it (a few % of the dose, up to a third of it in a low-dose concavity such as TG-119's core,
where it comes from the bixels that treat the target around it) is left out. Optimizing on the
matrix alone therefore underestimates exactly the dose an organ at risk next to the target gets,
and a plan that meets its goals on the matrix misses them on the final, full-kernel dose.

The correction scales every row of the matrix by the ratio of a probe fluence's full-kernel dose
to its matrix dose (a per-voxel factor >= 1, computed once). Far scatter varies slowly with the
fluence, so the ratio of one probe (the first optimized fluence, or the standard plan's fluence
on a device's bixels) carries over to the fluences the optimizer then tries; scaling rows keeps
the matrix's sparsity and its linearity in the fluence, so the normalization to the prescription
stays exact.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

MAX_RATIO = 4.0
"""Cap on a voxel's factor: where the matrix dose is tiny the ratio of two small numbers is noise."""
FLOOR_FRACTION_OF_MAX = 0.01
"""Voxels whose matrix dose is under this fraction of the maximum keep factor 1 (no information)."""


def far_scatter_ratio(matrix_dose_gy: np.ndarray, full_dose_gy: np.ndarray) -> np.ndarray:
    """Per-voxel factor that turns the matrix dose of a probe fluence into its full-kernel dose.

    Parameters
    ----------
    matrix_dose_gy : np.ndarray
        Dose of the probe fluence from the (cut-off) influence matrix, Gy, any shape.
    full_dose_gy : np.ndarray
        Dose of the same fluence with the full kernel, Gy, same number of voxels.

    Returns
    -------
    np.ndarray
        float32, flat (C order), in ``[1, MAX_RATIO]``; 1 where the matrix dose is under
        ``FLOOR_FRACTION_OF_MAX`` of its maximum.
    """
    matrix = np.asarray(matrix_dose_gy, dtype=np.float64).ravel()
    full = np.asarray(full_dose_gy, dtype=np.float64).ravel()
    if matrix.shape != full.shape:
        raise ValueError(f"matrix dose has {matrix.size} voxels, full-kernel dose {full.size}")
    ratio = np.ones(matrix.size)
    informative = matrix > FLOOR_FRACTION_OF_MAX * max(float(matrix.max(initial=0.0)), 0.0)
    ratio[informative] = np.clip(full[informative] / matrix[informative], 1.0, MAX_RATIO)
    return ratio.astype(np.float32)


def with_far_scatter(dij: sp.spmatrix, ratio: np.ndarray) -> sp.csr_matrix:
    """The influence matrix with every row scaled by its voxel's :func:`far_scatter_ratio`.

    Parameters
    ----------
    dij : scipy.sparse matrix
        ``(n_voxels, n_bixels)``.
    ratio : np.ndarray
        ``n_voxels`` factors.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, same sparsity as ``dij``; a CSR ``dij`` lends it its index arrays (only the
        values are new: half the memory of a copy, for matrices of tens of millions of entries).
    """
    ratio = np.asarray(ratio, dtype=np.float32).ravel()
    if ratio.size != dij.shape[0]:
        raise ValueError(f"{ratio.size} factors for a matrix of {dij.shape[0]} rows")
    dij = sp.csr_matrix(dij)
    data = np.repeat(ratio, np.diff(dij.indptr))
    data *= dij.data
    return sp.csr_matrix((data, dij.indices, dij.indptr), shape=dij.shape)
