"""H5 layout from hand-built intermediates with analytic expectations (FORMATS.md).

The scene: a camera translating along +x at 1 cm per frame with fixed intrinsics, static
points, one point moving in the world, one point that leaves the image, and a left hand
rotating about the optical axis. Expectations are computed here by hand, not with the
implementation's helpers.
"""

from __future__ import annotations

import hashlib

import cv2
import h5py
import numpy as np
import pytest

from trackset import h5_schema as schema
from trackset.dataset_statistics import write_dataset_statistics
from trackset.h5_layout import build_arrays, resize_depth, video_moments, write_h5
from trackset.intermediates import DepthCamera, Hand, HandPoses, Tracks3d
from trackset.layout import DatasetLayout
from trackset.settings import H5Settings
from trackset.statistics import VideoPartials
from trackset.validate import validate_dataset

T, L, H, W, S = 14, 10, 384, 512, 256
FX, CX, CY = 400.0, 256.0, 192.0
STEP = 0.01  # camera moves 1 cm along +x per frame
# K after cropping x0=64 and scaling 384 -> 256 (factor 2/3), worked out by hand.
FX_S, CX_S, CY_S = FX * 2 / 3, (CX - 64) * 2 / 3, CY * 2 / 3


def camera_center(t: np.ndarray | int) -> np.ndarray:
    return np.stack([STEP * np.asarray(t, float), 0 * np.asarray(t, float), 0 * np.asarray(t, float)], -1)


def extrinsics() -> np.ndarray:
    e = np.tile(np.eye(4), (T, 1, 1))
    e[:, :3, 3] = -camera_center(np.arange(T))
    return e


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


STATIC = np.array([[0.0, 0.0, 1.0], [0.2, -0.1, 1.5], [-0.3, 0.2, 2.0]])
MOVING_START, MOVING_VELOCITY = np.array([0.0, 0.1, 1.2]), np.array([0.0, 0.0, 0.02])  # per frame
LEAVING_START = np.array([-0.35, 0.0, 1.0])  # moves -x: in image for early windows, not later ones
LEFT_VALID_UNTIL = 11  # left hand valid on frames 0..10


def world_points(t: int) -> np.ndarray:
    moving = MOVING_START + MOVING_VELOCITY * t
    leaving = LEAVING_START + np.array([-0.01 * t, 0, 0])
    return np.vstack([STATIC, moving, leaving])


def wrist_world(t: int) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rot_z(0.05 * t)
    pose[:3, 3] = [0.1, 0.05, 0.8 + 0.01 * t]
    return pose


def make_inputs() -> tuple[np.ndarray, DepthCamera, Tracks3d, HandPoses]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    depths = np.full((T, H, W), 1.0, np.float32)
    depths[:, :50] = 3.0  # beyond the clip range
    depths[:, 50:60, :] = np.nan
    depths[:, 60:70, :] = 0.0
    depths[:, 70:80, :] = 0.05  # below the clip range
    k = np.array([[FX, 0, CX], [0, FX, CY], [0, 0, 1]])
    e = extrinsics()
    windows, tracks = [], []
    for s in range(T - L + 1):
        # Points of window s in camera s: world minus camera s's centre (no rotation).
        pts = np.stack([world_points(s + j) - camera_center(s) for j in range(L)])
        windows.append((s, s + L))
        tracks.append(pts)
    windows.append((T - L + 1, T))  # a short trailing window: must be ignored
    tracks.append(np.stack([world_points(T - L + 1 + j) for j in range(L - 1)]))
    track_data = Tracks3d(windows, tracks, k, T, L, 1)
    valid = np.arange(T) < LEFT_VALID_UNTIL
    wrist_cam = np.stack([e[t] @ wrist_world(t) for t in range(T)])
    wrist_cam[~valid] = np.nan
    nan_hand = Hand(np.zeros(T, bool), np.full((T, 4, 4), np.nan), np.full((T, 15, 3, 3), np.nan),
                    np.full((T, 21, 3), np.nan), np.full(10, np.nan))
    left = Hand(valid, wrist_cam, np.zeros((T, 15, 3, 3)), np.zeros((T, 21, 3)), np.zeros(10))
    hands = HandPoses(left, nan_hand, k, T)
    depth = DepthCamera(depths, np.tile(k, (T, 1, 1)), e)
    return frames, depth, track_data, hands


@pytest.fixture(scope="module")
def arrays():
    frames, depth, tracks, hands = make_inputs()
    return build_arrays("00000", frames, depth, tracks, hands, H5Settings(), L)


def uvd_by_hand(point: np.ndarray) -> np.ndarray:
    x, y, z = point
    return np.array([(FX_S * x / z + CX_S) / S, (FX_S * y / z + CY_S) / S, z])


