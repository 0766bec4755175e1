"""HU -> relative electron density tables and resampling onto the dose grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtgrid.engines.dose.density import DensityTableError, default_density_table, hu_to_relative_electron_density, load_density_table
from rtgrid.engines.dose.grid import resample_mask, resample_to_dose_grid
from rtgrid.engines.imaging.volume import Volume


def test_default_table_end_points_water_and_clamping() -> None:
    table = default_density_table()
    assert "CIRS" in table.source
    red = hu_to_relative_electron_density(np.array([-1024.0, -1000.0, 0.0, 20.0, 5000.0]))
    assert red.dtype == np.float32
    np.testing.assert_allclose(red, [0.001, 0.001, 1.0, 1.02, 2.6], rtol=1e-6)


def test_scanner_override_table(tmp_path: Path) -> None:
    path = tmp_path / "scanner.yaml"
    path.write_text("schema: rtgrid-density-table/1\nid: s\nversion: 1\nsource: commissioning 2024\npoints: [[-1000, 0.0], [1000, 2.0]]\n")
    table = load_density_table(path)
    np.testing.assert_allclose(hu_to_relative_electron_density(np.array([-500.0, 250.0]), table), [0.5, 1.25])


@pytest.mark.parametrize(
    ("points", "message"),
    [("[[0, 1.0], [0, 1.1]]", r"points\[1\] HU 0"), ("[[0, -1.0], [10, 1.0]]", "negative"), ("[[0, 1.0]]", "at least two")],
)
def test_bad_tables_are_refused_by_name(tmp_path: Path, points: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"schema: rtgrid-density-table/1\nid: b\nversion: 1\nsource: x\npoints: {points}\n")
    with pytest.raises(DensityTableError, match=message):
        load_density_table(path)


def test_resampling_reproduces_a_linear_field_exactly() -> None:
    # trilinear interpolation is exact for a linear function of position
    shape = (30, 40, 50)
    ct = Volume(np.zeros(shape, np.float32), (-100.0, 20.0, 5.0), (1.2, 0.9, 2.0))
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    pos = ct.index_to_lps(np.stack([i, j, k], axis=-1).astype(float))
    field = lambda p: 2.0 * p[..., 0] - 0.5 * p[..., 1] + 0.25 * p[..., 2]  # noqa: E731
    dose_grid = resample_to_dose_grid(ct.with_voxels(field(pos).astype(np.float32)), 3.0)
    assert np.allclose(dose_grid.spacing_mm, 3.0)
    # the dose grid covers the CT's extent (faces) to within one dose voxel
    extent = np.array(shape[::-1]) * ct.spacing_mm
    assert np.all(np.array(dose_grid.shape[::-1]) * 3.0 <= extent + 1e-9)
    assert np.all(np.array(dose_grid.shape[::-1]) * 3.0 > extent - 3.0)
    kk, jj, ii = np.meshgrid(*(np.arange(1, n - 1) for n in dose_grid.shape), indexing="ij")
    centres = dose_grid.index_to_lps(np.stack([ii, jj, kk], axis=-1).astype(float))
    np.testing.assert_allclose(dose_grid.voxels[1:-1, 1:-1, 1:-1], field(centres), atol=1e-3)


def test_resampled_sphere_keeps_its_volume() -> None:
    ct = Volume(np.zeros((80, 80, 80), np.float32), (-39.5, -39.5, -39.5), (1.0, 1.0, 1.0))
    c = np.arange(80) - 39.5
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    sphere = xx**2 + yy**2 + zz**2 <= 25.0**2
    dst = resample_to_dose_grid(ct, 3.0)
    mask = resample_mask(sphere, ct, dst)
    assert mask.sum() * 27.0 == pytest.approx(4.0 / 3.0 * np.pi * 25.0**3, rel=0.05)


def test_mask_resampling_onto_a_rotated_grid_keeps_the_volume() -> None:
    ct = Volume(np.zeros((60, 60, 60), np.float32), (-29.5, -29.5, -29.5), (1.0, 1.0, 1.0))
    c = np.arange(60) - 29.5
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    box = (np.abs(xx) <= 20) & (np.abs(yy) <= 10) & (np.abs(zz) <= 15)
    rotated = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i along +y, j along -x
    dst = Volume(np.zeros((20, 20, 20), np.float32), (28.5, -28.5, -28.5), (3.0, 3.0, 3.0), rotated)
    mask = resample_mask(box, ct, dst)
    assert mask.sum() * 27.0 == pytest.approx(box.sum(), rel=0.1)
    kji = np.argwhere(mask)
    lps = dst.index_to_lps(kji[:, ::-1].astype(float))
    assert np.abs(lps[:, 0]).max() <= 21.0 and np.abs(lps[:, 1]).max() <= 11.0
