"""Rows the optimizer's dose product leaves out: only rows shown to stay under their limits."""

import numpy as np
import pytest
import scipy.sparse as sp

from rtgrid.engines.optimization.objectives import PenaltyTerm
from rtgrid.engines.optimization.quiet_rows import MARGIN, QuietDose, quiet_dose_limits
from rtgrid.engines.optimization.row_blocks import RowBlockMatrix


def term(kind: str, voxels, dose_gy: float) -> PenaltyTerm:
    return PenaltyTerm(kind, kind, np.asarray(voxels, dtype=np.int64), dose_gy, 0.1, 1.0)


def test_limits_are_the_lowest_maximum_and_zero_where_another_penalty_reads() -> None:
    terms = [term("max_dose", np.arange(0, 8), 60.0), term("max_dose", [2, 3], 25.0),
             term("max_dvh", [3, 4], 10.0), term("min_mean_dose", [7], 5.0)]
    limits = quiet_dose_limits(terms, 10)
    np.testing.assert_array_equal(limits, [60, 60, 25, 0, 0, 60, 60, 0, np.inf, np.inf])


def test_a_row_left_out_stays_under_its_limit_and_every_other_row_is_exact() -> None:
    # a non-negative matrix, rows of varied weight and limits; fluences that drift, then jump
    rng = np.random.default_rng(2)
    matrix = sp.random(3000, 300, density=0.05, format="csr", dtype=np.float32, random_state=4)
    matrix = sp.csr_matrix(sp.diags(rng.uniform(0.1, 3.0, 3000).astype(np.float32)) @ matrix)
    limits = rng.choice([15.0, 40.0, np.inf], size=3000, p=[0.45, 0.45, 0.1])
    limits[1200:1300] = 0.0  # a structure whose every dose counts
    quiet = QuietDose(RowBlockMatrix(matrix, workers=2, block_nonzeros=8000), limits, groups=8)
    x = rng.uniform(0, 1, 300).astype(np.float32)
    fluences = [x]
    for _ in range(12):
        fluences.append(np.clip(fluences[-1] + rng.normal(0, 0.01, 300), 0, None).astype(np.float32))
    fluences.append(fluences[-1] * 20)  # too far for the bound: a product over every row
    for x in fluences:
        dose, exact = quiet.dose(x), matrix.astype(np.float64) @ x.astype(np.float64)
        scipy_dose = matrix @ x
        out = (dose == 0) & (scipy_dose != 0)
        assert np.array_equal(dose[~out], scipy_dose[~out])
        assert (exact[out] < limits[out] * (1 - MARGIN)).all()
        assert not out[1200:1300].any()
    assert quiet.left_out[0] == 0 and quiet.left_out[-1] == 0
    assert min(quiet.left_out[1:-1]) > 0.3  # the bound does cut


def test_a_matrix_with_a_negative_entry_or_no_maximum_is_computed_whole() -> None:
    matrix = sp.random(200, 20, density=0.3, format="csr", dtype=np.float32, random_state=1)
    x = np.ones(20, dtype=np.float32)
    for m, limits in ((-matrix, np.full(200, np.inf)), (matrix, np.zeros(200))):
        quiet = QuietDose(RowBlockMatrix(m), limits)
        for _ in range(3):
            assert np.array_equal(quiet.dose(x), m @ x)
        assert quiet.left_out == [0.0, 0.0, 0.0]


def test_bad_sizes_are_named() -> None:
    products = RowBlockMatrix(sp.random(50, 10, density=0.3, format="csr", random_state=1))
    with pytest.raises(ValueError, match="one dose per row"):
        QuietDose(products, np.zeros(49))
    with pytest.raises(ValueError, match="groups"):
        QuietDose(products, np.zeros(50), groups=0)
