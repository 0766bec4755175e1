"""Device catalog: the device files load, their MLC geometry matches the public specifications,
and each commissioned kernel reproduces that device's own published-typical beam data."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.conversion.device import DeviceModelError, list_devices, load_device
from rtgrid.engines.dose.machine import STANDARD_MACHINE_ID
from rtgrid.engines.dose.water import depth_dose

# (id, pairs, narrowest leaf mm, Y extent of the bank mm, interdigitation) from the vendors' specifications
SPECS = {
    "varian-truebeam-m120-6x": (60, 5.0, 400.0, True),
    "varian-truebeam-hd120-6x": (60, 2.5, 220.0, True),
    "elekta-versahd-agility-6mv": (80, 5.0, 400.0, True),
    "elekta-synergy-mlci2-6mv": (40, 10.0, 400.0, False),
}


def test_catalog_holds_the_public_mlc_geometries():
    assert set(SPECS) <= set(list_devices())
    for device_id, (pairs, narrowest, extent, interdigitation) in SPECS.items():
        device = load_device(device_id)
        bounds = device.leaf_boundaries_mm
        assert device.n_pairs == pairs and bounds.size == pairs + 1
        assert min(device.machine.leaf_widths_mm) == narrowest
        assert bounds[-1] - bounds[0] == pytest.approx(extent) and bounds[0] == pytest.approx(-extent / 2)
        assert device.machine.interdigitation is interdigitation
        assert device.min_segment_mu > 0 and device.max_segments_per_beam > 0
    hd = load_device("varian-truebeam-hd120-6x")
    widths = np.diff(hd.leaf_boundaries_mm)
    assert np.count_nonzero(widths == 2.5) == 32 and np.count_nonzero(widths == 5.0) == 28
    assert np.allclose(hd.leaf_boundaries_mm[14], -40.0)  # the 8 cm high-definition centre


def test_standard_machine_is_not_a_device():
    with pytest.raises(DeviceModelError, match="has no 'device' section: it is a planning model"):
        load_device(STANDARD_MACHINE_ID)


def test_bad_device_field_is_named(tmp_path):
    text = open(load_device("elekta-synergy-mlci2-6mv").machine.source_path).read()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("min_segment_mu: 2.0", "min_segment_mu: -1"))
    with pytest.raises(DeviceModelError, match="'device.min_segment_mu' must be a number > 0, got -1"):
        load_device(bad)


@pytest.mark.parametrize("device_id", sorted(SPECS))
def test_kernel_reproduces_the_device_depth_dose(device_id):
    """Commissioning check: the dose engine's 10 x 10 cm2 depth dose with the device's fitted kernel
    agrees with the device's tabulated PDD (its published-typical data) within 1 %."""
    machine = load_device(device_id).machine
    table = next(t for t in machine.pdd_tables if t.field_mm == 100.0)
    depths, dose = depth_dose(machine, 100.0, max_depth_mm=260.0)
    pdd = 100.0 * np.interp(table.depths_mm, depths, dose) / dose.max()
    np.testing.assert_allclose(pdd, table.percent, atol=1.0)
    assert pdd[list(table.depths_mm).index(100)] == pytest.approx(machine.beam_quality_pdd10x_percent, abs=1.0)
