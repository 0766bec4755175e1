"""Plan conversion end to end on a small water phantom: a standard plan made on the standard
machine, converted by reuse (same MLC) and by dose mimicking (other MLCs), sequenced, refined and
recomputed from the segments; and a target too long for a device's field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtgrid.engines.conversion.convert import convert_plan
from rtgrid.engines.conversion.device import load_device
from rtgrid.engines.conversion.leaf_grid import device_leaf_grid, lattice_cells
from rtgrid.engines.conversion.mimic import DoseMimickingError, tightened_order
from rtgrid.engines.conversion.segment_dose import segments_dose
from rtgrid.engines.conversion.sequencing import sequence_beam
from rtgrid.engines.conversion.standard_plan import StandardPlan
from rtgrid.engines.dose.beams import Beam, equispaced_gantry_angles
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.dose.pencil_beam import compute_beam_dose
from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.optimization.coplanar_plan import compute_dose_influence, optimize_plan
from rtgrid.engines.optimization.dvh import dose_at_volume
from rtgrid.engines.optimization.order import load_order

ORDER = """
prescription: {target: PTV, dose_gy: 60, fractions: 30}
constraints:
  - {structure: OAR, type: max_dvh, dose_gy: 30, volume_pct: 10, priority: 2}
  - {structure: BODY, type: max_dose, dose_gy: 66, priority: 3}
