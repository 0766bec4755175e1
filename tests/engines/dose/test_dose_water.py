"""The standard 6 MV model against published water data, computed with the full engine.

Reference values (6 MV flattened beams, water, SSD 100 cm): BJR Supplement 25 (1996) and Varian
representative beam data (Chang et al., Med Phys 39, 2012, 6981; Glide-Hurst et al., JACMP 14(1),
2013, 4068): d_max = 15 mm and %dd(10) = 66-67 % for 10 x 10 cm2; IROC-Houston Varian 6 MV
reference data (Kerns et al., Med Phys 43, 2016, 2374) for output factors at 10 cm depth. The
tolerance is the issue's 2 % / 2 mm.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.dose import water
from rtgrid.engines.dose.machine import load_machine

# (field mm, depth mm, percent depth dose) -- published 6 MV values, SSD 100 cm
PUBLISHED_PDD = [
    (100, 50, 86.6), (100, 100, 66.8), (100, 200, 38.5),
    (40, 100, 62.0), (200, 100, 70.4),
]
# total scatter factor at 10 cm depth, SSD 90 cm, relative to 10 x 10 cm2
PUBLISHED_OUTPUT_FACTORS = {40: 0.872, 60: 0.930, 200: 1.100, 300: 1.140}


@pytest.fixture(scope="module")
def machine():
    return load_machine()


def _agrees(depths: np.ndarray, percent: np.ndarray, depth_ref: float, value_ref: float) -> bool:
    """2 % (of the maximum) / 2 mm: dose difference or distance to agreement."""
    if abs(np.interp(depth_ref, depths, percent) - value_ref) <= 2.0:
        return True
    near = np.abs(depths - depth_ref) <= 2.0
    return bool(np.any(np.abs(percent[near] - value_ref) <= 0.5) or (percent[near].min() <= value_ref <= percent[near].max()))


def test_10x10_dmax_pdd10_and_mu_calibration(machine) -> None:
    depths, dose = water.depth_dose(machine, 100.0, 1000.0)
    percent = 100.0 * dose / dose.max()
    assert abs(water.depth_of_maximum_mm(depths, dose) - 15.0) <= 2.0
    assert 65.0 <= np.interp(100.0, depths, percent) <= 68.0
    # 1 cGy per MU at d_max for 10 x 10 at SSD 100 (TG-51 reference conditions)
    assert np.interp(15.0, depths, dose) == pytest.approx(0.01, rel=0.005)


@pytest.mark.parametrize(("field", "depth", "value"), PUBLISHED_PDD)
def test_pdd_matches_published_6mv(machine, field: float, depth: float, value: float) -> None:
    depths, dose = water.depth_dose(machine, float(field), 1000.0)
    assert _agrees(depths, 100.0 * dose / dose.max(), depth, value)


@pytest.mark.parametrize(("field", "value"), sorted(PUBLISHED_OUTPUT_FACTORS.items()))
def test_output_factors_match_published(machine, field: float, value: float) -> None:
    assert water.output_factor(machine, float(field), 100.0, 900.0) == pytest.approx(value, rel=0.02)


@pytest.mark.parametrize(("depth", "width"), [(15.0, 4.0), (100.0, 5.5)])
def test_penumbra_80_20_is_realistic(machine, depth: float, width: float) -> None:
    positions, dose = water.profile(machine, 100.0, depth, 1000.0)
    assert abs(water.penumbra_80_20_mm(positions, dose) - width) <= 2.0
    # field edge (50 % level) at the geometric edge projected to that depth, within 2 mm
    half = 50.0 * (1000.0 + depth) / 1000.0
    rel = dose / np.interp(0.0, positions, dose)
    right = positions >= 0
    edge = np.interp(0.5, rel[right][::-1], positions[right][::-1])
    assert abs(edge - half) <= 2.0
