"""The script pipeline's intermediates: recognised by their content, converted to trackset's meaning.

The scripts' files are written here as ``process_tapip3d.py`` and ``process_wilor.py`` write
them (numpy arrays, ``window_poses`` = E_s^-1 E_{s+k}, mirrored left-hand rotations), for a
camera that turns about every axis; expectations are composed with scipy from the scene's
parameters, never with trackset's helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from trackset.errors import BadInputError
from trackset.formats.intermediates import (
    Hand,
    HandPoses,
    Tracks3d,
    read_hand_poses,
    read_tracks_3d,
    write_hand_poses,
    write_tracks_3d,
)
from trackset.formats.script_conventions import (
    script_hands_unmirrored,
    script_tracks_in_camera0,
    to_trackset_conventions,
)

VID, T, L = "00007", 6, 4
MIRROR = np.diag([-1.0, 1.0, 1.0])
STATIC = np.array([[0.1, -0.05, 1.2], [-0.2, 0.1, 1.8]])  # world points


def camera_to_world(t: int) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("zxy", [4.0 * t, -3.0 * t, 5.0 * t], degrees=True).as_matrix()
    pose[:3, 3] = [0.03 * t, -0.01 * t, 0.02 * t]
    return pose


EXTRINSICS = np.stack([np.linalg.inv(camera_to_world(t)) for t in range(T)])


def script_tracks_file(path: Path, extrinsics: np.ndarray = EXTRINSICS) -> None:
    """What process_tapip3d.py saves for STATIC seen by an ideal tracker given X_k as extrinsics."""
    stored = extrinsics.astype(np.float32)
    windows, tracks, poses = [], [], []
    for s in range(T - L + 1):
        x = np.stack([np.linalg.inv(stored[s]) @ stored[k] for k in range(s, s + L)])  # relativize_poses
        steps = []
        for k in range(L):
            seen = EXTRINSICS[s + k] @ np.c_[STATIC, np.ones(len(STATIC))].T  # true points in camera s+k
            steps.append((np.linalg.inv(x[k].astype(np.float64)) @ seen)[:3].T)  # in TAPIP3D's world
        windows.append((s, s + L))
        tracks.append(torch.from_numpy(np.stack(steps).astype(np.float32))[None])
        poses.append(x)
    data = {
        "tracks": tracks,
        "windows": windows,
        "window_poses": poses,
        "intrinsics": np.eye(3, dtype=np.float32),
        "video_name": VID,
        "window_length": L,
        "stride": 1,
        "num_frames": T,
    }
    torch.save(data, path)


def test_script_tracks_are_recognised_and_moved_into_camera_zero(tmp_path):
    path = tmp_path / f"{VID}.pt"
    script_tracks_file(path)
    tracks = read_tracks_3d(path, VID, T)
    assert tracks.conventions == "script" and len(tracks.tracker_extrinsics) == T - L + 1
    converted = script_tracks_in_camera0(tracks, EXTRINSICS, VID, path)
    assert converted.conventions == "trackset" and converted.tracker_extrinsics == []
    for (s, _), points in zip(converted.windows, converted.tracks, strict=True):
        in_camera_s = (EXTRINSICS[s] @ np.c_[STATIC, np.ones(2)].T)[:3].T
        np.testing.assert_allclose(points, np.broadcast_to(in_camera_s, (L, 2, 3)), atol=2e-6)  # static: still
    raw = read_tracks_3d(path, VID, T)
    assert np.abs(raw.tracks[1][-1] - raw.tracks[1][0]).max() > 0.005  # unconverted, the static points drift


def test_trackset_files_are_left_as_they_are(tmp_path):
    path = tmp_path / f"{VID}.pt"
    camera0 = [np.ones((L, 2, 3))] * (T - L + 1)
    tracks = Tracks3d([(s, s + L) for s in range(T - L + 1)], camera0, np.eye(3), T, L, 1)
    write_tracks_3d(path, VID, tracks, [np.tile(np.eye(4), (L, 1, 1))] * (T - L + 1))
    back = read_tracks_3d(path, VID, T)
    assert back.conventions == "trackset"
    same, _ = to_trackset_conventions(VID, back, None, EXTRINSICS, path)
    assert same is back


def test_window_poses_of_another_depth_run_fail_naming_video_and_file(tmp_path):
    path = tmp_path / f"{VID}.pt"
    other = EXTRINSICS.copy()
    other[:, 0, 3] += 0.01 * np.arange(T)  # the same video, another camera path
    script_tracks_file(path, other)
    with pytest.raises(
        BadInputError, match=rf"video {VID}, stage tracks_3d \(.*{VID}.pt\): window_poses\[0\] \(window 0-4\)"
    ):
        script_tracks_in_camera0(read_tracks_3d(path, VID, T), EXTRINSICS, VID, path)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.pop("window_poses"), "missing key 'window_poses'"),
        (lambda d: d["window_poses"].pop(), "'window_poses' must be a list of 3 windows, found 2"),
        (lambda d: d["window_poses"].__setitem__(0, np.eye(4, dtype=np.float32)), r"'window_poses\[0\]' has shape"),
        (lambda d: d["window_poses"][2].__setitem__((1, 0, 3), np.nan), r"'window_poses\[2\]' has non-finite"),
    ],
    ids=["missing", "one short", "shape", "NaN"],
)
def test_script_tracks_without_usable_window_poses_fail(tmp_path, edit, reason):
    """The scripts' points are meaningless without the poses that define their frame."""
    path = tmp_path / f"{VID}.pt"
    script_tracks_file(path)
    data = torch.load(path, weights_only=False)
    edit(data)
    torch.save(data, path)
    with pytest.raises(BadInputError, match=reason):
        read_tracks_3d(path, VID, T)


