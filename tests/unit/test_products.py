"""The renderer's sums of products against exact rational arithmetic, element by element.

Ground truth: each product, sum and fused multiply-add is computed exactly with
``fractions.Fraction`` and rounded to the nearest float32 (ties to even) by comparing exact
distances, so nothing here relies on numpy's or the CPU's rounding.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from trackset.synthetic.products import (
    SGEMV_COLUMNS,
    column_dots,
    dot3,
    fma32,
    matrix_times,
    transpose_times,
    vector_times,
)


def nearest_float32(exact: Fraction) -> np.float32:
    """The float32 nearest to ``exact``, ties to the even significand."""
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1))


def exact_fma(x: float, y: float, z: float) -> np.float32:
    return nearest_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))


def exact_mul(x: float, y: float) -> np.float32:
    return nearest_float32(Fraction(float(x)) * Fraction(float(y)))


def exact_add(x: float, y: float) -> np.float32:
    return nearest_float32(Fraction(float(x)) + Fraction(float(y)))


def random_float32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values over many binades, so sums lose bits and some land on float32 ties."""
    return (rng.normal(size=shape) * 2.0 ** rng.integers(-30, 30, size=shape)).astype(np.float32)


def test_fma_rounds_once_where_the_float64_sum_lands_on_a_float32_tie() -> None:
    x = np.float32(1 + 2**-12)
    y = np.array([1 + 2**-12, 1 + 2**-12], np.float32)  # x * y = 1 + 2^-11 + 2^-24: a float32 tie
    z = np.array([2.0**-70, -(2.0**-70)], np.float32)  # below float64's last bit at 1
    expected = [exact_fma(x, y[i], z[i]) for i in range(2)]
    assert expected[0] == np.float32(1 + 2**-11 + 2**-23)  # just above the tie: up
    assert expected[1] == np.float32(1 + 2**-11)  # just below: down
    assert fma32(x, y, z).tolist() == [float(e) for e in expected]


def test_fma_matches_exact_arithmetic_on_random_values() -> None:
    rng = np.random.default_rng(0)
    x, y, z = (random_float32(rng, (3000,)) for _ in range(3))
    got = fma32(x, y, z)
    assert got.dtype == np.float32
    assert got.tolist() == [float(exact_fma(x[i], y[i], z[i])) for i in range(len(x))]


def test_matrix_times_fuses_every_row_in_order() -> None:
    rng = np.random.default_rng(1)
    a, columns = random_float32(rng, (3, 3)), random_float32(rng, (3, 50))
    expected = [
        [exact_fma(a[i, 2], c[2], exact_fma(a[i, 1], c[1], exact_mul(a[i, 0], c[0]))) for c in columns.T]
        for i in range(3)
    ]
    assert matrix_times(a, columns).tolist() == np.array(expected, np.float32).tolist()


@pytest.mark.parametrize("count", [7, SGEMV_COLUMNS, SGEMV_COLUMNS + 1])
def test_vector_times_fuses_the_third_product_only_up_to_the_sgemv_width(count: int) -> None:
    rng = np.random.default_rng(2)
    v, columns = random_float32(rng, (3,)), random_float32(rng, (3, count))
    got = vector_times(v, columns)
    for j in rng.choice(count, size=min(count, 200), replace=False):
        c = columns[:, j]
        first_two = exact_fma(v[1], c[1], exact_mul(v[0], c[0]))
        if count > SGEMV_COLUMNS:
            expected = exact_add(first_two, exact_mul(v[2], c[2]))
        else:
            expected = exact_fma(v[2], c[2], first_two)
        assert got[j] == expected, j


def test_dot3_sums_float32_products_in_float64() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        u, v = random_float32(rng, (3,)), random_float32(rng, (3,))
        products = [Fraction(float(exact_mul(u[k], v[k]))) for k in range(3)]
        partial = Fraction(float(products[0] + products[1]))  # float64 rounding of the first sum
        expected = np.float32(float(partial + products[2]))  # float64, then float32, as OpenBLAS
        assert dot3(u, v) == expected


def test_column_dots_is_unfused_in_order() -> None:
    rng = np.random.default_rng(4)
    a, b = random_float32(rng, (3, 100)), random_float32(rng, (3, 100))
    expected = [
        exact_add(exact_add(exact_mul(a[0, j], b[0, j]), exact_mul(a[1, j], b[1, j])), exact_mul(a[2, j], b[2, j]))
        for j in range(100)
    ]
    assert column_dots(a, b).tolist() == np.array(expected, np.float32).tolist()


def test_transpose_times_is_the_transposed_product() -> None:
    rng = np.random.default_rng(5)
    m, x = rng.normal(size=(3, 3)), rng.normal(size=3)
    np.testing.assert_allclose(transpose_times(m, x), m.T @ x, rtol=1e-15)