"""


def water_case(shape=(10, 36, 40), spacing_mm=4.0, ptv_half_length_mm=16.0):
    """Elliptic water cylinder (LPS, HFS) with a round PTV on the axis and an OAR just posterior."""
    nz, ny, nx = shape
    origin = -(np.array([nx, ny, nz]) - 1) / 2 * spacing_mm
    z, y, x = np.meshgrid(*(origin[2 - a] + spacing_mm * np.arange(shape[a]) for a in range(3)), indexing="ij")
    body = (x / 75) ** 2 + (y / 65) ** 2 <= 1
    ptv = (x**2 + y**2 <= 20.0**2) & (np.abs(z) <= ptv_half_length_mm)
    oar = (x**2 + (y - 34.0) ** 2 <= 9.0**2) & (np.abs(z) <= ptv_half_length_mm + 4) & ~ptv
    density = Volume(np.where(body, 1.0, 0.0).astype(np.float32), origin, (spacing_mm,) * 3)
    return density, {"PTV": ptv, "OAR": oar, "BODY": body}


@pytest.fixture(scope="module")
def standard_case():
    torch.set_num_threads(1)
    density, masks = water_case()
    machine = load_machine()
    influence = compute_dose_influence(density, masks, "PTV", "BODY", machine, equispaced_gantry_angles(5), dose_grid_mm=4.0)
    order = load_order(ORDER, influence.masks)
    result = optimize_plan(influence, order, machine, "BODY", max_iter=60, solver="torch", device="cpu")
    plan = StandardPlan.from_optimization(machine, influence.bixels, result.weights, influence.dose_grid, result.dose_gy,
                                          order, "BODY")
    return plan, influence


def test_standard_plan_round_trips_as_bytes(standard_case):
    plan, _ = standard_case
    data = plan.to_bytes()
    assert b"pickle" not in data[:64]
    back = StandardPlan.from_bytes(data)
    assert back.machine_hash == plan.machine_hash and back.order == plan.order and back.body == "BODY"
    assert back.dose.same_grid(plan.dose) and np.array_equal(back.dose.voxels, plan.dose.voxels)
    for a, b in zip(plan.bixels, back.bixels):
        assert np.array_equal(a.ix, b.ix) and np.array_equal(a.iy, b.iy) and a.beam.gantry_deg == b.beam.gantry_deg
    for a, b in zip(plan.weights, back.weights):
        assert np.array_equal(a, b)


def _check_device_plan(device_plan, influence, plan, device):
    ptv = influence.masks["PTV"]
    # every beam deliverable, every segment above the device's minimum MU
    assert device_plan.violations == ()
    assert all(s.mu >= device.min_segment_mu - 1e-6 for segs in device_plan.segments for s in segs)
    # the dose from the segments themselves vs the ideal fluence's dose, in the target: within 3 %
    # of the prescription on average, 8 % at worst (sequencing, MU refinement, full kernel)
    diff = (device_plan.dose.voxels - device_plan.ideal_dose_gy)[ptv] / 60.0
    assert abs(diff.mean()) <= 0.03 and np.abs(diff).max() <= 0.08
    # normalised like the standard plan, close to its OAR dose
    assert dose_at_volume(device_plan.dose.voxels[ptv].astype(float), 95.0) == pytest.approx(60.0, rel=1e-4)
    oar = influence.masks["OAR"]
    ref_d10 = dose_at_volume(plan.dose.voxels[oar].astype(float), 10.0)
    assert dose_at_volume(device_plan.dose.voxels[oar].astype(float), 10.0) <= ref_d10 + 0.1 * 60.0


def test_same_mlc_reuses_the_standard_fluence(standard_case):
    plan, influence = standard_case
    device = load_device("varian-truebeam-m120-6x")
    device_plan = convert_plan(plan, influence.dose_grid, influence.masks, device)
    assert device_plan.reused_standard_plan
    # reuse: the device's ideal fluence is the standard fluence, bixel for bixel (same 5 mm lattice)
    first = device_plan.fluence_maps[0] * 30
    assert first.sum() == pytest.approx(plan.weights[0].sum(), rel=1e-9)
    _check_device_plan(device_plan, influence, plan, device)


def test_other_mlc_is_reoptimized_by_dose_mimicking(standard_case):
    plan, influence = standard_case
    device = load_device("elekta-synergy-mlci2-6mv")
    device_plan = convert_plan(plan, influence.dose_grid, influence.masks, device)
    assert not device_plan.reused_standard_plan
    assert device_plan.coincidence.components["mlc"].sub_scores["interdigitation"] == 0.5
    # the device bixels follow its 10 mm leaves; the Y jaws close on the target's ends
    for g in device_plan.leaf_grids:
        assert np.allclose(np.diff(g.row_edges_mm[1:-1]), 10.0) and np.diff(g.row_edges_mm)[[0, -1]].max() <= 10.0
        assert all(g.row_edges_mm[0] <= s.jaw_y_mm[0] and s.jaw_y_mm[1] <= g.row_edges_mm[-1]
                   for s in device_plan.segments[device_plan.leaf_grids.index(g)])
    _check_device_plan(device_plan, influence, plan, device)
    # the mimicked ideal dose reproduces the reference in the target within a few %
    ptv = influence.masks["PTV"]
    assert np.abs(device_plan.ideal_dose_gy[ptv] - plan.dose.voxels[ptv]).mean() <= 0.03 * 60.0
    # the matrix it was optimized on, corrected for far scatter with the mimicked fluence itself,
    # gives that fluence's full-kernel dose (a probe with the standard fluence alone: 0.07 Gy off)
    full = np.zeros(influence.dose_grid.shape)
    for grid, fluence in zip(device_plan.leaf_grids, device_plan.fluence_maps):
        cells, aggregation = lattice_cells(grid, device.machine.sad_mm)
        full += compute_beam_dose(influence.dose_grid, influence.masks["BODY"], grid.beam, cells, device.machine,
                                  aggregation @ grid.from_map(fluence * 30))
    assert np.abs(device_plan.ideal_dose_gy - full)[influence.masks["BODY"]].max() <= 0.02


def test_y_jaws_close_on_a_target_that_ends_inside_a_leaf():
    # MLCi2's 10 mm leaves: the target (plus 5 mm margin) ends at Y = 15 mm, halfway along a leaf
    density, masks = water_case(shape=(16, 36, 40), ptv_half_length_mm=12.0)
    device = load_device("elekta-synergy-mlci2-6mv")
    beam = Beam(0.0, 0.0, 0.0, np.zeros(3))
    grid, _ = device_leaf_grid(beam, masks["PTV"], density, device)
    assert grid.row_edges_mm[-1] == pytest.approx(15.0)
    assert set(grid.row_edges_mm[1:-1]) <= set(device.leaf_boundaries_mm)  # inner edges: the leaves'
    segments = sequence_beam(grid.to_map(np.ones(grid.n_bixels)), grid, device)
    assert [s.jaw_y_mm[1] for s in segments] == [pytest.approx(15.0)]
    # the field edge (50 % of the axis dose, geometric for a beam at 0 deg through the isocenter)
    # lies at the jaw, 15 mm, not at the leaf's end, 20 mm
    dose = segments_dose(density, masks["BODY"], beam, segments, device)
    ny, nx = density.shape[1:]
    along_z = dose[:, ny // 2 - 1:ny // 2 + 1, nx // 2 - 1:nx // 2 + 1].mean(axis=(1, 2))
    z = density.origin_mm[2] + density.spacing_mm[2] * np.arange(density.shape[0])
    upper = z >= 0
    edge = np.interp(-0.5, -along_z[upper] / along_z[np.argmin(np.abs(z))], z[upper])
    assert edge == pytest.approx(15.0, abs=1.0)


def test_target_longer_than_the_field_is_reported():
    # a 260 mm long target along the couch axis (BEV Y at gantry 0) on the HD120's 220 mm bank
    density, masks = water_case(shape=(36, 12, 14), spacing_mm=8.0, ptv_half_length_mm=130.0)
    device = load_device("varian-truebeam-hd120-6x")
    grid, violations = device_leaf_grid(Beam(0.0, 0.0, 0.0, np.zeros(3)), masks["PTV"], density, device)
    assert [v.kind for v in violations] == ["field_size"]
    assert "beyond the leaf bank of varian-truebeam-hd120-6x (-110.0 .. 110.0 mm, maximum field Y 220 mm)" in violations[0].message
    assert grid.shape[0] == device.n_pairs  # every pair used, the rest cannot be reached
    assert not device_leaf_grid(Beam(0.0, 0.0, 0.0, np.zeros(3)), masks["PTV"], density, load_device("varian-truebeam-m120-6x"))[1]


def test_tightened_order_asks_more_of_the_goals_a_device_plan_missed():
    order = load_order(ORDER.replace("constraints:\n", "constraints:\n  - {structure: PTV, type: min_dvh, dose_gy: 60, volume_pct: 95}\n"),
                       ("PTV", "OAR", "BODY"))
    shortfalls = [0.0] * len(order.constraints)
    upper = next(i for i, c in enumerate(order.constraints) if not c.is_lower_bound)
    lower = next(i for i, c in enumerate(order.constraints) if c.is_lower_bound)
    shortfalls[upper], shortfalls[lower] = 1.5, 0.5
    tightened = tightened_order(order, shortfalls)
    for i, (before, after) in enumerate(zip(order.constraints, tightened.constraints)):
        expected = {upper: before.dose_gy - 1.5, lower: before.dose_gy + 0.5}.get(i, before.dose_gy)
        assert after.dose_gy == pytest.approx(expected) and after.structure == before.structure
    assert tightened.prescription == order.prescription
    # never below 0 Gy; a wrong number of shortfalls is refused
    assert tightened_order(order, [1e3 if i == upper else 0.0 for i in range(len(shortfalls))]).constraints[upper].dose_gy == 0.0
    with pytest.raises(DoseMimickingError, match="constraints"):
        tightened_order(order, shortfalls[:-1])
