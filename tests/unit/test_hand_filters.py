"""Hand filters against analytic cases; expectations are written out, not recomputed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trackset.geometry.hand_filters import backproject_wrist, drop_fast_jumps, interpolate_gaps, sample_valid_depth

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])


def depth_with(value: float = 1.0, holes: dict[tuple[int, int], float] | None = None) -> np.ndarray:
    """One 480x640 depth map, uniform, with some pixels (v, u) overwritten."""
    depth = np.full((1, 480, 640), value, np.float32)
    for (v, u), d in (holes or {}).items():
        depth[0, v, u] = d
    return depth


@pytest.mark.parametrize(
    ("uv", "depth", "offset", "expected"),
    [
        ((320.0, 240.0), depth_with(1.0), 0.02, (0.0, 0.0, 1.02)),  # principal point
        ((420.0, 340.0), depth_with(1.98), 0.02, (0.4, 0.4, 2.0)),  # 100 px right/down at 2 m
        ((220.0, 240.0), depth_with(0.5), 0.0, (-0.1, 0.0, 0.5)),  # no offset
        ((320.4, 239.6), depth_with(1.0, {(240, 320): 3.0}), 0.0, (0.0024, -0.0024, 3.0)),  # sub-pixel uv kept
        ((900.0, -50.0), depth_with(1.0), 0.0, (0.638, -0.48, 1.0)),  # outside: clamped to (639, 0)
    ],
)
def test_backproject_wrist_analytic(
    uv: tuple[float, float], depth: np.ndarray, offset: float, expected: tuple[float, float, float]
) -> None:
    positions, valid = backproject_wrist(np.array([uv]), depth, K, offset_m=offset)
    assert valid.tolist() == [True]
    np.testing.assert_allclose(positions[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("holes", "radius", "expected"),
    [
        ({(240, 320): 0.0, (240, 323): 1.5, (240, 315): 0.7}, 9, 1.5),  # nearest valid (3 px) wins
        ({(240, 320): np.nan, (238, 320): 2.0}, 9, 2.0),  # NaN is invalid
        ({(240, 320): np.inf, (241, 321): 0.8}, 9, 0.8),  # inf is invalid; diagonal at 1.41 px
        ({(240, 320): -1.0, (240, 321): 0.6}, 9, 0.6),  # negative is invalid
    ],
)
def test_nearest_valid_depth(holes: dict[tuple[int, int], float], radius: int, expected: float) -> None:
    depth = np.zeros((1, 480, 640), np.float32)
    for (v, u), d in holes.items():
        depth[0, v, u] = d
    assert sample_valid_depth(np.array([[320.0, 240.0]]), depth, radius).tolist() == pytest.approx([expected])


@pytest.mark.parametrize(
    ("uv", "depth"),
    [
        ((np.nan, np.nan), depth_with(1.0)),  # not detected
        ((320.0, 240.0), np.zeros((1, 480, 640), np.float32)),  # no depth anywhere
        ((320.0, 240.0), depth_with(np.nan)),  # all non-finite
    ],
)
def test_backproject_wrist_invalid(uv: tuple[float, float], depth: np.ndarray) -> None:
    positions, valid = backproject_wrist(np.array([uv]), depth, K)
    assert valid.tolist() == [False] and np.isnan(positions).all()


def test_backproject_wrist_outside_search_radius_is_invalid() -> None:
    depth = np.zeros((1, 480, 640), np.float32)
    depth[0, 240, 330] = 1.0  # 10 px away
    assert backproject_wrist(np.array([[320.0, 240.0]]), depth, K, search_radius_px=9)[1].tolist() == [False]
    assert backproject_wrist(np.array([[320.0, 240.0]]), depth, K, search_radius_px=10)[1].tolist() == [True]


def test_backproject_wrist_vectorised_over_frames_with_per_frame_intrinsics() -> None:
    depth = np.stack([np.full((480, 640), d, np.float32) for d in (1.0, 2.0, 0.0)])
    intrinsics = np.stack([K, K * [[2], [2], [1]], K])  # frame 1: focal 1000, centre (640, 480)
    uv = np.array([[820.0, 240.0], [600.0, 400.0], [320.0, 240.0]])  # frame 0 clamped to u=639
    positions, valid = backproject_wrist(uv, depth, intrinsics, offset_m=0.0)
    assert valid.tolist() == [True, True, False]
    np.testing.assert_allclose(positions[0], [319 / 500, 0.0, 1.0])
    np.testing.assert_allclose(positions[1], [-0.08, -0.16, 2.0])


def line(steps: list[float]) -> np.ndarray:
    """Positions along x at the given metres, at depth 1 m."""
    return np.array([[x, 0.0, 1.0] for x in steps])


@pytest.mark.parametrize(
    ("xs", "valid", "fps", "speed", "expected"),
    [
        # 0.099 m per frame at 10 fps = 0.99 m/s: every frame kept
        ([0, 0.099, 0.198, 0.297], [1, 1, 1, 1], 10, 1.0, [1, 1, 1, 1]),
        # 0.101 m per frame = 1.01 m/s: every later frame is too fast from the kept first one
        ([0, 0.101, 0.202, 0.303], [1, 1, 1, 1], 10, 1.0, [1, 0, 0, 0]),
        # a single outlier is dropped and the good frame after it is kept
        ([0, 0.05, 0.8, 0.1, 0.15], [1, 1, 1, 1, 1], 10, 1.0, [1, 1, 0, 1, 1]),
        # a run of outliers does not drag the reference along
        ([0, 0.5, 0.55, 0.6, 0.05], [1, 1, 1, 1, 1], 10, 1.0, [1, 0, 0, 0, 1]),
        # the allowance grows with the gap: 0.25 m over 3 frames at 0.1 m/frame
        ([0, 9, 9, 0.25], [1, 0, 0, 1], 10, 1.0, [1, 0, 0, 1]),
        # 30 fps: 1 m/s allows 3.33 cm per frame
        ([0, 0.03, 0.07], [1, 1, 1], 30, 1.0, [1, 1, 0]),
        # higher limit
        ([0, 0.3], [1, 1], 10, 5.0, [1, 1]),
        # the first valid frame is the initial reference (a bad first frame costs its neighbours)
        ([0.9, 0, 0.05], [1, 1, 1], 10, 1.0, [1, 0, 0]),
        # leading invalid frames are ignored
        ([5, 0, 0.05], [0, 1, 1], 10, 1.0, [0, 1, 1]),
    ],
)
def test_drop_fast_jumps(xs: list[float], valid: list[int], fps: float, speed: float, expected: list[int]) -> None:
    out = drop_fast_jumps(line(xs), np.array(valid, bool), fps=fps, max_speed_m_s=speed)
    assert out.astype(int).tolist() == expected


def test_drop_fast_jumps_drops_non_finite_and_does_not_modify_input() -> None:
    positions = line([0, 0.01, 0.02])
    positions[1] = np.nan
    valid = np.ones(3, bool)
    assert drop_fast_jumps(positions, valid, fps=10).tolist() == [True, False, True]
    assert valid.all()


def pose(angle_deg: float = 0.0, axis: str = "z", t: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler(axis, angle_deg, degrees=True).as_matrix()
    out[:3, 3] = t
    return out


NAN_POSE = np.full((4, 4), np.nan)


@pytest.mark.parametrize(
    ("valid", "max_gap", "expected_valid"),
    [
        ([1, 0, 1], 20, [1, 1, 1]),
        ([1, 0, 0, 1], 2, [1, 1, 1, 1]),  # gap == max_gap: filled
        ([1, 0, 0, 0, 1], 2, [1, 0, 0, 0, 1]),  # gap > max_gap: left alone
        ([0, 0, 1, 0, 1, 0], 20, [0, 0, 1, 1, 1, 0]),  # never extrapolated at either end
        ([1, 0, 1], 0, [1, 0, 1]),  # 0 disables
        ([0, 0, 0], 20, [0, 0, 0]),
        ([1, 0, 1, 0, 0, 0, 1, 0, 0, 1], 2, [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]),  # several gaps
    ],
)
def test_interpolate_gaps_which_frames(valid: list[int], max_gap: int, expected_valid: list[int]) -> None:
    mask = np.array(valid, bool)
    poses = np.stack([pose(10.0 * i, t=(i, 0, 0)) if v else NAN_POSE for i, v in enumerate(valid)])
    out, filled = interpolate_gaps(poses, mask, max_gap=max_gap)
    assert filled.astype(int).tolist() == expected_valid
    np.testing.assert_array_equal(out[mask], poses[mask])  # valid frames untouched
    assert np.isnan(out[~filled]).all()


@pytest.mark.parametrize(
    ("start", "end", "gap", "expected"),
    [
        # translation linear, rotation at a constant rate about the same axis
        (pose(0, "z", (0, 0, 0)), pose(90, "z", (1, 2, 3)), 1, [pose(45, "z", (0.5, 1, 1.5))]),
        (pose(0, "x"), pose(90, "x", (3, 0, 0)), 2, [pose(30, "x", (1, 0, 0)), pose(60, "x", (2, 0, 0))]),
        # shortest arc: 350 deg is -10 deg, so the midpoint is -5 deg, not 175 deg
        (pose(0, "y"), pose(350, "y"), 1, [pose(-5, "y")]),
        # near half a turn stays on the 170 deg arc
        (pose(10, "z"), pose(180, "z"), 1, [pose(95, "z")]),
    ],
)
def test_interpolate_gaps_values(start: np.ndarray, end: np.ndarray, gap: int, expected: list[np.ndarray]) -> None:
    poses = np.stack([start, *[NAN_POSE] * gap, end])
    valid = np.array([True, *[False] * gap, True])
    out, filled = interpolate_gaps(poses, valid, max_gap=gap)
    assert filled.all()
    np.testing.assert_allclose(out[1:-1], np.stack(expected), atol=1e-12)
