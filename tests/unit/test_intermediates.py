"""Intermediate files: round trips, validation errors naming the file, safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trackset.errors import BadInputError
from trackset.formats.intermediates import (
    DepthCamera,
    FramesMeta,
    Hand,
    HandPoses,
    Tracks2d,
    Tracks3d,
    load_pt,
    read_depth_camera,
    read_frames,
    read_hand_poses,
    read_tracks_2d,
    read_tracks_3d,
    write_depth_camera,
    write_frames,
    write_hand_poses,
    write_tracks_2d,
    write_tracks_3d,
)
from trackset.formats.layout import WorkLayout

T, N, L = 6, 4, 3


def depth_camera() -> DepthCamera:
    return DepthCamera(np.ones((T, 8, 10), np.float32), np.tile(np.eye(3), (T, 1, 1)), np.tile(np.eye(4), (T, 1, 1)))


def hand(valid: bool) -> Hand:
    pose = np.tile(np.eye(4), (T, 1, 1)) if valid else np.full((T, 4, 4), np.nan)
    return Hand(np.full(T, valid), pose, np.zeros((T, 15, 3, 3)), np.zeros((T, 21, 3)), np.zeros(10))


def test_depth_camera_round_trip_dtypes(tmp_path):
    path = tmp_path / "vipe" / "00000.npz"
    write_depth_camera(path, depth_camera())
    with np.load(path) as raw:
        assert {k: raw[k].dtype for k in raw.files} == {
            "depths": np.float16,
            "intrinsics": np.float32,
            "extrinsics": np.float32,
        }
    assert read_depth_camera(path, "00000", T).depths.shape == (T, 8, 10)


def test_depth_camera_wrong_shape_names_key_and_file(tmp_path):
    path = tmp_path / "00000.npz"
    np.savez(
        path,
        depths=np.ones((T, 8, 10), np.float16),
        intrinsics=np.ones((T, 3, 4), np.float32),
        extrinsics=np.ones((T, 4, 4), np.float32),
    )
    with pytest.raises(BadInputError, match=r"video 00000, stage depth_camera \(.*00000.npz\): 'intrinsics' has shape"):
        read_depth_camera(path, "00000")


def test_tracks_round_trip_and_frame_mismatch(tmp_path):
    path = tmp_path / "00000.pt"
    tracks = Tracks3d([(0, L), (1, 1 + L)], [np.zeros((L, N, 3))] * 2, np.eye(3), T, L, 1)
    write_tracks_3d(path, "00000", tracks, [np.tile(np.eye(4), (L, 1, 1))] * 2)
    raw = torch.load(path, weights_only=True)
    assert raw["tracks"][0].shape == (1, L, N, 3) and raw["tracks"][0].dtype == torch.float32
    assert raw["windows"] == [(0, L), (1, 1 + L)]
    assert len(read_tracks_3d(path, "00000", T).tracks) == 2
    with pytest.raises(BadInputError, match="from another video"):
        read_tracks_3d(path, "00000", T + 1)


def write_tracks(path, dim: int, points: np.ndarray) -> None:
    """A 3D (``dim`` 3) or 2D track file of two windows, the second holding ``points``."""
    windows, tracks = [(0, L), (1, 1 + L)], [np.zeros((L, N, dim)), points]
    if dim == 3:
        write_tracks_3d(
            path, "00000", Tracks3d(windows, tracks, np.eye(3), T, L, 1), [np.tile(np.eye(4), (L, 1, 1))] * 2
        )
    else:
        write_tracks_2d(path, "00000", Tracks2d(windows, tracks, T, L, 1))


@pytest.mark.parametrize("dim", [3, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_3d_and_2d_tracks_refuse_non_finite_points_naming_the_window(tmp_path, dim, bad):
    """One check for both readers: a NaN point would silently leave the in-image test of either."""
    path = tmp_path / "00000.pt"
    points = np.zeros((L, N, dim))
    points[1, 2, 0] = bad
    write_tracks(path, dim, points)
    read = read_tracks_3d if dim == 3 else read_tracks_2d
    with pytest.raises(BadInputError, match=r"00000\.pt\): 'tracks\[1\]' has non-finite values"):
        read(path, "00000", T)
    write_tracks(path, dim, np.ones((L, N, dim)))
    assert [w.shape for w in read(path, "00000", T).tracks] == [(L, N, dim)] * 2


def test_tracks_missing_key(tmp_path):
    path = tmp_path / "00000.pt"
    torch.save({"tracks": []}, path)
    with pytest.raises(BadInputError, match="missing key 'windows'"):
        read_tracks_3d(path, "00000", T)


def test_hands_round_trip(tmp_path):
    path = tmp_path / "00000.pt"
    write_hand_poses(path, HandPoses(hand(True), hand(False), np.eye(3), T))
    back = read_hand_poses(path, "00000", T)
    assert back.left.valid.all() and not back.right.valid.any()


def test_script_pipeline_numpy_pt_loads_through_allow_list(tmp_path):
    path = tmp_path / "00000.pt"
    torch.save({"left_valid": np.ones(T, bool), "x": np.float32(1.5), "n": 3}, path)
    data = load_pt(path, "00000", "hands")
    assert isinstance(data["left_valid"], np.ndarray) and data["x"] == 1.5


def test_numpy_pt_files_load_from_many_threads_at_once(tmp_path):
    """The thread runner loads several videos' .pt files at once; the allow-list must hold for all."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for index in range(8):
        paths.append(tmp_path / f"{index:05d}.pt")
        torch.save({"tracks": np.full((4, 3), index, np.float32), "visibility": np.ones(4, bool)}, paths[-1])

    def load(index: int) -> float:
        return float(load_pt(paths[index % 8], f"{index % 8:05d}", "tracks_3d")["tracks"][0, 0])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(load, range(400))) == [float(i % 8) for i in range(400)]


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_object_is_refused(tmp_path, capsys):
    path = tmp_path / "00000.pt"
    torch.save({"tracks": _Payload()}, path)
    with pytest.raises(BadInputError, match=r"refused to unpickle: Unsupported global"):
        load_pt(path, "00000", "tracks_3d")
    assert "must never run" not in capsys.readouterr().out


def test_truncated_pt_is_reported(tmp_path):
    path = tmp_path / "00000.pt"
    torch.save({"a": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(BadInputError, match="unreadable"):
        load_pt(path, "00000", "hands")


def test_an_empty_frames_npy_names_the_file(tmp_path):
    work = WorkLayout(tmp_path)
    write_frames(work, FramesMeta("00000", T, 10.0, 4, 3), np.zeros((T, 3, 4, 3), np.uint8))
    work.frames_npy("00000").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"stage preprocess \(.*frames\.npy\): unreadable: No data left in file"):
        read_frames(work, "00000")


def test_frames_npy_and_png_fallback(tmp_path):
    import cv2

    work = WorkLayout(tmp_path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    write_frames(work, FramesMeta("00000", 3, 10.0, 10, 8), frames)
    back, meta = read_frames(work, "00000")
    np.testing.assert_array_equal(back, frames)
    folder = work.frames_dir("00001")
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    back, meta = read_frames(work, "00001")
    np.testing.assert_array_equal(back, frames)
    with pytest.raises(BadInputError, match="no frames"):
        read_frames(work, "00002")
