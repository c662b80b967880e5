"""Geometry that turns per-frame hand detections into a usable wrist trajectory.

FORMATS.md "hands": the wrist position is the detector's 2D wrist back-projected with the
depth stage's metric depth plus an offset (the depth map sees the skin, the wrist joint is
about 2 cm behind it); jumps faster than a hand can move are dropped (they come from depth
edges and occlusions); short gaps are interpolated. All functions are pure numpy (scipy for
rotations), vectorised over frames except where a frame's fate depends on the previous
decision (:func:`drop_fast_jumps`).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def _search_offsets(radius: int) -> np.ndarray:
    """``(P, 2)`` pixel offsets ``(dv, du)`` within ``radius``, nearest first (stable order).

    Examples:
        >>> _search_offsets(1)[:5].tolist()
        [[0, 0], [-1, 0], [0, -1], [0, 1], [1, 0]]
    """
    dv, du = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    offsets = np.stack([dv.ravel(), du.ravel()], axis=1)
    distance = np.hypot(offsets[:, 0], offsets[:, 1])
    keep = distance <= radius
    order = np.argsort(distance[keep], kind="stable")
    return offsets[keep][order]


def sample_valid_depth(uv_px: np.ndarray, depth_maps: np.ndarray, search_radius_px: int = 9) -> np.ndarray:
    """Depth at each frame's pixel, or at the nearest pixel with valid depth.

    Args:
        uv_px: ``(T, 2)`` pixel coordinates (x right, y down; integer = pixel centre); NaN
            where there is no detection. Points outside the image are clamped to its border.
        depth_maps: ``(T, H, W)`` metres; 0 or non-finite is invalid.
        search_radius_px: how far (Euclidean, pixels) to look for a valid depth. The
            script pipeline searched 9 pixels along the axes; a disc finds the truly nearest.

    Returns:
        ``(T,)`` depth in metres, NaN where no valid depth lies within the radius.

    Examples:
        >>> depth = np.zeros((1, 5, 5)); depth[0, 2, 4] = 1.5  # hole at the centre
        >>> sample_valid_depth(np.array([[2.0, 2.0]]), depth).tolist()
        [1.5]
        >>> sample_valid_depth(np.array([[2.0, 2.0]]), depth, search_radius_px=1).tolist()
        [nan]
    """
    frames, height, width = depth_maps.shape
    finite = np.isfinite(uv_px).all(axis=1)
    centre = np.rint(np.nan_to_num(uv_px)).astype(np.int64)
    u = np.clip(centre[:, 0], 0, width - 1)
    v = np.clip(centre[:, 1], 0, height - 1)
    offsets = _search_offsets(search_radius_px)
    vv = v[:, None] + offsets[None, :, 0]  # (T, P)
    uu = u[:, None] + offsets[None, :, 1]
    inside = (vv >= 0) & (vv < height) & (uu >= 0) & (uu < width)
    rows = np.arange(frames)[:, None]
    values = depth_maps[rows, np.clip(vv, 0, height - 1), np.clip(uu, 0, width - 1)].astype(np.float64)
    usable = inside & np.isfinite(values) & (values > 0)
    first = usable.argmax(axis=1)  # offsets are sorted by distance: first usable = nearest
    found = usable[np.arange(frames), first] & finite
    return np.where(found, values[np.arange(frames), first], np.nan)


def backproject_wrist(
    uv_px: np.ndarray,
    depth_maps: np.ndarray,
    intrinsics: np.ndarray,
    offset_m: float = 0.02,
    search_radius_px: int = 9,
) -> tuple[np.ndarray, np.ndarray]:
    """Wrist positions in the camera of each frame from 2D wrists and metric depth.

    The depth is read at the nearest valid pixel (:func:`sample_valid_depth`), pushed
    ``offset_m`` further along the optical axis (depth sees the skin, the joint is inside),
    and the 2D wrist, clamped into the image, is back-projected with that depth.

    Args:
        uv_px: ``(T, 2)`` wrist pixel coordinates, NaN where not detected.
        depth_maps: ``(T, H, W)`` metres, 0 or non-finite = invalid.
        intrinsics: ``(3, 3)`` or ``(T, 3, 3)``.
        offset_m: added to the sampled depth.
        search_radius_px: see :func:`sample_valid_depth`.

    Returns:
        ``positions (T, 3)`` float64, NaN where invalid, and ``valid (T,)`` bool (detected and
        a valid depth found).

    Examples:
        >>> K = np.array([[100.0, 0, 2], [0, 100.0, 2], [0, 0, 1]])
        >>> depth = np.full((2, 5, 5), 0.98)
        >>> pos, ok = backproject_wrist(np.array([[4.0, 2.0], [np.nan, np.nan]]), depth, K)
        >>> pos[0].round(4).tolist(), ok.tolist()
        ([0.02, 0.0, 1.0], [True, False])
    """
    frames, height, width = depth_maps.shape
    K = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (frames, 3, 3))
    depth = sample_valid_depth(uv_px, depth_maps, search_radius_px) + offset_m
    valid = np.isfinite(depth)
    u = np.clip(uv_px[:, 0], 0, width - 1)
    v = np.clip(uv_px[:, 1], 0, height - 1)
    x = (u - K[:, 0, 2] - K[:, 0, 1] * (v - K[:, 1, 2]) / K[:, 1, 1]) / K[:, 0, 0] * depth
    y = (v - K[:, 1, 2]) / K[:, 1, 1] * depth
    positions = np.stack([x, y, depth], axis=1)
    positions[~valid] = np.nan
    return positions, valid


def drop_fast_jumps(positions: np.ndarray, valid: np.ndarray, fps: float, max_speed_m_s: float = 1.0) -> np.ndarray:
    """Invalidate frames that jump away faster than ``max_speed_m_s``.

    The reference is the **last kept valid frame**, not the previous frame: a frame is kept
    when its distance to that reference is at most ``max_speed_m_s * gap / fps`` (``gap`` in
    frames), and only a kept frame becomes the new reference. So a single outlier is
    dropped without also dropping the good frame after it (which a previous-frame rule
    would, since the good frame "jumps back"), and a run of outliers never drags the
    reference along. The first valid frame is the initial reference and is always kept.
    This is inherently sequential; it loops over valid frames only.

    Args:
        positions: ``(T, 3)`` metres.
        valid: ``(T,)`` bool.
        fps: frame rate of ``positions``.
        max_speed_m_s: the limit.

    Returns:
        The new ``(T,)`` valid mask (a copy).

    Examples:
        >>> pos = np.array([[0, 0, 1.0], [0.05, 0, 1], [0.9, 0, 1], [0.1, 0, 1], [0.3, 0, 1]])
        >>> drop_fast_jumps(pos, np.ones(5, bool), fps=10).tolist()
        [True, True, False, True, False]
    """
    keep = np.asarray(valid, dtype=bool).copy()
    max_step = max_speed_m_s / fps
    reference: int | None = None
    for frame in np.flatnonzero(keep):
        if reference is not None:
            distance = float(np.linalg.norm(positions[frame] - positions[reference]))
            if not distance <= max_step * (frame - reference):  # "not <=" also drops NaN
                keep[frame] = False
                continue
        reference = int(frame)
    return keep


def gap_plan(valid: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which invalid frames can be interpolated, from which neighbours, with which weight.

    A gap is a run of invalid frames with a valid frame on **both** sides and at most
    ``max_gap`` frames long; runs at the start or end are never extrapolated.

    Returns:
        ``frames, before, after, weight``: each ``(G,)``; frame ``frames[i]`` lies between
        valid frames ``before[i]`` and ``after[i]`` at fraction ``weight[i]`` in ``(0, 1)``.

    Examples:
        >>> f, b, a, w = gap_plan(np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0], bool), max_gap=2)
        >>> f.tolist(), b.tolist(), a.tolist(), w.round(3).tolist()
        ([2, 3], [1, 1], [4, 4], [0.333, 0.667])
    """
    valid = np.asarray(valid, dtype=bool)
    index = np.arange(valid.size)
    before = np.maximum.accumulate(np.where(valid, index, -1))
    after = np.minimum.accumulate(np.where(valid, index, valid.size)[::-1])[::-1]
    fill = ~valid & (before >= 0) & (after < valid.size) & (after - before - 1 <= max_gap)
    frames = index[fill]
    before, after = before[fill], after[fill]
    return frames, before, after, (frames - before) / (after - before)


