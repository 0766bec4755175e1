"""Pencil-beam physics (inverse square, heterogeneity), sharding, and the CPU/GPU paths."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from rtgrid.engines.dose import water
from rtgrid.engines.dose.beams import Beam, make_bixel_grid, open_field_bixels
from rtgrid.engines.dose.kernel import KernelComponent
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.dose.pencil_beam import DoseEngineError, assemble_dij, compute_beam_dij, compute_beam_dose
from rtgrid.engines.imaging.volume import Volume


@pytest.fixture(scope="module")
def machine():
    return load_machine()


def _axis_dose(machine, phantom: Volume, field_mm: float) -> np.ndarray:
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    bixels = open_field_bixels(beam, machine, field_mm, field_mm)
    mask = np.zeros(phantom.shape, bool)
    mask[phantom.shape[0] // 2, :, phantom.shape[2] // 2] = True
    dij = compute_beam_dij(phantom, mask, beam, bixels, machine, lateral_cutoff_mm=float("inf"))
    return (dij @ np.ones(bixels.n_bixels, np.float32)).reshape(phantom.shape)[phantom.shape[0] // 2, :, phantom.shape[2] // 2]


@pytest.mark.parametrize(("ssd_a", "ssd_b"), [(1000.0, 800.0), (1000.0, 1200.0)])
def test_inverse_square_law(machine, ssd_a: float, ssd_b: float) -> None:
    # a narrow-only kernel: on the axis of a broad field the lateral factor is 1, leaving
    # D = C (SAD / (SSD + d))^2 A(d) -- the same depth at two SSDs must follow the inverse square
    narrow = replace(machine, kernel=(KernelComponent("primary", 1.0, 0.2, 0.005, 1.0, 0.0),))
    depth = 100.0
    doses = []
    for ssd in (ssd_a, ssd_b):
        phantom = water.water_phantom(ssd, 1000.0, depth + 5.0, 2.0)
        d = _axis_dose(narrow, phantom, 100.0)
        doses.append(np.interp(depth, (np.arange(d.size) + 0.5), d))
    assert doses[0] / doses[1] == pytest.approx(((ssd_b + depth) / (ssd_a + depth)) ** 2, rel=1e-4)


def test_lung_slab_raises_the_dose_behind_it_by_radiological_depth(machine) -> None:
    phantom = water.water_phantom(1000.0, 1000.0, 200.0, 2.0)
    lung = phantom.voxels.copy()
    lung[:, 50:100, :] = 0.25  # depths 50-100 mm: lung, relative electron density 0.25
    d_water = _axis_dose(machine, phantom, 100.0)
    d_lung = _axis_dose(machine, phantom.with_voxels(lung), 100.0)
    depths = np.arange(d_water.size) + 0.5
    behind = 150.0
    # in front of the slab nothing changes
    assert np.interp(30.0, depths, d_lung) == pytest.approx(np.interp(30.0, depths, d_water), rel=1e-5)
    # behind it the dose is higher than in water ...
    assert np.interp(behind, depths, d_lung) > 1.1 * np.interp(behind, depths, d_water)
    # ... and equals the water dose at the same radiological depth, corrected by inverse square
    radiological = behind - 50.0 * 0.75
    expected = np.interp(radiological, depths, d_water) * ((1000.0 + radiological) / (1000.0 + behind)) ** 2
    assert np.interp(behind, depths, d_lung) == pytest.approx(expected, rel=0.01)


def _small_case(machine):
    """A 10 cm water cylinder (3 mm grid) with a 3 cm cubic target."""
    n = 41
    c = (np.arange(n) - n // 2) * 3.0
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    body = xx**2 + yy**2 <= 55.0**2
    density = Volume(np.where(body, 1.0, 0.001).astype(np.float32), (c[0], c[0], c[0]), (3.0, 3.0, 3.0))
    target = (np.abs(xx) <= 15) & (np.abs(yy) <= 15) & (np.abs(zz) <= 15)
    return density, body, target


def test_sharded_beams_and_voxel_blocks_assemble_to_the_single_computation(machine) -> None:
    density, body, target = _small_case(machine)
    beams = [Beam(g, 0.0, 0.0, np.zeros(3)) for g in (0.0, 120.0, 240.0)]
    bixels = [make_bixel_grid(b, target, density, machine) for b in beams]
    per_beam = [compute_beam_dij(density, body, b, bx, machine) for b, bx in zip(beams, bixels)]
    joined = assemble_dij(per_beam)
    reference = sp.hstack(per_beam, format="csr")
    assert joined.dtype == np.float32 and joined.shape == (density.voxels.size, sum(bx.n_bixels for bx in bixels))
    assert (joined != reference).nnz == 0
    # shards over voxels (two halves of the body) sum to the whole
    half = body.copy()
    half[: body.shape[0] // 2] = False
    parts = [compute_beam_dij(density, m, beams[1], bixels[1], machine) for m in (half, body & ~half)]
    assert abs(parts[0] + parts[1] - per_beam[1]).max() == 0.0
    # release empties the list as it copies
    shards = list(per_beam)
    assert (assemble_dij(shards, release=True) != reference).nnz == 0 and shards == [None] * 3


def test_direct_dose_equals_the_uncut_matrix_times_weights(machine) -> None:
    density, body, target = _small_case(machine)
    beam = Beam(40.0, 0.0, 0.0, np.zeros(3))
    bixels = make_bixel_grid(beam, target, density, machine)
    weights = np.random.default_rng(7).uniform(0.5, 1.5, bixels.n_bixels)
    dij = compute_beam_dij(density, body, beam, bixels, machine, lateral_cutoff_mm=float("inf"))
    dose = compute_beam_dose(density, body, beam, bixels, machine, weights)
    np.testing.assert_allclose(dose.ravel(), dij @ weights.astype(np.float32), atol=1e-4 * dose.max())
    # the default cutoff keeps most of the dose in the target (the rest is far scatter)
    cut = (compute_beam_dij(density, body, beam, bixels, machine) @ weights).reshape(density.shape)
    assert 0.85 < cut[target].mean() / dose[target].mean() < 1.0


def test_rows_are_voxels_in_c_order_and_outside_the_mask_is_empty(machine) -> None:
    density, body, target = _small_case(machine)
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    bixels = make_bixel_grid(beam, target, density, machine)
    dij = compute_beam_dij(density, body, beam, bixels, machine)
    rows_with_dose = np.zeros(density.voxels.size, bool)
    rows_with_dose[np.repeat(np.arange(dij.shape[0]), np.diff(dij.indptr))] = True
    assert not rows_with_dose[~body.ravel()].any()
    dose = (dij @ np.ones(bixels.n_bixels, np.float32)).reshape(density.shape)
    k, j, i = np.unravel_index(np.argmax(dose[:, :, 20]), dose[:, :, 20].shape) + (20,)
    # gantry 0: entrance anterior (-y): the dose maximum near the axis lies in the anterior half
    assert density.index_to_lps(np.array([i, j, k], float))[1] < 0


def test_unknown_device_is_refused(machine) -> None:
    density, body, target = _small_case(machine)
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    with pytest.raises(DoseEngineError, match="device"):
        compute_beam_dij(density, body, beam, make_bixel_grid(beam, target, density, machine), machine, device="tpu")


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, or no driver/device
        return False


@pytest.mark.skipif(not _cuda_available(), reason="needs cupy and a CUDA device")
def test_gpu_path_matches_cpu_path(machine) -> None:
    density, body, target = _small_case(machine)
    for gantry in (0.0, 70.0):
        beam = Beam(gantry, 0.0, 0.0, np.zeros(3))
        bixels = make_bixel_grid(beam, target, density, machine)
        cpu = compute_beam_dij(density, body, beam, bixels, machine, device="cpu")
        gpu = compute_beam_dij(density, body, beam, bixels, machine, device="gpu")
        assert cpu.shape == gpu.shape
        assert abs(cpu - gpu).max() <= 1e-4 * abs(cpu).max()
        weights = np.ones(bixels.n_bixels)
        np.testing.assert_allclose(compute_beam_dose(density, body, beam, bixels, machine, weights, device="gpu"),
                                   compute_beam_dose(density, body, beam, bixels, machine, weights), rtol=0, atol=1e-4 * cpu.max() * 10)
