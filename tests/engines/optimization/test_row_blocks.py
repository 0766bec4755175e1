"""The optimizer's threaded matrix products: scipy's results, the same for every thread count."""

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from rtgrid.engines.optimization.row_blocks import RowBlockMatrix
from rtgrid.engines.parallel import blas_threads


@pytest.fixture
def matrix() -> sp.csr_matrix:
    # empty rows at both ends and inside, like a dose grid's rows outside every beam
    dense = sp.random(4000, 250, density=0.04, format="csr", dtype=np.float32, random_state=7).toarray()
    dense[:300] = 0.0
    dense[1800:2100] = 0.0
    dense[-200:] = 0.0
    return sp.csr_matrix(dense)


def test_products_equal_scipy_and_each_other_on_any_thread_count(matrix) -> None:
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 2, matrix.shape[1]), rng.normal(size=matrix.shape[0])
    one = RowBlockMatrix(matrix, workers=1, block_nonzeros=2000)
    three = RowBlockMatrix(matrix, workers=3, block_nonzeros=2000)
    assert len(one.blocks) > 10
    assert [b[:2] for b in one.blocks] == [b[:2] for b in three.blocks]
    assert one.blocks[0][0] == 0 and one.blocks[-1][1] == matrix.shape[0]
    assert all(a[1] == b[0] for a, b in zip(one.blocks, one.blocks[1:]))  # every row in one block
    forward = one.matvec(x)
    assert forward.dtype == np.float32
    assert np.array_equal(forward, matrix @ x.astype(np.float32))  # rows are independent: bit for bit
    assert np.array_equal(forward, three.matvec(x))
    backward = one.rmatvec(y)
    assert backward.dtype == np.float64
    np.testing.assert_allclose(backward, matrix.T.astype(np.float64) @ y.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert np.array_equal(backward, three.rmatvec(y))


def test_a_mostly_zero_gradient_gives_the_product_over_every_row_bit_for_bit(matrix) -> None:
    # as an optimizer's: zeros but for a few rows, blocks with none, blocks with many
    rng = np.random.default_rng(11)
    y = np.zeros(matrix.shape[0], dtype=np.float32)
    y[rng.choice(np.arange(300, 1800), 40, replace=False)] = rng.normal(size=40)
    y[2100:2400] = rng.normal(size=300)
    y[3000:3050] = rng.normal(size=50)
    blocks = RowBlockMatrix(matrix, workers=2, block_nonzeros=2000)
    expected = np.zeros(matrix.shape[1], dtype=np.float64)
    for r0, r1 in blocks.blocks:  # scipy's product over every row of each block
        expected += matrix[r0:r1].T @ y[r0:r1]
    active = [np.count_nonzero(y[r0:r1]) / (r1 - r0) for r0, r1 in blocks.blocks]
    assert min(active) == 0 and max(active) > 0.5
    assert np.array_equal(blocks.rmatvec(y), expected)
    assert np.array_equal(blocks.rmatvec(np.zeros_like(y)), np.zeros(matrix.shape[1]))


def test_rows_left_out_are_zero_and_every_other_row_is_scipys(matrix) -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 2, matrix.shape[1]).astype(np.float32)
    full = matrix @ x
    skip = rng.random(matrix.shape[0]) < 0.6
    skip[:500] = True  # a run across the first block's end
    blocks = RowBlockMatrix(matrix, workers=2, block_nonzeros=2000)
    out = blocks.matvec(x, skip=skip)
    assert out.dtype == np.float32
    assert np.array_equal(out[~skip], full[~skip]) and not out[skip].any() and full[skip].any()
    assert np.array_equal(blocks.matvec(x, skip=np.zeros(matrix.shape[0], dtype=bool)), full)
    with pytest.raises(ValueError, match="one bool per row"):
        blocks.matvec(x, skip=np.zeros(matrix.shape[0] - 1, dtype=bool))
    with pytest.raises(ValueError, match="one bool per row"):
        blocks.matvec(x, skip=np.zeros(matrix.shape[0]))


def test_blocks_share_the_matrix_and_refuse_a_bad_size(matrix) -> None:
    blocks = RowBlockMatrix(matrix, block_nonzeros=1000)
    assert np.shares_memory(blocks.matrix.data, matrix.data)
    assert np.shares_memory(blocks.matrix.indices, matrix.indices)
    with pytest.raises(ValueError, match="block_nonzeros"):
        RowBlockMatrix(matrix, block_nonzeros=0)


def test_blas_threads_limits_blas_inside_and_restores_it_after() -> None:
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS as well as numpy's)

    def blas_threads_now() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads_now()
    assert before, "no BLAS library found"
    with blas_threads(1):
        assert blas_threads_now() == [1] * len(before)
    assert blas_threads_now() == before
