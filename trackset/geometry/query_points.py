"""Where the point trackers start: query pixels of a window's first frame, inside the object mask.

The script pipeline samples TAPIP3D's queries from the object mask of a window's first
frame (``process_tapip3d.py``, ``get_query_points_from_mask``): the mask is eroded by
``mask_erosion_pixels`` (a ``(2e+1)`` square kernel) so points keep off its edges, where depth
mixes object and background; only pixels with valid depth count; a window whose remaining
mask covers less than ``min_mask_percent`` of the image gets no queries; then either
``target_points`` pixels at random (sorted row-major) or the cells of a
``grid_size x grid_size`` grid over the image (cell centres) that fall inside. CoTracker's
queries (``process_cotracker.py``) are such a grid inside the eroded mask, after the dilated
person masks were subtracted when ``subtract_human_masks`` is set.

These are pure functions of the masks and settings, so the real models and the synthetic
ones start from the very same pixels, and the tests can check them against the scene.

Examples:
    >>> mask = np.zeros((6, 8), bool); mask[1:5, 2:7] = True
    >>> grid_pixels(erode(mask, 1), 4).tolist()
    [[3, 2], [5, 2], [3, 3], [5, 3]]
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np


def _square(radius: int) -> np.ndarray:
    return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` shrunk by ``radius`` pixels (a square kernel, as the scripts' ``cv2.erode``).

    Examples:
        >>> mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
        >>> erode(mask, 1).sum(), erode(mask, 0).sum()
        (np.int64(1), np.int64(9))
    """
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    return cv2.erode(mask.astype(np.uint8), _square(radius)) > 0


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels (square kernel).

    Examples:
        >>> mask = np.zeros((5, 5), bool); mask[2, 2] = True
        >>> dilate(mask, 1).sum()
        np.int64(9)
    """
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    return cv2.dilate(mask.astype(np.uint8), _square(radius)) > 0


def grid_pixels(candidates: np.ndarray, grid_size: int) -> np.ndarray:
    """``(N, 2)`` int64 ``(u, v)`` of the ``grid_size x grid_size`` cell centres inside ``candidates``.

    The grid covers the whole image (cell centres ``floor((i + 0.5) * H / grid_size)``), in
    row-major order, as the scripts' grid does.

    Examples:
        >>> grid_pixels(np.ones((4, 4), bool), 2).tolist()
        [[1, 1], [3, 1], [1, 3], [3, 3]]
    """
    height, width = candidates.shape
    rows = np.clip(((np.arange(grid_size) + 0.5) * height / grid_size).astype(np.int64), 0, height - 1)
    cols = np.clip(((np.arange(grid_size) + 0.5) * width / grid_size).astype(np.int64), 0, width - 1)
    v, u = (axis.ravel() for axis in np.meshgrid(rows, cols, indexing="ij"))
    inside = candidates[v, u]
    return np.stack([u[inside], v[inside]], axis=1).astype(np.int64)


def random_pixels(candidates: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` distinct ``(u, v)`` of ``candidates``, seeded, in row-major order.

    Examples:
        >>> candidates = np.zeros((3, 3), bool); candidates[0, 1] = candidates[2, 2] = True
        >>> random_pixels(candidates, 5, seed=0).tolist()
        [[1, 0], [2, 2]]
    """
    flat = np.flatnonzero(candidates)
    chosen = np.sort(np.random.default_rng(seed).choice(flat, size=min(count, flat.size), replace=False))
    v, u = np.divmod(chosen, candidates.shape[1])
    return np.stack([u, v], axis=1).astype(np.int64)


def mask_query_pixels(
    mask: np.ndarray,
    valid: np.ndarray,
    *,
    erosion_px: int,
    method: Literal["random", "grid"],
    count: int,
    grid_size: int,
    min_mask_percent: float,
    seed: int,
) -> np.ndarray:
    """Queries of one window from its first frame's object ``mask`` (3D tracks, module docstring).

    Args:
        mask: ``(H, W)`` object mask of the window's first frame.
        valid: ``(H, W)`` pixels a query may use (valid depth).
        erosion_px: the mask is eroded by this many pixels first.
        method: ``"random"`` (``count`` pixels) or ``"grid"`` (``grid_size``).
        count, grid_size: see ``method``.
        min_mask_percent: below this share of the image (percent) the window gets none.
        seed: of the random choice (the window start, so a rerun picks the same pixels).

    Examples:
        >>> mask = np.zeros((10, 10), bool); mask[2:8, 2:8] = True
        >>> ok = np.ones((10, 10), bool)
        >>> kw = dict(erosion_px=1, count=100, grid_size=5, seed=0)
        >>> len(mask_query_pixels(mask, ok, method="random", min_mask_percent=0.0, **kw))
        16
        >>> len(mask_query_pixels(mask, ok, method="grid", min_mask_percent=20.0, **kw))
        0
    """
    candidates = erode(mask, erosion_px) & np.asarray(valid, dtype=bool)
    if 100.0 * candidates.sum() / candidates.size < min_mask_percent or not candidates.any():
        return np.zeros((0, 2), np.int64)
    if method == "grid":
        return grid_pixels(candidates, grid_size)
    return random_pixels(candidates, count, seed)