def slerp_rotations(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Geodesic interpolation between rotation matrices ``(..., 3, 3)`` at ``weight (...)``.

    ``R = R0 · exp(w · log(R0ᵀ R1))``: constant angular speed along the shortest arc, the same
    as quaternion slerp, vectorised over any leading shape.

    Examples:
        >>> quarter = Rotation.from_euler("z", 90, degrees=True).as_matrix()
        >>> half = slerp_rotations(np.eye(3), quarter, np.array(0.5))
        >>> bool(np.allclose(half, Rotation.from_euler("z", 45, degrees=True).as_matrix()))
        True
    """
    shape = np.broadcast_shapes(start.shape[:-2], end.shape[:-2], np.shape(weight))
    # Copies: scipy < 1.15 refuses the read-only views np.broadcast_to returns.
    r0 = Rotation.from_matrix(np.broadcast_to(start, (*shape, 3, 3)).reshape(-1, 3, 3).copy())
    r1 = Rotation.from_matrix(np.broadcast_to(end, (*shape, 3, 3)).reshape(-1, 3, 3).copy())
    step = (r0.inv() * r1).as_rotvec() * np.broadcast_to(weight, shape).reshape(-1, 1)
    return (r0 * Rotation.from_rotvec(step)).as_matrix().reshape(*shape, 3, 3)


def interpolate_gaps(poses: np.ndarray, valid: np.ndarray, max_gap: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Fill gaps of at most ``max_gap`` invalid frames between valid rigid poses.

    Translation is interpolated linearly and rotation by slerp (:func:`slerp_rotations`);
    frames before the first or after the last valid frame stay invalid (no extrapolation).

    Args:
        poses: ``(T, 4, 4)``, any values where invalid.
        valid: ``(T,)`` bool.
        max_gap: longest run of invalid frames that is filled; 0 fills nothing.

    Returns:
        ``(poses, valid)``: new arrays; filled frames are valid.

    Examples:
        >>> poses = np.full((4, 4, 4), np.nan); poses[[0, 3]] = np.eye(4); poses[3, 0, 3] = 3.0
        >>> out, ok = interpolate_gaps(poses, np.array([1, 0, 0, 1], bool))
        >>> out[:, 0, 3].tolist(), ok.tolist()
        ([0.0, 1.0, 2.0, 3.0], [True, True, True, True])
    """
    frames, before, after, weight = gap_plan(valid, max_gap)
    out = np.array(poses, dtype=np.float64, copy=True)
    filled = np.asarray(valid, dtype=bool).copy()
    if frames.size == 0:
        return out, filled
    w = weight[:, None]
    out[frames] = np.eye(4)
    out[frames, :3, 3] = (1 - w) * out[before, :3, 3] + w * out[after, :3, 3]
    out[frames, :3, :3] = slerp_rotations(out[before, :3, :3], out[after, :3, :3], weight)
    filled[frames] = True
    return out, filled
