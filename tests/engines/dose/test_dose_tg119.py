"""The AAPM TG-119 phantom shipped by pyRadPlan 0.5.0, read into rtgrid's data model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rtgrid.engines.phantom.tg119 import Tg119Error, load_tg119

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pyRadPlan") is None,
    reason="needs pyRadPlan==0.5.0 (it ships TG119.mat): pip install pyRadPlan==0.5.0 pydantic==2.13.5 ipyopt==0.12.10",
)


@pytest.fixture(scope="module")
def case():
    return load_tg119()


def test_grid_geometry(case) -> None:
    ct = case.ct_hu
    assert ct.shape == (129, 167, 167)
    np.testing.assert_allclose(ct.spacing_mm, [3.0, 3.0, 2.5])
    np.testing.assert_allclose(ct.origin_mm, [-250.0, -250.0, -160.0])
    assert case.relative_electron_density.same_grid(ct) and case.patient_position == "HFS"


def test_structures_are_sane(case) -> None:
    s = case.structures
    voxel_cc = case.ct_hu.voxel_volume_mm3 / 1000.0
    body, target, core = s["BODY"], s["OuterTarget"], s["Core"]
    assert case.structure_types["OuterTarget"] == "TARGET"
    # a 30 x 15 x 30 cm water-equivalent block (LR x AP x SI), about 13.5 litres
    assert 12_000 < body.sum() * voxel_cc < 15_000
    assert 100 < target.sum() * voxel_cc < 250 and 20 < core.sum() * voxel_cc < 40
    assert not (target & core).any() and (target & ~body).sum() == 0 and (core & ~body).sum() == 0
    # the core is a ~2 cm wide, 10 cm long cylinder along z at the phantom centre
    kji = np.argwhere(core)
    centre = case.ct_hu.index_to_lps(kji[:, ::-1].mean(axis=0))
    assert np.linalg.norm(centre) < 5.0
    extent_mm = (kji.max(axis=0) - kji.min(axis=0) + 1) * case.ct_hu.spacing_mm[::-1]
    assert extent_mm[0] == pytest.approx(100.0, abs=5.0) and extent_mm[1] < 30 and extent_mm[2] < 30
    # the C-shaped target wraps around the core: its centroid is off the core's centre
    assert np.linalg.norm(case.ct_hu.index_to_lps(np.argwhere(target)[:, ::-1].mean(axis=0)) - centre) > 5.0


def test_densities_are_water_like_in_the_body_and_air_outside(case) -> None:
    body = case.structures["BODY"]
    assert np.median(case.relative_electron_density.voxels[body]) == pytest.approx(1.0, abs=0.06)
    assert np.median(case.ct_hu.voxels[~body]) == pytest.approx(-1000.0, abs=30.0)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Tg119Error, match="does not exist"):
        load_tg119(tmp_path / "TG119.mat")
