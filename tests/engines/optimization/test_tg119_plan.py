"""The AAPM TG-119 C-shape test, planned end to end with the standard machine on a 5 mm dose grid.

TG-119 goals (Ezzell et al., Med. Phys. 36 (2009) 5359): PTV D95 >= 50 Gy, PTV D10 <= 55 Gy,
core D10 <= 25 Gy (easier) and <= 10 Gy (harder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rtgrid.engines.dose.beams import equispaced_gantry_angles
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.optimization.coplanar_plan import compute_dose_influence, optimize_plan
from rtgrid.engines.optimization.dvh import evaluate_goals, plan_metrics
from rtgrid.engines.optimization.order import load_order
from rtgrid.engines.phantom.tg119 import Tg119Error, load_tg119

ORDER = Path(__file__).resolve().parents[3] / "engines" / "optimization" / "example_order.yaml"


@pytest.fixture(scope="module")
def tg119():
    try:
        return load_tg119()
    except Tg119Error as exc:
        if os.environ.get("CI"):
            pytest.fail(f"TG-119 phantom missing in CI: {exc}")
        pytest.skip(str(exc))


def test_tg119_c_shape_meets_the_goals(tg119):
    machine = load_machine("rtgrid-standard-6mv")
    influence = compute_dose_influence(
        tg119.relative_electron_density, tg119.structures, "OuterTarget", "BODY",
        machine, equispaced_gantry_angles(9), dose_grid_mm=5.0, bixel_mm=5.0,
    )
    assert influence.dij.shape[1] == sum(b.n_bixels for b in influence.bixels)
    order = load_order(ORDER, influence.masks)
    plan = optimize_plan(influence, order, machine, "BODY", max_iter=80)
    assert (plan.weights >= 0).all()
    dose = plan.dose_gy  # the full kernel's, far scatter included
    voxel_cc = influence.dose_grid.voxel_volume_mm3 / 1000.0
    m = plan_metrics(dose, influence.masks, voxel_cc)
    ptv, core = m["OuterTarget"], m["Core"]
    assert ptv["D95"] >= 50.0 - 1e-3
    assert ptv["D10"] <= 55.0
    assert core["D10"] <= 25.0
    # TG-119's harder goal as written, on the full-kernel dose of the 5 mm grid.
    assert core["D10"] <= 10.0, f"core D10 {core['D10']:.2f} Gy"
    goals = {g.goal: g for g in evaluate_goals(order, dose, influence.masks, voxel_cc)}
    assert goals["OuterTarget D95% >= 50 Gy (prescription)"].met
    assert goals["OuterTarget D10% <= 55 Gy"].met
    assert np.isclose(goals["Core D10% <= 10 Gy"].achieved_gy, core["D10"])