def test_full_windows_only(arrays):
    assert arrays.starts.tolist() == list(range(T - L + 1))


def test_intrinsics_after_crop_and_scale(arrays):
    expected = np.array([[FX_S, 0, CX_S], [0, FX_S, CY_S], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(arrays.intrinsics, expected, rtol=1e-6)


def test_static_points_have_zero_displacement_and_projected_queries(arrays):
    for w, s in enumerate(arrays.starts):
        q, d = arrays.query_coords[w], arrays.displacements[w]
        for i, point in enumerate(STATIC):
            expected = uvd_by_hand(point - camera_center(s))
            np.testing.assert_allclose(q[i], expected, atol=1e-6)
            np.testing.assert_allclose(d[:, i], 0.0, atol=1e-6)


def test_moving_point_displacement(arrays):
    s = 2
    d = arrays.displacements[s][:, 3]  # the moving point is the 4th kept point
    for k in range(L):
        expected = uvd_by_hand(world_points(s + k)[3] - camera_center(s)) - uvd_by_hand(
            world_points(s)[3] - camera_center(s)
        )
        np.testing.assert_allclose(d[k], expected, atol=1e-6)
    assert d[0].tolist() == [0.0, 0.0, 0.0]


def test_point_leaving_the_image_is_dropped_for_that_window(arrays):
    for w, s in enumerate(arrays.starts):
        u_by_step = [uvd_by_hand(world_points(s + k)[4] - camera_center(s))[0] for k in range(L)]
        kept = all(0 <= u <= 1 for u in u_by_step)
        assert arrays.query_coords[w].shape[0] == 4 + int(kept)
    assert arrays.query_coords[0].shape[0] == 5  # in view for the whole first window
    assert arrays.query_coords[-1].shape[0] == 4  # it leaves during the last window


def test_poses_are_relative_camera_motion(arrays):
    for w in range(len(arrays.starts)):
        for k in range(L):
            # camera s+k sits STEP*k further along +x, seen from camera s.
            expected = [1, 0, 0, 0, 1, 0, STEP * k, 0, 0]
            np.testing.assert_allclose(arrays.poses[w, k], expected, atol=1e-6)


def test_left_hand_only_in_fully_valid_windows_and_in_camera_zero(arrays):
    left, right = arrays.hands["left"], arrays.hands["right"]
    assert not right.valid.any()
    assert left.valid.tolist() == [s + L <= LEFT_VALID_UNTIL for s in arrays.starts]
    for row, s in enumerate(arrays.starts[left.valid]):
        expected0 = uvd_by_hand(wrist_world(s)[:3, 3] - camera_center(s))
        np.testing.assert_allclose(left.query_uvd[row], expected0, atol=1e-6)
        for k in range(L):
            expected_k = uvd_by_hand(wrist_world(s + k)[:3, 3] - camera_center(s))
            np.testing.assert_allclose(left.uvd_displacements[row, k], expected_k - expected0, atol=1e-6)
            rel = rot_z(0.05 * k)  # R_k R_0^T of a rotation about z
            np.testing.assert_allclose(left.rot_displacements[row, k], np.r_[rel[:, 0], rel[:, 1]], atol=1e-6)
        r0 = rot_z(0.05 * s)
        np.testing.assert_allclose(left.query_rot_6d[row], np.r_[r0[:, 0], r0[:, 1]], atol=1e-6)


def test_video_is_lanczos_of_centre_crop(arrays):
    frames, *_ = make_inputs()
    expected = cv2.resize(frames[3, :, 64:448], (S, S), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(arrays.video[3], expected.transpose(2, 0, 1))


def test_depth_nearest_crop_clip_and_invalid(arrays):
    _, depth, *_ = make_inputs()
    raw = cv2.resize(depth.depths[0, :, 64:448], (S, S), interpolation=cv2.INTER_NEAREST)
    expected = np.where(np.isfinite(raw) & (raw > 0), np.clip(raw, 0.1, 2.5), 0)
    np.testing.assert_array_equal(arrays.depth[0], expected.astype(np.float32))
    assert set(np.unique(arrays.depth).tolist()) == {0.0, float(np.float32(0.1)), 1.0, 2.5}


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_depth_table_and_direct_routes_agree_with_numpy(dtype):
    """float16 depth goes through a bit-pattern table, other dtypes directly: same pixels, same moments."""
    rng = np.random.default_rng(3)
    raw = rng.uniform(-0.5, 3.5, (5, 48, 64)).astype(np.float16)  # below, inside and above [0.1, 2.5]
    raw[0, :4] = np.nan
    raw[1, :4] = np.inf
    raw[2, :4] = 0
    box = (8, 0, 48)
    image, moments = resize_depth(raw.astype(dtype), box, 32, 0.1, 2.5)
    rows = np.arange(32) * 48 // 32  # floor(i * crop / S), written out here
    expected = raw[:, rows][:, :, 8 + rows].astype(np.float32)
    with np.errstate(invalid="ignore"):
        expected = np.where(np.isfinite(expected) & (expected > 0), np.clip(expected, 0.1, 2.5), 0).astype(np.float32)
    np.testing.assert_array_equal(image, expected)
    assert image.dtype == np.float32 and image.flags.c_contiguous  # h5py writes strided arrays slowly
    values = expected[expected > 0].astype(np.float64)
    assert moments.count == values.size
    np.testing.assert_allclose(moments.mean, [values.mean()], rtol=1e-12, atol=0)
    np.testing.assert_allclose(moments.variance, [values.var()], rtol=1e-12, atol=0)


def test_moments_count_every_value_written(arrays):
    moments = video_moments(arrays)
    assert moments["displacement"].count == sum(d.shape[0] * d.shape[1] for d in arrays.displacements)
    valid_pixels = int((arrays.depth > 0).sum())
    assert moments["depth"].count == valid_pixels + sum(q.shape[0] for q in arrays.query_coords)
    assert moments["pose"].count == len(arrays.starts) * L
    assert moments["hand_uvd"].count == moments["hand_rot"].count == int(arrays.hands["left"].valid.sum()) * L
    pose_rows = arrays.poses.reshape(-1, 9).astype(np.float64)
    np.testing.assert_allclose(moments["pose"].mean, pose_rows.mean(0), rtol=1e-12, atol=1e-15)


def test_h5_layout_and_byte_identical(tmp_path, arrays):
    paths = [tmp_path / "a" / "00000.hdf5", tmp_path / "b" / "00000.hdf5"]
    for path in paths:
        write_h5(path, arrays)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    with h5py.File(paths[0]) as f:
        root = f["root"]
        assert root["video"].shape == (T, 3, S, S) and root["video"].dtype == np.uint8
        assert root["depth"].shape == (T, S, S) and root["depth"].dtype == np.float32
        assert root["intrinsics"].shape == (3, 3) and root["intrinsics"].dtype == np.float32
        assert root["num_frames"][()] == T and root["num_track_ts"][()] == L
        assert root["track_type"][()] == b"3d"
        assert sorted(root["tracks"]) == [f"frame_{s:04d}" for s in range(T - L + 1)]
        frame = root["tracks/frame_0000"]
        assert frame["query_coords"].dtype == np.float32 and frame["query_coords"].shape[1] == 3
        assert frame["displacements"].shape[0] == L and frame["poses"].shape == (L, 9)
        assert frame["left_wrist_query_uvd"].shape == (3,)
        assert frame["left_wrist_uvd_displacements"].shape == (L, 3)
        assert frame["left_wrist_query_rot_6d"].shape == (6,)
        assert frame["left_wrist_rot_displacements"].shape == (L, 6)
        assert "right_wrist_query_uvd" not in frame
        assert "left_wrist_query_uvd" not in root[f"tracks/frame_{T - L:04d}"]


def test_every_key_written_is_declared_by_the_schema_and_validates(tmp_path, arrays):
    layout = DatasetLayout(tmp_path)
    write_h5(layout.h5("00000"), arrays)
    VideoPartials(video_id="00000", fingerprint="test", **video_moments(arrays)).write(layout.partials("00000"))
    write_dataset_statistics(layout, std_floor=1e-6)
    written: list[str] = []
    with h5py.File(layout.h5("00000")) as f:
        f.visit(written.append)
    undeclared = []
    for path in written:
        parts = path.split("/")
        if parts[0] != schema.ROOT or (len(parts) > 1 and parts[1] not in schema.ROOT_KEYS):
            undeclared.append(path)
        elif parts[1:2] == [schema.TRACKS] and len(parts) > 2:
            if schema.parse_window_group(parts[2]) is None or (len(parts) > 3 and parts[3] not in schema.WINDOW_KEYS):
                undeclared.append(path)
    assert undeclared == []
    assert {p.split("/")[-1] for p in written if p.count("/") == 3} == {
        *schema.WINDOW_SHAPES,
        *(schema.hand_key("left", suffix) for suffix in schema.HAND_SHAPES),
    }  # the scene has a left hand only
    report = validate_dataset(tmp_path, H5Settings(), std_floor=1e-6, deep=True)
    assert report.ok, report.problems
