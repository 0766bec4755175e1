"""The dose engine on several threads gives bitwise the single-thread results; the thread count's sources."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rtgrid.engines.dose import pencil_beam, raytrace
from rtgrid.engines.dose.beams import Beam, beam_axes, make_bixel_grid
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.parallel import ENGINE_THREADS_ENV, EngineThreadsError, engine_threads, ordered_imap, ordered_map
from rtgrid.engines.dose.pencil_beam import assemble_dij, compute_beam_dij, compute_beam_dose
from rtgrid.engines.dose.raytrace import bev_radiological_depth
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.coplanar_plan import full_kernel_beams, full_kernel_dose
from rtgrid.engines.optimization.order import load_order

ORDER = """
name: threads test
prescription: {target: PTV, dose_gy: 60, fractions: 30, normalization_volume_pct: 95}
constraints:
  - {structure: PTV, type: min_dvh, dose_gy: 60, volume_pct: 95, priority: 1}
"""


@pytest.fixture(scope="module")
def machine():
    return load_machine()


@pytest.fixture(scope="module")
def case():
    """A 10 cm water cylinder (3 mm grid) with a lung slab and a bone rod, and a 3 cm target."""
    n = 41
    c = (np.arange(n) - n // 2) * 3.0
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    body = xx**2 + yy**2 <= 55.0**2
    rho = np.where(body, 1.0, 0.001)
    rho[body & (yy < -20) & (yy > -40)] = 0.25
    rho[body & (np.abs(xx - 25) < 6) & (np.abs(yy) < 6)] = 1.6
    density = Volume(rho.astype(np.float32), (c[0], c[0], c[0]), (3.0, 3.0, 3.0))
    target = (np.abs(xx) <= 15) & (np.abs(yy) <= 15) & (np.abs(zz) <= 15)
    return density, body, target


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and slabs small enough that the small case splits into many of each."""
    monkeypatch.setattr(pencil_beam, "BLOCK_ELEMENTS", 20_000)
    monkeypatch.setattr(raytrace, "SLAB_SAMPLES", 5_000)


def _same_csr(a, b) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("gantry_deg", [0.0, 130.0])
def test_dij_is_bitwise_the_same_on_several_threads(machine, case, small_blocks, gantry_deg: float) -> None:
    density, body, target = case
    beam = Beam(gantry_deg, 0.0, 0.0, np.zeros(3))
    bixels = make_bixel_grid(beam, target, density, machine)
    single = compute_beam_dij(density, body, beam, bixels, machine, workers=1)
    assert single.nnz > 10 * pencil_beam.BLOCK_ELEMENTS  # many blocks: the threads share them
    for workers in (2, 3):
        _same_csr(compute_beam_dij(density, body, beam, bixels, machine, workers=workers), single)
    # the exact kernel (every bixel kept) too
    inf = float("inf")
    _same_csr(compute_beam_dij(density, body, beam, bixels, machine, lateral_cutoff_mm=inf, workers=3),
              compute_beam_dij(density, body, beam, bixels, machine, lateral_cutoff_mm=inf, workers=1))


def test_direct_dose_and_plan_dose_are_bitwise_the_same_on_several_threads(machine, case, small_blocks) -> None:
    density, body, target = case
    beams = [Beam(g, 0.0, 0.0, np.zeros(3)) for g in (20.0, 140.0, 260.0)]
    bixels = [make_bixel_grid(b, target, density, machine) for b in beams]
    weights = np.random.default_rng(3).uniform(0.2, 1.5, sum(g.n_bixels for g in bixels))
    one = compute_beam_dose(density, body, beams[0], bixels[0], machine, weights[:bixels[0].n_bixels], workers=1)
    assert one.max() > 0
    three = compute_beam_dose(density, body, beams[0], bixels[0], machine, weights[:bixels[0].n_bixels], workers=3)
    assert np.array_equal(one, three)
    order = load_order(ORDER, {"PTV", "BODY"})
    w1, d1 = full_kernel_dose(full_kernel_beams(density, body, bixels, machine, workers=1), weights, order, target)
    beams_on_two = full_kernel_beams(density, body, bixels, machine, workers=2)
    w2, d2 = full_kernel_dose(beams_on_two, weights, order, target)
    assert np.array_equal(w1, w2) and np.array_equal(d1, d2)
    # a beam traced once gives every later fluence the dose of a fresh computation
    other = weights[::-1].copy()
    assert np.array_equal(full_kernel_dose(beams_on_two, other, order, target)[1],
                          full_kernel_dose(full_kernel_beams(density, body, bixels, machine), other, order, target)[1])


