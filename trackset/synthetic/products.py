"""The renderer's small sums of products, with the same bits under every numpy, BLAS and CPU.

``@`` on float arrays goes to the BLAS that numpy bundles, and BLAS kernels differ between
builds: numpy 1.26's OpenBLAS multiplies and then adds, numpy 2.4's fuses the two
(``fma(a, b, c)``, one rounding) and sums a float32 dot product in float64. The same scene
therefore rendered differently under the numpy 1.26 the models pin than under constraints.txt,
a last bit of depth here and there, enough to move a colour across a rounding step and change
the encoded clip.

Each function here spells one such product out in elementwise operations, which IEEE 754
rounds the same way everywhere, in exactly the order and with exactly the fusing that numpy
2.4.6 (constraints.txt) computed them, so the frames rendered under that set do not change and
every other set renders the same frames. A fused multiply-add is done in float64: the product
of two float32 is exact there, and the one case where rounding the float64 sum to float32
differs from rounding the exact sum (the sum lands exactly halfway between two float32) is
corrected from the sum's exact error.
"""

from __future__ import annotations

import numpy as np

# float64 bits below a float32's 24-bit significand: 29 of them, halfway is the top one set.
_BELOW_FLOAT32 = np.uint64((1 << 29) - 1)
_HALFWAY = np.uint64(1 << 28)
#: Above this many columns numpy 2.4's float32 vector-matrix product takes OpenBLAS's sgemv
#: kernel, which fuses only the first two products; up to it, all three are fused in turn.
SGEMV_COLUMNS = 16_384


def fma32(x: np.ndarray | np.floating, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """float32 ``x * y + z`` rounded once, as a fused multiply-add instruction gives it.

    Examples:
        >>> x, y = np.float32(1 + 2**-12), np.array([1 + 2**-12], np.float32)
        >>> z = np.array([-(1 + 2**-11)], np.float32)
        >>> float(fma32(x, y, z)[0]) == 2.0**-24  # exact; multiplying first rounds it away
        True
        >>> float((x * y + z)[0])
        0.0
    """
    product = np.asarray(x, np.float64) * np.asarray(y, np.float64)  # exact: 24 + 24 bits < 53
    addend = np.asarray(z, np.float64)
    total = product + addend
    halfway = (total.view(np.uint64) & _BELOW_FLOAT32) == _HALFWAY
    if np.any(halfway):
        # Rounded to float64 onto a float32 tie: the exact sum lies off it, on the side of
        # its rounding error (Knuth's two-sum), and float32 rounding must go that way too.
        product, addend = np.broadcast_arrays(product, addend)
        s, p, a = total[halfway], product[halfway], addend[halfway]
        virtual = s - p
        error = (p - (s - virtual)) + (a - virtual)
        total[halfway] = np.where(error == 0, s, np.nextafter(s, np.copysign(np.inf, error)))
    return total.astype(np.float32)


def matrix_times(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``matrix (R,3) float32 @ columns (3,M) float32`` as numpy 2.4's sgemm: per row,
    ``fma(a2, c2, fma(a1, c1, a0 * c0))``.

    Examples:
        >>> m = np.arange(9, dtype=np.float32).reshape(3, 3)
        >>> matrix_times(m, np.eye(3, dtype=np.float32)).tolist() == m.tolist()
        True
    """
    a = np.asarray(matrix, np.float32)
    c = np.asarray(columns, np.float32)
    return np.stack([fma32(row[2], c[2], fma32(row[1], c[1], row[0] * c[0])) for row in a])


def vector_times(vector: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``vector (3,) float32 @ columns (3,M) float32`` as numpy 2.4 computes it
    (:data:`SGEMV_COLUMNS`).

    Examples:
        >>> vector_times(np.array([1, 2, 3], np.float32), np.eye(3, dtype=np.float32)).tolist()
        [1.0, 2.0, 3.0]
    """
    v = np.asarray(vector, np.float32)
    c = np.asarray(columns, np.float32)
    first_two = fma32(v[1], c[1], v[0] * c[0])
    if c.shape[1] > SGEMV_COLUMNS:
        return first_two + v[2] * c[2]
    return fma32(v[2], c[2], first_two)


def dot3(u: np.ndarray, v: np.ndarray) -> np.float32:
    """``u (3,) float32 @ v (3,) float32`` as OpenBLAS's sdot: float32 products summed in float64.

    Examples:
        >>> float(dot3(np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.float32)))
        32.0
    """
    products = np.asarray(u, np.float32) * np.asarray(v, np.float32)
    wide = products.astype(np.float64)
    return np.float32((wide[0] + wide[1]) + wide[2])


def column_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``einsum("ij,ij->j", a, b)`` for ``(3, M)`` float32: ``(a0 b0 + a1 b1) + a2 b2``, unfused.

    Examples:
        >>> column_dots(np.ones((3, 2), np.float32), np.full((3, 2), 2, np.float32)).tolist()
        [6.0, 6.0]
    """
    return (a[0] * b[0] + a[1] * b[1]) + a[2] * b[2]


def transpose_times(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix.T @ vector`` for a float64 ``(3,3)`` and ``(3,)``: plain products and sums.

    Only ever rounded to float32 afterwards, where the fusing of the last float64 bit does not
    show.

    Examples:
        >>> transpose_times(np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]), np.array([1.0, 2, 3])).tolist()
        [3.0, 1.0, 2.0]
    """
    m = np.asarray(matrix, np.float64)
    x = np.asarray(vector, np.float64)
    return (m[0] * x[0] + m[1] * x[1]) + m[2] * x[2]
