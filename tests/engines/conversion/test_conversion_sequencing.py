"""Leaf sequencing and deliverability on analytic fluences, for every device of the catalog."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from rtgrid.engines.conversion.deliverability import deliverability
from rtgrid.engines.conversion.device import load_device
from rtgrid.engines.conversion.leaf_grid import LeafGrid
from rtgrid.engines.conversion.segment import Segment
from rtgrid.engines.conversion.segment_dose import segment_open_fractions
from rtgrid.engines.conversion.sequencing import refine_segment_mu, sequence_beam
from rtgrid.engines.dose.beams import Beam

DEVICES = ("varian-truebeam-m120-6x", "varian-truebeam-hd120-6x", "elekta-versahd-agility-6mv", "elekta-synergy-mlci2-6mv")
BEAM = Beam(0.0, 0.0, 0.0, np.zeros(3))


def central_grid(device, n_rows: int, n_cols: int, column_mm: float = 5.0) -> LeafGrid:
    """A full leaf grid over ``n_rows`` leaf pairs around the axis and ``n_cols`` columns."""
    first = device.n_pairs // 2 - n_rows // 2
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return LeafGrid(BEAM, first, device.leaf_boundaries_mm[first:first + n_rows + 1].copy(),
                    (np.arange(n_cols + 1) - n_cols // 2) * column_mm, min(column_mm, min(device.machine.leaf_widths_mm)),
                    rows.ravel(), cols.ravel())


def delivered(segments, grid, device) -> np.ndarray:
    """Fluence of the segments on the grid, from their leaf and jaw positions."""
    fractions = segment_open_fractions(segments, grid, device)
    return grid.to_map(fractions @ np.array([s.mu for s in segments]))


def pyramid(n_rows: int, n_cols: int, peak_mu: float) -> np.ndarray:
    r = np.abs(np.arange(n_rows) - (n_rows - 1) / 2) / (n_rows / 2)
    c = np.abs(np.arange(n_cols) - (n_cols - 1) / 2) / (n_cols / 2)
    return peak_mu * np.clip(1.0 - np.maximum(r[:, None], c[None, :]), 0.0, None)


@pytest.mark.parametrize("device_id", DEVICES)
def test_pyramid_is_reproduced_and_deliverable(device_id):
    device = load_device(device_id)
    grid = central_grid(device, 8, 12)
    target = pyramid(8, 12, 40.0)
    n_levels = 8
    segments = sequence_beam(target, grid, device, n_levels=n_levels)
    unit = target.max() / n_levels
    quantised = np.rint(target / unit) * unit  # within half a level of the target, by construction
    error = np.abs(delivered(segments, grid, device) - quantised)
    if device.machine.interdigitation:
        # closed pairs hide behind the X1 jaw: the quantised map is delivered exactly
        assert error.max() <= 1e-9
    else:
        # without interdigitation a closed pair must close between its neighbours' leaves, and its
        # minimum gap (5 mm on the MLCi2 model: half of each 10 mm bixel beside it) leaks there:
        # stated tolerance half a level at worst, a twentieth of a level on average
        assert error.max() <= unit / 2 + 1e-9 and error.mean() <= unit / 20
    assert all(abs(s.mu / unit - round(s.mu / unit)) < 1e-9 for s in segments)  # whole levels
    assert deliverability(segments, device) == []
    assert all(s.mu >= device.min_segment_mu for s in segments)


def test_interdigitation_forbidden_keeps_neighbours_apart():
    # stripes: even pairs open on the left, odd pairs on the right -> one aperture would interdigitate
    target = np.zeros((6, 10))
    target[0::2, 0:3] = 10.0
    target[1::2, 6:9] = 10.0
    free = load_device("elekta-versahd-agility-6mv")
    strict = load_device("elekta-synergy-mlci2-6mv")
    free_segments = sequence_beam(target, central_grid(free, 6, 10), free, n_levels=1)
    assert len(free_segments) == 1  # the interdigitating aperture, allowed on Agility
    grid = central_grid(strict, 6, 10)
    segments = sequence_beam(target, grid, strict, n_levels=1)
    assert len(segments) == 2
    for seg in segments:
        x1, x2 = seg.leaf_x1_mm, seg.leaf_x2_mm
        assert (x1[:-1] <= x2[1:] + 1e-9).all() and (x1[1:] <= x2[:-1] + 1e-9).all()
    np.testing.assert_allclose(delivered(segments, grid, strict), target, atol=1e-9)
    assert deliverability(segments, strict) == []
    # the unconstrained aperture is exactly what the strict device must refuse
    agility_like = Segment(np.full(strict.n_pairs, -5.0), np.full(strict.n_pairs, 5.0), (-25.0, 20.0), (-30.0, 30.0), 10.0)
    x1 = agility_like.leaf_x1_mm.copy()
    x2 = agility_like.leaf_x2_mm.copy()
    x1[20], x2[20] = 5.0, 20.0
    x1[21], x2[21] = -25.0, -10.0
    found = deliverability([Segment(x1, x2, (-25.0, 20.0), (-30.0, 30.0), 10.0)], strict)
    assert [v.kind for v in found] == ["interdigitation"] and "pairs 20 and 21" in found[0].message


def test_deliverability_names_each_limit():
    device = load_device("varian-truebeam-m120-6x")
    n = device.n_pairs
    x1, x2 = np.full(n, -100.0), np.full(n, 100.0)
    x1[30], x2[30] = 0.0, 0.2            # gap below 0.5 mm
    x1[31] = -190.0                       # X1 bank spans 190 mm > 150 mm
    seg = Segment(x1, x2, (-190.0, 100.0), (-10.0, 10.0), 0.5)   # 0.5 MU < 2 MU
    kinds = {v.kind: v.message for v in deliverability([seg] * 41, device, beam=3)}
    assert set(kinds) == {"leaf_gap", "leaf_span", "segment_mu", "segment_count"}
    assert "below the minimum gap 0.5 mm" in kinds["leaf_gap"]
    assert "spans 190.0 mm, beyond the maximum leaf span 150 mm" in kinds["leaf_span"]
    assert "0.50 MU, below the minimum 2 MU" in kinds["segment_mu"]
    wide = Segment(np.full(n, -210.0), np.full(n, 100.0), (-210.0, 100.0), (-10.0, 10.0), 5.0)
    found = {v.kind for v in deliverability([wide], device)}
    assert {"leaf_travel", "jaw_travel"} <= found


def test_refinement_is_nnls_and_respects_minimum_mu():
    rng = np.random.default_rng(3)
    doses = rng.random((200, 8))
    truth = np.array([5.0, 0.0, 3.0, 0.4, 6.0, 0.0, 2.5, 1.0])
    target = doses @ truth
    weights = np.ones(200)
    beams = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    free = refine_segment_mu(doses, target, weights, beams, min_mu=1e-9, max_segments_per_beam=10)
    reference, _ = scipy.optimize.nnls(doses, target)
    np.testing.assert_allclose(free, reference, atol=1e-6)
    limited = refine_segment_mu(doses, target, weights, beams, min_mu=2.0, max_segments_per_beam=10)
    kept = limited[limited > 0]
    assert (kept >= 2.0).all() and limited[3] == 0.0 and limited[7] == 0.0
    few = refine_segment_mu(doses, target, weights, beams, min_mu=1e-9, max_segments_per_beam=2)
    assert np.count_nonzero(few[:4]) <= 2 and np.count_nonzero(few[4:]) <= 2
