"""Coincidence check: identical machines score 1 and reuse; a different MLC scores lower and
triggers re-optimization; the 1-D gamma behaves as its definition says."""

from __future__ import annotations

import numpy as np
import pytest

from rtgrid.engines.conversion.coincidence import CoincidenceError, coincidence, gamma_pass_rate_1d
from rtgrid.engines.conversion.device import load_device
from rtgrid.engines.dose.machine import load_machine


@pytest.fixture(scope="module")
def standard():
    return load_machine()


def test_standard_against_itself_is_one_and_reused(standard):
    report = coincidence(standard, standard)
    assert report.overall == 1.0 and report.reuse_standard_plan
    assert all(c.score == 1.0 for c in report.components.values())
    assert report.reasons == ()


def test_same_mlc_other_beam_data_is_reused(standard):
    # TrueBeam 6X data differ from the standard's by < 1 % (PDD) and < 1 % (output factors)
    report = coincidence(standard, load_device("varian-truebeam-m120-6x").machine)
    assert report.components["mlc"].score == 1.0
    assert 0.95 <= report.components["source"].score < 1.0
    assert report.components["source"].measurements["pdd_max_difference_pct"] < 1.0
    assert report.reuse_standard_plan


def test_different_mlc_scores_lower_and_reoptimizes(standard):
    report = coincidence(standard, load_device("varian-truebeam-hd120-6x").machine)
    mlc = report.components["mlc"]
    # analytic width score over the standard's 400 mm bank: |y| < 40 mm 2.5 vs 5 mm (0.5), 40..100
    # equal 5 mm leaves (1), 100..110 5 vs 10 mm (0.5), beyond 110 mm no HD120 leaf (0):
    # (80 * 0.5 + 120 * 1 + 20 * 0.5) / 400
    assert mlc.sub_scores["leaf_width"] == pytest.approx(170.0 / 400.0, abs=1e-3)
    assert mlc.sub_scores["max_field"] == pytest.approx(220.0 / 400.0)
    assert report.overall < report.threshold and not report.reuse_standard_plan
    assert any("maximum field 400 x 220 mm" in r for r in report.reasons)
    strict = coincidence(standard, load_device("elekta-synergy-mlci2-6mv").machine)
    assert strict.components["mlc"].sub_scores["interdigitation"] == 0.5
    assert any("does not allow interdigitation" in r for r in strict.reasons)
    with pytest.raises(CoincidenceError, match=r"threshold must lie in \(0, 1\]"):
        coincidence(standard, standard, threshold=1.5)


def test_gamma_1d_against_its_definition():
    x = np.arange(0.0, 100.0, 1.0)
    ref = 100.0 / (1.0 + np.exp((x - 50.0) / 2.0))  # a penumbra-like edge
    assert gamma_pass_rate_1d(x, ref, x, ref, 1.0, 1.0) == 1.0
    # shifted by 0.8 mm: within a 1 mm distance-to-agreement everywhere
    assert gamma_pass_rate_1d(x, ref, x + 0.8, ref, 1.0, 1.0) == 1.0
    # shifted by 3 mm: the edge fails (steep points), the flat parts pass
    rate = gamma_pass_rate_1d(x, ref, x + 3.0, ref, 1.0, 1.0)
    assert 0.5 < rate < 1.0
    # a uniform 2 % offset fails a 1 % criterion on the flat part (no distance can help there)
    assert gamma_pass_rate_1d(x, ref, x, ref * 1.02, 1.0, 1.0) < 0.6