def test_ray_trace_slabs_on_threads_give_the_same_depths(machine, case, small_blocks) -> None:
    density, _, _ = case
    axes = beam_axes(Beam(70.0, 0.0, 0.0, np.zeros(3)), machine.sad_mm)
    from scipy import ndimage

    args = (np, ndimage, density.voxels, density, axes, machine.sad_mm, (-40.0, 40.0), (-35.0, 45.0), 1100.0)
    one = bev_radiological_depth(*args, workers=1)
    four = bev_radiological_depth(*args, workers=4)
    assert one.depth_mm.shape[0] > 10 * max(1, raytrace.SLAB_SAMPLES // np.prod(one.depth_mm.shape[1:]))
    assert one.depth_mm.max() > 50.0
    assert np.array_equal(one.depth_mm, four.depth_mm)


def test_thread_count_comes_from_the_argument_then_the_environment_then_the_cpus(monkeypatch) -> None:
    monkeypatch.delenv(ENGINE_THREADS_ENV, raising=False)
    import os

    assert engine_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(ENGINE_THREADS_ENV, "3")
    assert engine_threads() == 3
    assert engine_threads(5) == 5
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(ENGINE_THREADS_ENV, bad)
        with pytest.raises(EngineThreadsError, match=ENGINE_THREADS_ENV):
            engine_threads()
    for bad_arg in (0, -1, 2.0, True):
        with pytest.raises(EngineThreadsError, match="workers"):
            engine_threads(bad_arg)


def test_bad_thread_count_is_refused_by_the_engine(machine, case, monkeypatch) -> None:
    density, body, target = case
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    bixels = make_bixel_grid(beam, target, density, machine)
    monkeypatch.setenv(ENGINE_THREADS_ENV, "many")
    with pytest.raises(EngineThreadsError, match=ENGINE_THREADS_ENV):
        compute_beam_dij(density, body, beam, bixels, machine)


def test_ordered_map_keeps_order_and_runs_on_several_threads() -> None:
    seen: set[int] = set()
    gate = threading.Barrier(2, timeout=10)

    def work(x: int) -> int:
        seen.add(threading.get_ident())
        if x < 2:
            gate.wait()  # both first items must run at once: two threads, or a timeout error
        return x * x

    assert ordered_map(work, range(6), 2) == [x * x for x in range(6)]
    assert len(seen) == 2
    assert ordered_map(work, [5], 4) == [25]  # one item runs inline


def test_ordered_imap_keeps_order_runs_a_bounded_few_ahead_and_raises_in_turn() -> None:
    pulled: list[int] = []

    def items():
        for x in range(100):
            pulled.append(x)
            yield x

    results = ordered_imap(lambda x: x * x, items(), 3)
    assert [next(results) for _ in range(2)] == [0, 1]
    assert len(pulled) <= 2 * 3 + 2  # not the whole stream: at most 2 * workers ahead of the consumer
    assert list(results) == [x * x for x in range(2, 100)]

    def fail_on_3(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    failing = ordered_imap(fail_on_3, range(10), 2)
    assert [next(failing) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(failing)


def test_assembly_on_threads_equals_the_single_thread_one(machine, case) -> None:
    density, body, target = case
    beams = [Beam(g, 0.0, 0.0, np.zeros(3)) for g in (0.0, 90.0, 200.0, 300.0)]
    per_beam = [compute_beam_dij(density, body, b, make_bixel_grid(b, target, density, machine), machine, workers=1)
                for b in beams]
    single = assemble_dij(per_beam, workers=1)
    assert single.nnz == sum(m.nnz for m in per_beam)
    offsets = np.cumsum([0] + [m.shape[1] for m in per_beam])
    for n, mat in enumerate(per_beam):  # each beam's columns are its own matrix
        _same_csr(single[:, offsets[n]:offsets[n + 1]].tocsr(), mat)
    shards = list(per_beam)
    _same_csr(assemble_dij(shards, release=True, workers=3), single)
    assert shards == [None] * len(per_beam)
