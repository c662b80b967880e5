"""The pipeline's matrix products have fixed bits: each element summed left to right in plain
float64, whatever BLAS numpy bundles (``geometry.matmul``).

Ground truth is computed with Python floats, one multiply and one add at a time.
"""

from __future__ import annotations

import numpy as np

from trackset.geometry.camera import invert_rigid, matmul, window_relative_poses


def left_to_right(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of two matrices, every element ``((a_i0 b_0k + a_i1 b_1k) + ...)`` in Python floats."""
    out = np.empty((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for k in range(b.shape[1]):
            total = float(a[i, 0]) * float(b[0, k])
            for j in range(1, a.shape[1]):
                total = total + float(a[i, j]) * float(b[j, k])
            out[i, k] = total
    return out


def random_rigid(rng: np.random.Generator, count: int) -> np.ndarray:
    q = np.linalg.qr(rng.normal(size=(count, 3, 3)))[0]
    out = np.zeros((count, 4, 4))
    out[:, :3, :3], out[:, :3, 3], out[:, 3, 3] = q, rng.normal(size=(count, 3)), 1.0
    return out


def test_matmul_sums_each_element_left_to_right() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4, 4)), rng.normal(size=(50, 4, 4))
    assert np.array_equal(matmul(a, b), np.stack([left_to_right(x, y) for x, y in zip(a, b, strict=True)]))
    points, rotation = rng.normal(size=(40, 3)), rng.normal(size=(3, 3))
    assert np.array_equal(matmul(points, rotation.T), left_to_right(points, rotation.T))


def test_window_poses_are_plain_left_to_right_products() -> None:
    """Fails with ``@``: numpy 2.4's BLAS fuses multiplies and adds (about a quarter of the
    elements differ in the last bit here), numpy 1.26's does not."""
    extrinsics = random_rigid(np.random.default_rng(1), 30)
    starts = np.arange(21)
    poses = window_relative_poses(extrinsics, starts, 10)
    inverse = invert_rigid(extrinsics)
    expected = np.stack([[left_to_right(extrinsics[s], inverse[s + k]) for k in range(10)] for s in starts])
    assert np.array_equal(poses, expected)
