"""H5 layout from hand-built intermediates with analytic expectations (FORMATS.md).

The scene: a camera that turns about all three axes (an x-y-z Euler sequence, so the turn
between two frames has no fixed axis) while it translates, with fixed intrinsics; static
points, one point moving in the world, one point that leaves the image; a left hand that
rotates about all axes and stays in view, and a right hand, valid on the full frame, that
drifts out of the square crop. Expectations are composed here with scipy and numpy from
those parameters, never with the implementation's helpers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trackset.config.settings import H5Settings, Settings
from trackset.dataset.record import RunInfo, write_dataset_files
from trackset.dataset.validate import validate_dataset
from trackset.domain import VideoRef
from trackset.formats import h5_schema as schema
from trackset.formats.h5_layout import build_arrays, resize_depth, video_moments, write_h5
from trackset.formats.intermediates import DepthCamera, Hand, HandPoses, Tracks3d
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import VideoPartials
from trackset.stages.provenance import file_attributes
from trackset.stages.registry import stage_config

T, L, H, W, S = 14, 10, 384, 512, 256
FX, CX, CY = 400.0, 256.0, 192.0
# K after cropping x0=64 and scaling 384 -> 256 (factor 2/3), worked out by hand.
FX_S, CX_S, CY_S = FX * 2 / 3, (CX - 64) * 2 / 3, CY * 2 / 3
CAMERA_EULER_PER_FRAME = np.deg2rad([0.6, -0.9, 0.8])  # "xyz" angles of the camera->world rotation
CAMERA_STEP = np.array([0.01, 0.003, -0.002])  # metres per frame


def camera_to_world(t: int) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", CAMERA_EULER_PER_FRAME * t).as_matrix()
    pose[:3, 3] = CAMERA_STEP * t
    return pose


def extrinsics() -> np.ndarray:
    return np.stack([np.linalg.inv(camera_to_world(t)) for t in range(T)])


STATIC = np.array([[0.0, 0.0, 1.0], [0.2, -0.1, 1.5], [-0.3, 0.2, 2.0]])
MOVING_START, MOVING_VELOCITY = np.array([0.0, 0.1, 1.2]), np.array([0.0, 0.0, 0.02])  # per frame
LEAVING_START = np.array([-0.3, 0.0, 1.0])  # moves -x: in image for the first window only
LEFT_VALID_UNTIL = 11  # left hand valid on frames 0..10


def world_points(t: int) -> np.ndarray:
    moving = MOVING_START + MOVING_VELOCITY * t
    leaving = LEAVING_START + np.array([-0.02 * t, 0, 0])
    return np.vstack([STATIC, moving, leaving])


def wrist_world(side: str, t: int) -> np.ndarray:
    """Left: turning about x, y and z in view. Right: drifting +x out of the crop, not of the frame."""
    pose = np.eye(4)
    if side == "left":
        pose[:3, :3] = Rotation.from_euler("xyz", [0.3 + 0.04 * t, -0.2 + 0.06 * t, 0.1 + 0.05 * t]).as_matrix()
        pose[:3, 3] = [0.1, 0.05, 0.8 + 0.01 * t]
    else:
        pose[:3, :3] = Rotation.from_euler("zyx", [0.2 - 0.03 * t, 0.1 * t, 0.05 * t]).as_matrix()
        pose[:3, 3] = [0.23 + 0.015 * t, -0.05, 0.8]
    return pose


def in_camera(t_camera: int, world: np.ndarray) -> np.ndarray:
    """World points ``(..., 3)`` in the camera of frame ``t_camera``."""
    e = np.linalg.inv(camera_to_world(t_camera))
    return world @ e[:3, :3].T + e[:3, 3]


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
        windows.append((s, s + L))
        tracks.append(np.stack([in_camera(s, world_points(s + j)) for j in range(L)]))
    windows.append((T - L + 1, T))  # a short trailing window: must be ignored
    tracks.append(np.stack([world_points(T - L + 1 + j) for j in range(L - 1)]))
    track_data = Tracks3d(windows, tracks, k, T, L, 1)
    hands = {}
    for side, valid in (("left", np.arange(T) < LEFT_VALID_UNTIL), ("right", np.ones(T, bool))):
        wrist_cam = np.stack([e[t] @ wrist_world(side, t) for t in range(T)])
        wrist_cam[~valid] = np.nan
        hands[side] = Hand(valid, wrist_cam, np.zeros((T, 15, 3, 3)), np.zeros((T, 21, 3)), np.zeros(10))
    depth = DepthCamera(depths, np.tile(k, (T, 1, 1)), e)
    return frames, depth, track_data, HandPoses(hands["left"], hands["right"], k, T)


@pytest.fixture(scope="module")
def arrays():
    frames, depth, tracks, hands = make_inputs()
    return build_arrays("00000", frames, depth, tracks, hands, H5Settings(), L)


def uvd_by_hand(point: np.ndarray) -> np.ndarray:
    x, y, z = point
    return np.array([(FX_S * x / z + CX_S) / S, (FX_S * y / z + CY_S) / S, z])


def in_crop(uvd: np.ndarray) -> bool:
    return bool(((uvd[:, :2] >= 0) & (uvd[:, :2] <= 1)).all() and (uvd[:, 2] > 0).all())


def wrist_uvd(side: str, s: int) -> np.ndarray:
    """``(L, 3)`` true wrist of window s in its camera 0."""
    return np.stack([uvd_by_hand(in_camera(s, wrist_world(side, s + k)[:3, 3])) for k in range(L)])


def six_d(rotation: Rotation) -> np.ndarray:
    matrix = rotation.as_matrix()
    return np.r_[matrix[:, 0], matrix[:, 1]]


def test_full_windows_only(arrays):
    assert arrays.starts.tolist() == list(range(T - L + 1))


def test_intrinsics_after_crop_and_scale(arrays):
    expected = np.array([[FX_S, 0, CX_S], [0, FX_S, CY_S], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(arrays.intrinsics, expected, rtol=1e-6)


def test_static_points_have_zero_displacement_and_projected_queries(arrays):
    for w, s in enumerate(arrays.starts):
        q, d = arrays.query_coords[w], arrays.displacements[w]
        for i, point in enumerate(STATIC):
            np.testing.assert_allclose(q[i], uvd_by_hand(in_camera(s, point)), atol=1e-6)
            np.testing.assert_allclose(d[:, i], 0.0, atol=1e-6)


def test_moving_point_displacement(arrays):
    s = 2
    d = arrays.displacements[s][:, 3]  # the moving point is the 4th kept point
    start = uvd_by_hand(in_camera(s, world_points(s)[3]))
    for k in range(L):
        np.testing.assert_allclose(d[k], uvd_by_hand(in_camera(s, world_points(s + k)[3])) - start, atol=1e-6)
    assert d[0].tolist() == [0.0, 0.0, 0.0]


def test_point_leaving_the_image_is_dropped_for_that_window(arrays):
    for w, s in enumerate(arrays.starts):
        kept = in_crop(np.stack([uvd_by_hand(in_camera(s, world_points(s + k)[4])) for k in range(L)]))
        assert arrays.query_coords[w].shape[0] == 4 + int(kept)
    assert arrays.query_coords[0].shape[0] == 5  # in view for the whole first window
    assert arrays.query_coords[-1].shape[0] == 4  # it leaves during the last window


def test_poses_are_relative_camera_motion(arrays):
    """Pose k = camera s+k in camera s: C_s^-1 C_{s+k} with C camera->world, by scipy."""
    for w, s in enumerate(arrays.starts):
        turn_s = Rotation.from_euler("xyz", CAMERA_EULER_PER_FRAME * s)
        for k in range(L):
            turn = turn_s.inv() * Rotation.from_euler("xyz", CAMERA_EULER_PER_FRAME * (s + k))
            moved = turn_s.inv().apply(CAMERA_STEP * k)
            np.testing.assert_allclose(arrays.poses[w, k], np.r_[six_d(turn), moved], atol=1e-6)
    assert np.abs(arrays.poses[:, 1:, [1, 2, 5]]).min() > 1e-3  # the turns mix every axis


@pytest.mark.parametrize("side", ["left", "right"])
def test_hand_kept_where_valid_and_in_image_and_in_camera_zero(arrays, side):
    """Wrist uvd, rotation (camera 0 <- wrist) and R_k R_0^T of every kept window."""
    hand = arrays.hands[side]
    valid = np.arange(T) < LEFT_VALID_UNTIL if side == "left" else np.ones(T, bool)
    expected_kept = [bool(valid[s : s + L].all()) and in_crop(wrist_uvd(side, s)) for s in arrays.starts]
    assert hand.valid.tolist() == expected_kept
    assert any(expected_kept)
    for row, s in enumerate(arrays.starts[hand.valid]):
        uvd = wrist_uvd(side, s)
        np.testing.assert_allclose(hand.query_uvd[row], uvd[0], atol=1e-6)
        np.testing.assert_allclose(hand.uvd_displacements[row], uvd - uvd[0], atol=1e-6)
        camera_s = Rotation.from_euler("xyz", CAMERA_EULER_PER_FRAME * s)
        wrist = [camera_s.inv() * Rotation.from_matrix(wrist_world(side, s + k)[:3, :3]) for k in range(L)]
        np.testing.assert_allclose(hand.query_rot_6d[row], six_d(wrist[0]), atol=1e-6)
        for k in range(L):
            np.testing.assert_allclose(hand.rot_displacements[row, k], six_d(wrist[k] * wrist[0].inv()), atol=1e-6)


def test_hand_windows_outside_the_crop_are_dropped_and_counted(arrays):
    right = arrays.hands["right"]
    outside = [not in_crop(wrist_uvd("right", s)) for s in arrays.starts]
    assert 0 < sum(outside) < len(outside)
    assert right.out_of_image == sum(outside) and arrays.hands["left"].out_of_image == 0
    assert arrays.hand_windows_out_of_image == sum(outside)


def test_hands_in_image_off_keeps_every_valid_window():
    frames, depth, tracks, hands = make_inputs()
    arrays = build_arrays("00000", frames, depth, tracks, hands, H5Settings(hands_in_image=False), L)
    assert arrays.hands["right"].valid.all() and arrays.hand_windows_out_of_image == 0
    np.testing.assert_allclose(arrays.hands["right"].query_uvd[-1], wrist_uvd("right", T - L)[0], atol=1e-6)


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
    kept = sum(int(hand.valid.sum()) for hand in arrays.hands.values())
    assert moments["hand_uvd"].count == moments["hand_rot"].count == kept * L
    pose_rows = arrays.poses.reshape(-1, 9).astype(np.float64)
    np.testing.assert_allclose(moments["pose"].mean, pose_rows.mean(0), rtol=1e-12, atol=1e-15)


def provenance_attributes(fingerprint: str = "test") -> dict[str, str | int]:
    """What the H5 stage writes into a file of video 00000 built with the default settings."""
    provenance = stage_config("h5_build", Settings()).provenance
    return file_attributes(provenance, VideoRef("00000", Path("clip.mp4"), "0" * 64), fingerprint)


def test_h5_layout_and_byte_identical(tmp_path, arrays):
    paths = [tmp_path / "a" / "00000.hdf5", tmp_path / "b" / "00000.hdf5"]
    for path in paths:
        write_h5(path, arrays, attributes=provenance_attributes())
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
        for side, hand in arrays.hands.items():
            present = [f"{side}_wrist_query_uvd" in root[f"tracks/frame_{s:04d}"] for s in arrays.starts]
            assert present == hand.valid.tolist()
        assert "left_wrist_query_uvd" not in root[f"tracks/frame_{T - L:04d}"]


def h5_contents(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every dataset of a file: dtype, shape and bytes."""
    contents: dict[str, tuple[str, tuple[int, ...], bytes]] = {}

    def read(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            contents[name] = (item.dtype.str, item.shape, np.asarray(item[()]).tobytes())

    with h5py.File(path) as f:
        f.visititems(read)
    return contents


def test_provenance_attributes_leave_every_array_as_it_was(tmp_path, arrays):
    """The attributes are metadata of the file's root: the datasets the reader loads keep their bytes."""
    plain, stamped = tmp_path / "plain.hdf5", tmp_path / "stamped.hdf5"
    write_h5(plain, arrays, text="push the box")
    write_h5(stamped, arrays, text="push the box", attributes=provenance_attributes())
    assert h5_contents(stamped) == h5_contents(plain)
    with h5py.File(stamped) as f:
        assert f.attrs["trackset.video_id"] == "00000" and f.attrs["trackset.tracks_3d.seed"] == 0
        assert list(f["root"].attrs) == []


def test_every_key_written_is_declared_by_the_schema_and_validates(tmp_path, arrays):
    layout = DatasetLayout(tmp_path)
    write_h5(layout.h5("00000"), arrays, attributes=provenance_attributes())
    VideoPartials(video_id="00000", fingerprint="test", **video_moments(arrays)).write(layout.partials("00000"))
    write_dataset_files(layout, 1e-6, RunInfo(), datetime.now(timezone.utc))
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
        *(schema.hand_key(side, suffix) for side in schema.HAND_SIDES for suffix in schema.HAND_SHAPES),
    }
    report = validate_dataset(tmp_path, H5Settings(), std_floor=1e-6, deep=True)
    assert report.ok, report.problems
