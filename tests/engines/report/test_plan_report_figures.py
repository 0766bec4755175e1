"""Plan report figures: PNGs that decode at the promised size, and a dose wash placed by LPS geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.phantom import make_phantom
from rtgrid.engines.report.plan_report import (
    DPI,
    DVH_FIGSIZE_IN,
    WASH_COLORBAR_IN,
    WASH_TILE_IN,
    WASH_TITLE_IN,
    PlanReportError,
    dose_on_ct_slice,
    render_dose_wash_png,
    render_dvh_png,
    structure_color,
)


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def lps_of_voxels(grid: Volume) -> np.ndarray:
    nz, ny, nx = grid.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    return grid.index_to_lps(np.stack([i, j, k], axis=-1).astype(np.float64))


def cumulative_dvh(dose: np.ndarray, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    levels = np.linspace(0.0, float(dose.max()), n)
    return levels, 100.0 * (dose[None, :] >= levels[:, None]).mean(axis=1)


def rgb_pixels_near(png: bytes, color: tuple[float, float, float], tol: int = 6) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    target = np.round(np.array(color) * 255).astype(int)
    return int(np.count_nonzero(np.all(np.abs(rgb - target) <= tol, axis=-1)))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((20, 80, 80), (3.0, 3.0, 4.0))


@pytest.fixture(scope="module")
def ptv_centre_mm(phantom) -> np.ndarray:
    k, j, i = np.nonzero(phantom.labels["PTV"])
    return phantom.ct.index_to_lps(np.array([i.mean(), j.mean(), k.mean()]))


@pytest.fixture(scope="module")
def dose_grid(phantom) -> Volume:
    # 5 mm grid, shifted by a non-integer number of CT voxels.
    origin = phantom.ct.origin_mm + np.array([-1.7, 2.2, -0.9])
    return Volume(np.zeros((16, 48, 48), np.float32), origin, (5.0, 5.0, 5.0))


@pytest.fixture(scope="module")
def blob_dose(dose_grid, ptv_centre_mm) -> np.ndarray:
    xyz = lps_of_voxels(dose_grid)
    return 64.0 * np.exp(-np.sum((xyz - ptv_centre_mm) ** 2, axis=-1) / (2 * 20.0**2))


def test_dvh_png_has_size_and_stable_colours() -> None:
    rng = np.random.default_rng(1)
    dvhs = {name: cumulative_dvh(rng.normal(mu, 2.0, 2000).clip(0)) for name, mu in (("PTV", 60), ("Heart", 8))}
    reference = {
        "PTV": cumulative_dvh(rng.normal(61, 3.0, 2000).clip(0)),
        "Esophagus": cumulative_dvh(rng.normal(20, 4, 500).clip(0)),
    }
    png = render_dvh_png(dvhs, reference=reference, title="plan vs standard plan")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (round(DVH_FIGSIZE_IN[0] * DPI), round(DVH_FIGSIZE_IN[1] * DPI))
    # Every structure's curve is drawn in its colour, the reference-only one included.
    for name in ("PTV", "Heart", "Esophagus"):
        assert rgb_pixels_near(png, structure_color(name)) > 100, name
    # A structure absent from the figure leaves no trace of its colour.
    assert rgb_pixels_near(png, structure_color("SpinalCord")) == 0


def test_structure_colours_depend_only_on_the_name() -> None:
    names = ["PTV", "CTV", "GTV", "BODY", "Heart", "Lung_L", "Lung_R", "SpinalCord", "Esophagus", "Parotid_L"]
    colours = [structure_color(n) for n in names]
    assert colours == [structure_color(n) for n in names]
    assert len(set(colours)) == len(names)
    assert structure_color("PTV_60") == structure_color("ptv")


def test_dvh_rejects_bad_curves() -> None:
    with pytest.raises(PlanReportError, match="'PTV'.*must not decrease"):
        render_dvh_png({"PTV": (np.array([0.0, 2.0, 1.0]), np.array([100.0, 50.0, 0.0]))})
    with pytest.raises(PlanReportError, match="'Heart'.*outside 0..100"):
        render_dvh_png({"Heart": (np.array([0.0, 1.0]), np.array([150.0, 0.0]))})
    with pytest.raises(PlanReportError, match="equal, non-zero length"):
        render_dvh_png({"Cord": (np.array([0.0, 1.0]), np.array([100.0]))})


def test_linear_dose_resamples_exactly_onto_the_ct() -> None:
    # Trilinear interpolation reproduces an affine field exactly: any geometry error shows.
    ct = Volume(np.zeros((12, 40, 44), np.int16), (-60.0, -55.0, -20.0), (1.2, 1.3, 2.5), rotation_z(7.0))
    dose_grid = Volume(np.zeros((14, 30, 30), np.float32), (-75.3, -68.1, -24.6), (4.0, 4.5, 3.0), rotation_z(-20.0))
    gradient, offset = np.array([0.05, -0.03, 0.08]), 30.0
    dose = (lps_of_voxels(dose_grid) @ gradient + offset).astype(np.float32)
    ct_xyz = lps_of_voxels(ct)
    for k in (0, 5, 11):
        resampled = dose_on_ct_slice(dose, dose_grid, ct, k)
        index = dose_grid.lps_to_index(ct_xyz[k])
        inside = np.all((index >= 0) & (index <= np.array(dose_grid.shape[::-1]) - 1), axis=-1)
        assert 500 < inside.sum() < inside.size  # the CT slice reaches beyond the dose grid
        np.testing.assert_allclose(resampled[inside], ct_xyz[k][inside] @ gradient + offset, atol=1e-3)
        assert np.all(resampled[~inside] == 0.0)  # no dose outside the dose grid


def test_dose_blob_lands_on_the_right_ct_pixel(phantom, dose_grid) -> None:
    ct = phantom.ct
    # A blob centred on CT pixel (i, j, k) = (33, 43, 9): between dose voxel centres (the grids are
    # shifted by 1.7, 2.2, 0.9 mm), so a half-voxel or axis-order slip moves it by > 0.5 pixel.
    target_ijk = np.array([33.0, 43.0, 9.0])
    centre_mm = ct.index_to_lps(target_ijk)
    fraction = dose_grid.lps_to_index(centre_mm) % 1
    assert np.all((fraction > 0.1) & (fraction < 0.9))
    dose = 50.0 * np.exp(-np.sum((lps_of_voxels(dose_grid) - centre_mm) ** 2, axis=-1) / (2 * 8.0**2))
    plane = dose_on_ct_slice(dose, dose_grid, ct, 9)
    j, i = np.mgrid[0 : plane.shape[0], 0 : plane.shape[1]]
    centroid = np.array([(plane * i).sum(), (plane * j).sum()]) / plane.sum()
    np.testing.assert_allclose(centroid, target_ijk[:2], atol=0.1)
    row, column = np.unravel_index(int(np.argmax(plane)), plane.shape)
    assert abs(column - 33) <= 1 and abs(row - 43) <= 1
    # Neighbouring slices hold less dose at that pixel (the blob is centred through z as well).
    assert dose_on_ct_slice(dose, dose_grid, ct, 8)[43, 33] < plane[43, 33]
    assert dose_on_ct_slice(dose, dose_grid, ct, 10)[43, 33] < plane[43, 33]
    # Trilinear: a convex mix of the 8 surrounding dose voxels, all below the analytic peak.
    assert 0.8 * 50.0 < plane[43, 33] < 50.0


def test_dose_wash_png_has_size(phantom, dose_grid, blob_dose) -> None:
    masks = {name: phantom.labels[name] for name in ("PTV", "Lung_R", "Heart", "SpinalCord", "BODY")}
    for n_slices in (1, 3):
        png = render_dose_wash_png(phantom.ct, blob_dose, dose_grid, masks, prescription_gy=60.0, n_slices=n_slices)
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG"
        width = (n_slices * WASH_TILE_IN + WASH_COLORBAR_IN) * DPI
        assert image.size == (round(width), round((WASH_TILE_IN + WASH_TITLE_IN) * DPI))
        # The PTV outline is drawn (the slice through the dose maximum crosses it).
        assert rgb_pixels_near(png, structure_color("PTV"), tol=10) > 20


def test_dose_wash_rejects_bad_input(phantom, dose_grid, blob_dose) -> None:
    with pytest.raises(PlanReportError, match="'PTV'"):
        render_dose_wash_png(phantom.ct, blob_dose, dose_grid, {"PTV": np.zeros((2, 2, 2), bool)}, prescription_gy=60.0)
    with pytest.raises(PlanReportError, match="prescription_gy"):
        render_dose_wash_png(phantom.ct, blob_dose, dose_grid, prescription_gy=0.0)
    with pytest.raises(PlanReportError, match="dose grid"):
        render_dose_wash_png(phantom.ct, blob_dose[:-1], dose_grid, prescription_gy=60.0)


def test_gamma_map_png_shows_the_failing_slice():
    from rtgrid.engines.report.plan_report import PlanReportError, render_gamma_png

    gamma = np.full((6, 20, 20), np.nan, dtype=np.float32)
    gamma[1:5, 5:15, 5:15] = 0.4
    gamma[3, 8:12, 8:12] = 1.7  # fails only on slice 3
    grid = Volume(np.zeros((6, 20, 20)), origin_mm=(0, 0, -10), spacing_mm=(3, 3, 3))
    png = render_gamma_png(gamma, grid, title="t", n_slices=2)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > image.size[1]
    with pytest.raises(PlanReportError, match="no evaluated"):
        render_gamma_png(np.full((6, 20, 20), np.nan), grid)