def script_hands_file(path: Path, video_name: str = VID) -> tuple[np.ndarray, np.ndarray]:
    """process_wilor.py's file: numpy, left global_orient and hand_pose as WiLoR predicts them."""
    true_left = Rotation.from_euler("xyz", np.c_[np.arange(T) * 0.1, -0.2 + 0.05 * np.arange(T), 0.3 * np.ones(T)])
    fingers = Rotation.from_euler("y", 20, degrees=True).as_matrix()
    data: dict = {"video_name": video_name, "num_frames": T, "intrinsics": np.eye(3, dtype=np.float32)}
    for side in ("left", "right"):
        wrist = np.tile(np.eye(4), (T, 1, 1))
        wrist[:, :3, :3] = true_left.as_matrix() if side == "left" else true_left.inv().as_matrix()
        wrist[:, :3, 3] = [0.1, 0.0, 0.8]
        hand_pose = np.broadcast_to(fingers, (T, 15, 3, 3)).copy()
        if side == "left":
            wrist[:, :3, :3] = MIRROR @ wrist[:, :3, :3] @ MIRROR
            hand_pose = MIRROR @ hand_pose @ MIRROR
        data[f"{side}_valid"] = np.ones(T, bool)
        data[f"{side}_wrist_pose"] = wrist.astype(np.float32)
        data[f"{side}_hand_pose"] = hand_pose.astype(np.float32)
        data[f"{side}_joints_3d"] = np.zeros((T, 21, 3), np.float32)
        data[f"{side}_betas"] = np.zeros(10, np.float32)
    torch.save(data, path)
    return true_left.as_matrix(), fingers


def test_script_left_hands_are_unmirrored_and_right_hands_kept(tmp_path):
    path = tmp_path / f"{VID}.pt"
    true_left, fingers = script_hands_file(path)
    hands = read_hand_poses(path, VID, T)
    assert hands.conventions == "script"
    fixed = script_hands_unmirrored(hands)
    assert fixed.conventions == "trackset"
    np.testing.assert_allclose(fixed.left.wrist_pose[:, :3, :3], true_left, atol=1e-6)
    np.testing.assert_allclose(fixed.left.hand_pose, np.broadcast_to(fingers, (T, 15, 3, 3)), atol=1e-6)
    np.testing.assert_array_equal(fixed.left.wrist_pose[:, :3, 3], hands.left.wrist_pose[:, :3, 3])
    np.testing.assert_array_equal(fixed.right.wrist_pose, hands.right.wrist_pose)
    assert np.abs(hands.left.wrist_pose[:, :3, :3] - true_left).max() > 0.1  # stored mirrored


def test_trackset_hand_files_are_not_unmirrored(tmp_path):
    path = tmp_path / f"{VID}.pt"
    hand = Hand(
        np.ones(T, bool), np.tile(np.eye(4), (T, 1, 1)), np.zeros((T, 15, 3, 3)), np.zeros((T, 21, 3)), np.zeros(10)
    )
    write_hand_poses(path, HandPoses(hand, hand, np.eye(3), T))
    back = read_hand_poses(path, VID, T)
    assert back.conventions == "trackset"
    tracks = Tracks3d([], [], np.eye(3), T, L, 1)
    _, same = to_trackset_conventions(VID, tracks, back, EXTRINSICS, path)
    assert same is back


def test_script_hands_of_another_video_fail_naming_the_file(tmp_path):
    path = tmp_path / f"{VID}.pt"
    script_hands_file(path, video_name="00008")
    with pytest.raises(BadInputError, match=rf"video {VID}, stage hands .*video_name is '00008', not '{VID}'"):
        read_hand_poses(path, VID, T)
