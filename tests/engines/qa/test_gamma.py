"""3-D gamma: analytic cases with closed-form gamma, and agreement with pymedphys' gamma."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from rtgrid.engines.dose.beams import Beam, open_field_bixels
from rtgrid.engines.dose.density import hu_to_relative_electron_density
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.dose.pencil_beam import compute_beam_dose
from rtgrid.engines.phantom.digital_patient import make_phantom
from rtgrid.engines.qa.gamma import GammaError, gamma_3d

pymedphys = pytest.importorskip("pymedphys", reason="the gamma cross-check needs pymedphys (pip install pymedphys)")


def box_dose(n: tuple[int, int, int], spacing_mm: float, shift_mm=(0.0, 0.0, 0.0), scale: float = 1.0,
             half_widths_mm=(20.0, 25.0, 15.0), falloff_per_mm: float = 0.004) -> np.ndarray:
    """A 60 Gy field with erf penumbrae (sigma 2.8 mm) and a depth fall-off along y; axes (k, j, i)."""
    z, y, x = np.meshgrid(*[(np.arange(m) - m / 2) * spacing_mm for m in n], indexing="ij")
    profile = lambda u, w: 0.5 * (erf((u + w) / 4.0) - erf((u - w) / 4.0))  # noqa: E731
    x, y, z = x - shift_mm[0], y - shift_mm[1], z - shift_mm[2]
    return scale * 60.0 * profile(x, half_widths_mm[0]) * profile(y, half_widths_mm[1]) * profile(
        z, half_widths_mm[2]) * np.exp(-falloff_per_mm * (y + 100.0))


def pymedphys_gamma(reference, evaluated, spacing_mm, dose_percent, distance_mm, threshold_percent, local):
    axes = tuple(np.arange(m) * s for m, s in zip(reference.shape, spacing_mm[::-1]))
    return pymedphys.gamma(axes, reference, axes, evaluated, dose_percent, distance_mm,
                           lower_percent_dose_cutoff=threshold_percent, interp_fraction=10, max_gamma=2.0,
                           local_gamma=local, interp_algo="scipy")


def test_identical_doses_pass_everywhere_with_gamma_zero() -> None:
    dose = box_dose((20, 24, 28), 2.5)
    result = gamma_3d(dose, dose, (2.5, 2.5, 2.5))
    assert result.pass_rate_pct == 100.0
    assert result.n_evaluated == np.count_nonzero(dose >= 0.1 * dose.max())
    assert np.nanmax(result.gamma) == 0.0 and result.gamma.dtype == np.float32
    assert np.all(np.isnan(result.gamma[dose < 0.1 * dose.max()]))


def test_a_1mm_shift_passes_2mm_with_gamma_at_most_half() -> None:
    reference = box_dose((20, 24, 28), 2.5)
    evaluated = box_dose((20, 24, 28), 2.5, shift_mm=(1.0, 0.0, 0.0))
    result = gamma_3d(reference, evaluated, (2.5, 2.5, 2.5), dose_percent=3.0, distance_mm=2.0)
    assert result.pass_rate_pct == 100.0
    # Moving 1 mm back finds the same dose, up to trilinear interpolation of the erf penumbra
    # sampled every 2.5 mm: gamma is 0.5 at most but for that interpolation error.
    assert np.nanmax(result.gamma) < 0.7 and np.nanmedian(result.gamma) <= 0.5


def test_a_5_percent_scaling_fails_3_percent_on_the_plateau() -> None:
    reference = box_dose((20, 24, 28), 2.5, half_widths_mm=(25.0, 25.0, 20.0), falloff_per_mm=0.0)
    result = gamma_3d(reference, 1.05 * reference, (2.5, 2.5, 2.5), dose_percent=3.0, distance_mm=2.0)
    # On the flat top no nearby point has a lower dose: gamma = 5 % / 3 %.
    assert result.gamma[10, 12, 14] == pytest.approx(5.0 / 3.0, abs=1e-4)
    assert np.all(result.gamma[8:13, 10:15, 12:17] > 1.6)
    # Only the penumbrae, where a nearby point has the scaled dose, pass: below TG-218's 95 %.
    assert result.pass_rate_pct < 80.0
    assert gamma_3d(reference, 1.05 * reference, (2.5, 2.5, 2.5), dose_percent=6.0).pass_rate_pct == 100.0


@pytest.mark.parametrize("global_norm", [True, False])
def test_shifted_linear_ramp_has_the_closed_form_gamma(global_norm: bool) -> None:
    # D = 10 + g x (Gy, x in mm along i), evaluated = D(x - s): at distance d the mismatch is g (d - s),
    # so gamma = |g s| / sqrt(dD^2 + g^2 DTA^2). Trilinear interpolation of a linear dose is exact.
    g, s, spacing = 0.5, 2.5, (1.0, 1.5, 2.0)
    x = np.arange(60) * spacing[0]
    reference = np.broadcast_to(10.0 + g * x, (8, 8, 60)).copy()
    evaluated = np.broadcast_to(10.0 + g * (x - s), (8, 8, 60)).copy()
    result = gamma_3d(reference, evaluated, spacing, dose_percent=3.0, distance_mm=2.0, threshold_percent=0.0,
                      global_norm=global_norm)
    tolerance_gy = 0.03 * (reference.max() if global_norm else reference[0, 0])
    expected = np.broadcast_to(np.abs(g * s) / np.sqrt(tolerance_gy**2 + (g * 2.0) ** 2), x.shape)
    interior = slice(5, 55)  # the search (4 mm) stays inside the grid
    got = result.gamma[4, 4, interior]
    # The sampled spheres can only overestimate the continuous minimum, by a small step term.
    assert np.all(got >= np.minimum(expected[interior], 2.0) - 1e-4)
    np.testing.assert_allclose(got, np.minimum(expected[interior], 2.0), atol=0.01)
    if not global_norm:  # the local dose criterion shrinks with the dose: failures at low x
        assert expected[interior].min() < 1.0 < expected[interior].max()


def test_bad_inputs_are_refused_with_the_argument_named() -> None:
    dose = np.ones((4, 4, 4))
    with pytest.raises(GammaError, match="one grid"):
        gamma_3d(dose, np.ones((4, 4, 5)), (1, 1, 1))
    with pytest.raises(GammaError, match="spacing_mm"):
        gamma_3d(dose, dose, (1, 0, 1))
    with pytest.raises(GammaError, match="evaluated_gy holds 1 NaN"):
        gamma_3d(dose, np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 1.0), (1, 1, 1))
    with pytest.raises(GammaError, match="no positive dose"):
        gamma_3d(np.zeros((4, 4, 4)), dose, (1, 1, 1))


@pytest.mark.parametrize(
    "shift_mm, scale, dose_percent, distance_mm, local",
    [((2.0, 0.5, 0.0), 1.03, 3.0, 2.0, False), ((1.5, 0.0, 0.5), 1.01, 2.0, 2.0, True)],
)
def test_agrees_with_pymedphys_on_analytic_pairs(shift_mm, scale, dose_percent, distance_mm, local) -> None:
    shape, spacing = (20, 24, 28), (2.5, 2.5, 2.5)
    reference = box_dose(shape, 2.5)
    evaluated = box_dose(shape, 2.5, shift_mm=shift_mm, scale=scale)
    ours = gamma_3d(reference, evaluated, spacing, dose_percent=dose_percent, distance_mm=distance_mm,
                    threshold_percent=10.0, global_norm=not local)
    theirs = pymedphys_gamma(reference, evaluated, spacing, dose_percent, distance_mm, 10.0, local)
    evaluated_mask = ~np.isnan(theirs)
    assert 0 < np.count_nonzero(theirs[evaluated_mask] > 1) < evaluated_mask.sum() / 2  # real failures
    np.testing.assert_array_equal(evaluated_mask, ~np.isnan(ours.gamma))
    their_rate = 100.0 * np.count_nonzero(theirs[evaluated_mask] <= 1) / evaluated_mask.sum()
    assert abs(ours.pass_rate_pct - their_rate) <= 0.5
    assert np.abs(ours.gamma[evaluated_mask] - theirs[evaluated_mask]).max() < 1e-3


def test_agrees_with_pymedphys_on_pencil_beam_doses_in_the_phantom() -> None:
    phantom = make_phantom((16, 40, 40), (5.0, 5.0, 5.0))
    density = phantom.ct.with_voxels(hu_to_relative_electron_density(phantom.ct.voxels).astype(np.float32))
    machine = load_machine()

    def beam_dose(isocenter_mm, mu_scale):
        beam = Beam(30.0, 0.0, 0.0, np.array(isocenter_mm))
        bixels = open_field_bixels(beam, machine, 60.0, 60.0, 5.0)
        return compute_beam_dose(density, phantom.labels["BODY"], beam, bixels, machine,
                                 np.full(bixels.n_bixels, mu_scale)).astype(np.float64)

    reference = beam_dose([0.0, 0.0, 0.0], 1.0)
    evaluated = beam_dose([1.5, 0.0, 1.0], 1.02)
    spacing = tuple(phantom.ct.spacing_mm)
    ours = gamma_3d(reference, evaluated, spacing, dose_percent=3.0, distance_mm=2.0, threshold_percent=10.0)
    theirs = pymedphys_gamma(reference, evaluated, spacing, 3.0, 2.0, 10.0, False)
    mask = ~np.isnan(theirs)
    their_rate = 100.0 * np.count_nonzero(theirs[mask] <= 1) / mask.sum()
    assert 50.0 < their_rate < 100.0  # a comparison with real failures, not a trivial pass
    assert abs(ours.pass_rate_pct - their_rate) <= 0.5
    assert np.abs(ours.gamma[mask] - theirs[mask]).max() < 1e-3
