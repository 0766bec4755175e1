"""Far-scatter correction: the cut-off matrix, rows scaled by one probe's full/matrix dose ratio,
reproduces the full-kernel dose of other fluences far better than the matrix alone."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rtgrid.engines.dose.beams import Beam, make_bixel_grid
from rtgrid.engines.dose.far_scatter import MAX_RATIO, far_scatter_ratio, with_far_scatter
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.dose.pencil_beam import compute_beam_dij, compute_beam_dose
from rtgrid.engines.imaging.volume import Volume


def test_ratio_is_full_over_matrix_clipped_and_one_where_the_matrix_says_nothing() -> None:
    matrix = np.array([10.0, 10.0, 10.0, 0.05, 0.0])
    full = np.array([12.0, 9.0, 80.0, 0.2, 0.3])
    ratio = far_scatter_ratio(matrix, full)
    assert ratio.dtype == np.float32
    np.testing.assert_allclose(ratio, [1.2, 1.0, MAX_RATIO, 1.0, 1.0])
    with pytest.raises(ValueError, match="5 voxels"):
        far_scatter_ratio(matrix, full[:4])


def test_rows_are_scaled_and_the_sparsity_kept() -> None:
    dij = sp.random(50, 8, density=0.2, format="csr", random_state=3, dtype=np.float32)
    ratio = np.linspace(1.0, 2.0, 50).astype(np.float32)
    corrected = with_far_scatter(dij, ratio)
    assert corrected.nnz == dij.nnz and corrected.dtype == np.float32
    np.testing.assert_allclose(corrected.toarray(), ratio[:, None] * dij.toarray(), rtol=1e-6)
    assert np.shares_memory(corrected.indices, dij.indices)  # only the values are new
    assert not np.shares_memory(corrected.data, dij.data)
    with pytest.raises(ValueError, match="49 factors"):
        with_far_scatter(dij, ratio[:49])


def test_the_correction_carries_over_to_other_fluences() -> None:
    # A water cylinder, one anterior beam on a target of two wide bars and a spared core in the gap
    # between them: the core's dose is scatter from the bars, in part from bixels beyond the cutoff.
    machine = load_machine()
    n = 41
    c = (np.arange(n) - n // 2) * 3.0
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    body = xx**2 + yy**2 <= 55.0**2
    density = Volume(np.where(body, 1.0, 0.001).astype(np.float32), (c[0], c[0], c[0]), (3.0, 3.0, 3.0))
    target = (np.abs(xx) >= 20.0) & (np.abs(xx) <= 50.0) & (np.abs(yy) <= 15.0) & (np.abs(zz) <= 15.0)
    core = (np.abs(xx) <= 6.0) & (np.abs(yy) <= 10.0) & (np.abs(zz) <= 15.0)
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    bixels = make_bixel_grid(beam, target, density, machine)
    dij = compute_beam_dij(density, body, beam, bixels, machine)

    rng = np.random.default_rng(11)
    probe = rng.uniform(0.8, 1.2, bixels.n_bixels)
    ratio = far_scatter_ratio(dij @ probe.astype(np.float32), compute_beam_dose(density, body, beam, bixels, machine, probe))
    corrected = with_far_scatter(dij, ratio)
    assert ratio.reshape(density.shape)[core].mean() > 1.05  # there is far scatter to correct

    other = probe * rng.uniform(0.6, 1.4, bixels.n_bixels)  # a fluence the optimizer might try next
    full = compute_beam_dose(density, body, beam, bixels, machine, other).ravel()
    raw_error = np.abs(dij @ other.astype(np.float32) - full)[core.ravel()].mean()
    corrected_error = np.abs(corrected @ other.astype(np.float32) - full)[core.ravel()].mean()
    assert corrected_error < 0.3 * raw_error, (corrected_error, raw_error)
