"""Contract tests of the real-model adapters against fakes of the models' public APIs.

Each adapter must turn what its model returns into the FORMATS.md intermediate, which the
``trackset.formats.intermediates`` writers accept and readers read back. Expected values come from
the fakes' analytic scenes (numpy/scipy formulas written here), not from trackset helpers.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.unit.fakes import tapip3d_api, vipe_api, wilor_api
from trackset.adapters import check_real_backends, mano, tapip3d, vipe, wilor
from trackset.config.settings import DepthCameraSettings, HandsSettings, Settings, Tracks3dSettings
from trackset.domain import VideoRef
from trackset.errors import ModelUnavailableError
from trackset.formats.intermediates import (
    HAND_SIDES,
    DepthCamera,
    FramesMeta,
    read_depth_camera,
    read_hand_poses,
    read_tracks_3d,
    write_depth_camera,
    write_hand_poses,
    write_tracks_3d,
)
from trackset.geometry.camera import window_relative_poses
from trackset.stages.config import DepthCameraConfig

VID = "00003"


def pose(angle_deg: float, axis: str, translation: tuple[float, float, float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler(axis, angle_deg, degrees=True).as_matrix()
    out[:3, 3] = translation
    return out


def frames_and_meta(t: int, h: int, w: int, fps: float = 10.0) -> tuple[np.ndarray, FramesMeta]:
    frames = np.random.default_rng(0).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    return frames, FramesMeta(VID, t, fps, w, h, timestamps_s=[i / fps for i in range(t)])


# ---------------------------------------------------------------- ViPE


def vipe_scene() -> vipe_api.Scene:
    return vipe_api.Scene(
        camera_to_world=lambda t: pose(5.0 * t, "y", (0.1 * t, 0.02 * t, -0.03 * t)),
        depth=lambda t, hw: np.full(hw, 1.0 + 0.1 * t, np.float32),
        intrinsics=(60.0, 61.0, 32.0, 24.0),
    )


def test_vipe_adapter_inverts_poses_and_builds_intrinsics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scene = vipe_api.install(monkeypatch, vipe_scene())
    frames, meta = frames_and_meta(6, 48, 64)
    backend = vipe.ViPEBackend(DepthCameraSettings(backend="real"))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta)
    backend.unload()

    camera_to_world = np.stack([scene.camera_to_world(t) for t in range(6)])
    np.testing.assert_allclose(result.extrinsics, np.linalg.inv(camera_to_world), atol=1e-6)
    K = np.array([[60.0, 0, 32], [0, 61.0, 24], [0, 0, 1]])
    np.testing.assert_allclose(result.intrinsics, np.broadcast_to(K, (6, 3, 3)))
    np.testing.assert_allclose(result.depths[:, 0, 0], 1.0 + 0.1 * np.arange(6), rtol=1e-6)
    assert result.depths.shape == (6, 48, 64)
    # ViPE saw our frames, at our rate and under our id, and was asked to write nothing.
    run = scene.runs[0]
    assert (run["name"], run["fps"], len(run["rgb"])) == (VID, 10.0, 6)
    np.testing.assert_allclose(run["rgb"][2], frames[2] / 255.0, atol=1e-6)
    assert {"pipeline=lyra", "pipeline.output.save_artifacts=false", "pipeline.output.save_viz=false"} <= set(
        scene.configs[0]
    )


def test_vipe_result_round_trips_through_the_intermediate_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    vipe_api.install(monkeypatch, vipe_scene())
    frames, meta = frames_and_meta(4, 24, 32)
    backend = vipe.ViPEBackend(DepthCameraSettings(backend="real"))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta)
    path = tmp_path / "vipe" / f"{VID}.npz"
    write_depth_camera(path, result)
    with np.load(path) as raw:
        stored = {key: (raw[key].shape, raw[key].dtype) for key in raw.files}
    assert stored == {
        "depths": ((4, 24, 32), np.float16),
        "intrinsics": ((4, 3, 3), np.float32),
        "extrinsics": ((4, 4, 4), np.float32),
    }
    back = read_depth_camera(path, VID, num_frames=4)
    np.testing.assert_allclose(back.extrinsics, result.extrinsics, atol=1e-6)


def test_vipe_weights_dir_becomes_the_download_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    vipe_api.install(monkeypatch, vipe_scene())
    for name in ("TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(name, "unchanged")
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub.get_dir())
    cache = tmp_path / "vipe-weights"
    cache.mkdir()
    vipe.ViPEBackend(DepthCameraSettings(backend="real", weights_dir=cache)).load()
    assert torch.hub.get_dir() == str(cache / "torch")
    assert os.environ["HF_HOME"] == str(cache / "huggingface")


def test_vipe_clamp_reaches_y2rs_vendored_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog) -> None:
    """y2r's ViPE (no ``vipe.config``; Hydra; ``init.fov_*_degrees``) gets the script's clamp on
    GeoCalib's estimate and on SLAM's intrinsics, and its model cache; a 45 degree estimate
    comes back as the 60 degree lower bound."""
    scene = vipe_api.install(monkeypatch, vipe_scene(), flavour="y2r")
    scene.fov_estimate_deg = 45.0
    frames, meta = frames_and_meta(3, 48, 64)
    backend = vipe.ViPEBackend(DepthCameraSettings(backend="real"))
    with caplog.at_level("INFO", logger=vipe.__name__):
        backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta)
    assert {
        "pipeline.init.fov_min_degrees=60.0",
        "pipeline.init.fov_max_degrees=90.0",
        "++pipeline.slam.fov_min_degrees=60.0",
        "++pipeline.slam.fov_max_degrees=90.0",
    } <= set(scene.configs[0])
    config = scene.pipeline_configs[0]
    assert (config.init.fov_min_degrees, config.init.fov_max_degrees) == (60.0, 90.0)
    assert (config.slam.fov_min_degrees, config.slam.fov_max_degrees) == (60.0, 90.0)
    assert scene.model_caches[0]["init"] is config.init  # the priors loaded once, from that config
    focal = 48 / (2 * np.tan(np.radians(60.0) / 2))
    np.testing.assert_allclose(result.intrinsics[0], [[focal, 0, 32], [0, focal, 24], [0, 0, 1]], rtol=1e-5)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"depth_camera: ViPE 0.1.1 at /site-packages/y2r/vipe: y2r's vendored ViPE (field-of-view clamp)"
    ]


def test_vipe_upstream_cannot_clamp_and_one_line_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog
) -> None:
    scene = vipe_api.install(monkeypatch, vipe_scene(), flavour="upstream")
    with pytest.raises(ValueError, match="fov_min_degrees"):  # upstream refuses the keys
        vipe_api.sys.modules["vipe.config"].parse_typed_config(hydra_args=["++pipeline.init.fov_min_degrees=60"])
    backend = vipe.ViPEBackend(DepthCameraSettings(backend="real"))
    with caplog.at_level("INFO", logger=vipe.__name__):
        backend.load()
    assert not any("fov" in override for override in scene.configs[-1])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert (
        "has no field-of-view clamp; depth_camera.fov_min_deg = 60.0 and fov_max_deg = 90.0 are not applied"
        in (warnings[0])
    )
    assert "ViPE 1.1.0" in caplog.records[0].getMessage() and "upstream ViPE" in caplog.records[0].getMessage()
    caplog.clear()
    unclamped = vipe.ViPEBackend(DepthCameraSettings(backend="real", fov_min_deg=None, fov_max_deg=None))
    with caplog.at_level("INFO", logger=vipe.__name__):
        unclamped.load()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_fov_clamp_settings_and_fingerprints() -> None:
    with pytest.raises(ValueError, match="fov_min_deg must not be above fov_max_deg"):
        DepthCameraSettings(fov_min_deg=95)
    synthetic = DepthCameraConfig.from_settings(Settings()).output_settings()["section"]
    real = DepthCameraConfig.from_settings(Settings(depth_camera={"backend": "real"})).output_settings()["section"]
    assert "fov_min_deg" not in synthetic  # the synthetic backend does not read it
    assert (real["fov_min_deg"], real["fov_max_deg"]) == (60.0, 90.0)


# ---------------------------------------------------------------- TAPIP3D

K_TRACK = np.array([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]])


def tracking_inputs(t: int = 12) -> tuple[np.ndarray, FramesMeta, DepthCamera, np.ndarray]:
    frames, meta = frames_and_meta(t, 24, 32)
    camera_to_world = np.stack([pose(2.0 * i, "y", (0.05 * i, 0.0, 0.01 * i)) for i in range(t)])
    depths = np.full((t, 24, 32), 2.0, np.float32)
    depths[:, :4, :4] = np.nan  # invalid corner: never a query
    depth = DepthCamera(depths, np.broadcast_to(K_TRACK, (t, 3, 3)).copy(), np.linalg.inv(camera_to_world))
    return frames, meta, depth, camera_to_world


def tapip3d_settings(tmp_path: Path, **tracks: object) -> Tracks3dSettings:
    checkpoint = tmp_path / "tapip3d_final.pth"
    checkpoint.write_bytes(b"weights")
    return Tracks3dSettings(**{"backend": "real", "weights_path": checkpoint, "points_per_window": 40, **tracks})


def test_tapip3d_tracks_each_window_in_its_first_camera(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loaded = tapip3d_api.install(monkeypatch, hide_below_x=-0.2)
    frames, meta, depth, camera_to_world = tracking_inputs()
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path, visibility_threshold=0.9))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, depth)
    backend.unload()

    assert loaded[0].checkpoint == str(tmp_path / "tapip3d_final.pth")
    assert result.windows == [(0, 10), (1, 11), (2, 12)]
    assert (result.num_frames, result.window_length, result.stride, result.resolution) == (12, 10, 1, (24, 32))
    np.testing.assert_allclose(result.intrinsics, K_TRACK)
    calls = loaded[0].calls
    for start, call, track in zip((0, 1, 2), calls, result.tracks):
        # World = camera `start`: world->camera of step k is inv(C_{s+k}) @ C_s.
        expected = np.stack([np.linalg.inv(camera_to_world[start + k]) @ camera_to_world[start] for k in range(10)])
        np.testing.assert_allclose(call["extrinsics"], expected, atol=1e-5)
        np.testing.assert_allclose(call["intrinsics"], np.broadcast_to(K_TRACK, (10, 3, 3)))
        np.testing.assert_allclose(call["video"], frames[start : start + 10].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
        assert (call["bidrectional"], call["vis_threshold"], call["num_iters"]) == (False, 0.9, 6)
        queries = call["query_point"]
        assert len(queries) == 40 and (queries[:, 0] == 0).all()
        xyz = queries[:, 1:]
        np.testing.assert_allclose(xyz[:, 2], 2.0)  # back-projected with the window's first depth
        u = 40.0 * xyz[:, 0] / xyz[:, 2] + 16
        v = 40.0 * xyz[:, 1] / xyz[:, 2] + 12
        np.testing.assert_allclose(u, np.round(u), atol=1e-4)  # integer pixels ...
        assert ((u >= 0) & (u < 32) & (v >= 0) & (v < 24)).all()
        assert not ((u < 4) & (v < 4)).any()  # ... never where depth is invalid
        # Static fake scene: each kept point stays at its query position; occluded ones dropped.
        kept = xyz[xyz[:, 0] >= -0.2]
        assert track.shape == (10, len(kept), 3) and 0 < len(kept) < 40
        np.testing.assert_allclose(track, np.broadcast_to(kept, (10, *kept.shape)), atol=1e-6)


@pytest.mark.parametrize(("threshold", "keeps_occluded"), [(None, True), (0.0, True), (0.5, False), (0.9, False)])
def test_tapip3d_visibility_threshold_is_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, threshold: float | None, keeps_occluded: bool
) -> None:
    """A point occluded at one step (visibility 0.2) survives only a threshold below 0.2; the
    default (None here) is the script pipeline's configured 0.0, which keeps it."""
    loaded = tapip3d_api.install(monkeypatch, hide_below_x=-0.2)
    frames, meta, depth, _ = tracking_inputs()
    extra = {} if threshold is None else {"visibility_threshold": threshold}
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path, **extra))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, depth)
    for call, track in zip(loaded[0].calls, result.tracks, strict=True):
        assert call["vis_threshold"] == (0.0 if threshold is None else threshold)
        xyz = call["query_point"][:, 1:]
        occluded = int((xyz[:, 0] < -0.2).sum())
        assert 0 < occluded < len(xyz)
        assert track.shape[1] == len(xyz) - (0 if keeps_occluded else occluded)


def test_tapip3d_is_deterministic_and_honours_masks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tapip3d_api.install(monkeypatch)
    frames, meta, depth, _ = tracking_inputs()
    masks = np.zeros((12, 24, 32), bool)
    masks[:, :, :16] = True  # the object is the left half
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path))
    backend.load()
    ref = VideoRef(VID, tmp_path / "v.mp4", "h")
    first = backend.infer(ref, frames, meta, depth, masks=masks)
    second = backend.infer(ref, frames, meta, depth, masks=masks)
    for a, b in zip(first.tracks, second.tracks):
        np.testing.assert_array_equal(a, b)
    u = 40.0 * first.tracks[0][0, :, 0] / first.tracks[0][0, :, 2] + 16
    assert u.max() <= 16 - 1 - 2 + 1e-4  # inside the mask, 2 px from its border


@pytest.mark.parametrize(("points", "valid_depth", "expected_n"), [(1, True, 1), (5, False, 0)])
def test_tapip3d_single_point_and_empty_windows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, points: int, valid_depth: bool, expected_n: int
) -> None:
    loaded = tapip3d_api.install(monkeypatch)
    frames, meta, depth, _ = tracking_inputs(10)
    if not valid_depth:
        depth.depths[0] = 0.0
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path, points_per_window=points))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, depth)
    assert [t.shape for t in result.tracks] == [(10, expected_n, 3)]
    assert len(loaded[0].calls) == int(expected_n > 0)


@pytest.mark.parametrize(("valid", "tracked"), [(3, 0), (4, 4)])
@pytest.mark.parametrize("given_queries", [False, True], ids=["sampled", "given"])
def test_tapip3d_window_with_fewer_than_four_valid_depths_gets_no_tracks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog, valid: int, tracked: int, given_queries: bool
) -> None:
    """TAPIP3D's inference() fails on such a window (kthvalue, k = int(0.25 n) = 0); it is left
    empty, as a window without valid depth at its first frame is, with a warning; the other
    window is tracked."""
    loaded = tapip3d_api.install(monkeypatch)
    frames, meta, depth, _ = tracking_inputs(20)
    depth.depths[10:] = 0.0  # the second window, frames 10-19, has valid depth only here:
    depth.depths[10, 12, 10 : 10 + valid] = 2.0
    second = np.stack([np.arange(10, 10 + valid), np.full(valid, 12)], axis=1)
    queries = [np.array([[20, 15], [25, 8]]), second] if given_queries else None
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path, stride=10))
    backend.load()
    with caplog.at_level("WARNING", logger="trackset.adapters.tapip3d"):
        result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, depth, queries)
    assert result.windows == [(0, 10), (10, 20)]
    first = 2 if given_queries else 40
    assert [t.shape for t in result.tracks] == [(10, first, 3), (10, tracked, 3)]
    assert len(loaded[0].calls) == 1 + int(tracked > 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if tracked:
        assert warnings == []
    else:
        assert warnings == [
            f"tracks_3d: video {VID} ({tmp_path / 'v.mp4'}), window (10, 20): 3 valid depth value(s) in"
            f" depth_camera's vipe/{VID}.npz over the window; TAPIP3D needs at least 4, so the window's 3 query"
            " point(s) are dropped"
        ]


def test_tapip3d_result_round_trips_through_the_intermediate_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tapip3d_api.install(monkeypatch)
    frames, meta, depth, _ = tracking_inputs()
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, depth)
    poses = list(window_relative_poses(depth.extrinsics, np.array([s for s, _ in result.windows]), 10))
    path = tmp_path / "tracks_3d" / f"{VID}.pt"
    write_tracks_3d(path, VID, result, poses)
    raw = torch.load(path, weights_only=True)
    assert all(t.dtype == torch.float32 and t.shape[:2] == (1, 10) and t.shape[3] == 3 for t in raw["tracks"])
    assert raw["windows"] == [(0, 10), (1, 11), (2, 12)] and raw["intrinsics"].shape == (3, 3)
    back = read_tracks_3d(path, VID, 12)
    for a, b in zip(back.tracks, result.tracks):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_tapip3d_refuses_a_foreign_utils_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tapip3d_api.install(monkeypatch)
    del sys.modules["utils.inference_utils"].inference
    with pytest.raises(ModelUnavailableError, match="another 'utils' module comes first"):
        tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path)).load()


# ---------------------------------------------------------------- WiLoR

K_HAND = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
MIRROR = np.diag([-1.0, 1.0, 1.0])
LEFT_FRAMES = [0, 1, 2, 7, 8, 9]


def hand_script() -> dict[int, list[tuple[float, ...]]]:
    """Right hand every frame at (30 + f, 20); left at (10, 30) in LEFT_FRAMES; distractors."""
    script: dict[int, list[tuple[float, ...]]] = {f: [(25.0 + f, 15, 35.0 + f, 25, 0.9, 1)] for f in range(10)}
    for f in LEFT_FRAMES:
        script[f].append((5.0, 25, 15, 35, 0.95, 0))
    script[0].append((45.0, 35, 55, 45, 0.8, 0))  # a weaker second left hand: ignored
    script[4].append((0.0, 0, 10, 10, 0.5, 1))  # below the detector's threshold
    return script


def wilor_weights(tmp_path: Path) -> Path:
    return wilor_api.write_weights(tmp_path / "wilor")


def hand_depth() -> DepthCamera:
    depths = np.ones((10, 48, 64), np.float32)
    depths[5, 17:24, 32:39] = 2.5  # behind the right wrist at frame 5: a 15 m/s jump
    return DepthCamera(depths, np.tile(K_HAND, (10, 1, 1)), np.tile(np.eye(4), (10, 1, 1)))


def run_wilor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **hands: object):
    state = wilor_api.install(monkeypatch, hand_script())
    frames, meta = frames_and_meta(10, 48, 64)
    backend = wilor.WiLoRBackend(HandsSettings(**{"backend": "real", "weights_dir": wilor_weights(tmp_path), **hands}))
    backend.load()
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, hand_depth())
    backend.unload()
    return result, state, frames


def wrist_at(u: float, v: float, depth: float = 1.0 + 0.02) -> np.ndarray:
    return np.array([(u - 32) / 50 * depth, (v - 24) / 50 * depth, depth])


def test_wilor_right_hand_depth_jump_dropped_then_interpolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, state, frames = run_wilor(monkeypatch, tmp_path)
    right = result.right
    assert right.valid.all()
    for f in range(10):  # frame 5 is interpolated between 4 and 6, which is where it truly was
        np.testing.assert_allclose(right.wrist_pose[f, :3, 3], wrist_at(30 + f, 20), atol=1e-5)
        rz = Rotation.from_euler("z", 30 + f, degrees=True).as_matrix()
        np.testing.assert_allclose(right.wrist_pose[f, :3, :3], rz, atol=1e-5)
        fingers = Rotation.from_euler("y", 20, degrees=True).as_matrix()
        np.testing.assert_allclose(right.hand_pose[f], np.broadcast_to(fingers, (15, 3, 3)), atol=1e-5)
        offsets = np.stack([0.01 * np.arange(21), np.r_[0, np.full(20, 0.02)], np.zeros(21)], axis=1)
        if f == 5:  # offsets interpolated in the wrist frame, then carried by the interpolated wrist
            local = [Rotation.from_euler("z", a, degrees=True).as_matrix().T @ offsets.T for a in (34, 36)]
            offsets = (rz @ (0.5 * (local[0] + local[1]))).T
        np.testing.assert_allclose(right.joints_3d[f], offsets + wrist_at(30 + f, 20), atol=1e-5)
    # Betas: median over frames with a real, kept detection (frame 5 was dropped).
    np.testing.assert_allclose(right.betas, np.full(10, 0.34), atol=1e-6)
    # The detector and WiLoR saw BGR images, as cv2-based WiLoR expects.
    np.testing.assert_array_equal(state["seen"][3], frames[3][:, :, ::-1])


def test_wilor_left_hand_unmirrored_and_gap_filled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, _, _ = run_wilor(monkeypatch, tmp_path)
    left = result.left
    assert left.valid.all()  # frames 3-6 undetected: a 4-frame gap, filled
    np.testing.assert_allclose(left.wrist_pose[:, :3, 3], np.broadcast_to(wrist_at(10, 30), (10, 3)), atol=1e-5)
    # WiLoR predicts a mirrored right hand: Rz(+10) in the crop is Rz(-10) in the image.
    rz = Rotation.from_euler("z", -10, degrees=True).as_matrix()
    np.testing.assert_allclose(left.wrist_pose[:, :3, :3], np.broadcast_to(rz, (10, 3, 3)), atol=1e-5)
    np.testing.assert_allclose(left.hand_pose[0, 0], Rotation.from_euler("y", -30, degrees=True).as_matrix(), atol=1e-5)
    np.testing.assert_allclose(left.joints_3d[0, 3], wrist_at(10, 30) + [-0.03, 0.02, 0.0], atol=1e-5)
    np.testing.assert_allclose(left.betas, np.full(10, 0.10), atol=1e-6)


def test_wilor_gap_limit_leaves_nan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, _, _ = run_wilor(monkeypatch, tmp_path, max_gap_frames=2)
    left = result.left
    assert left.valid.tolist() == [f in LEFT_FRAMES for f in range(10)]
    for array in (left.wrist_pose, left.hand_pose, left.joints_3d):
        assert np.isnan(array[3:7]).all() and np.isfinite(array[LEFT_FRAMES]).all()
    assert result.right.valid.all()  # its single-frame gap is within 2


def test_wilor_result_round_trips_through_the_intermediate_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, _, _ = run_wilor(monkeypatch, tmp_path, max_gap_frames=2)
    path = tmp_path / "hand_poses" / f"{VID}.pt"
    write_hand_poses(path, result)
    raw = torch.load(path, weights_only=True)
    shapes = {
        "valid": (10,),
        "wrist_pose": (10, 4, 4),
        "hand_pose": (10, 15, 3, 3),
        "joints_3d": (10, 21, 3),
        "betas": (10,),
    }
    for side in HAND_SIDES:
        for key, shape in shapes.items():
            tensor = raw[f"{side}_{key}"]
            assert tuple(tensor.shape) == shape
            assert tensor.dtype == (torch.bool if key == "valid" else torch.float32)
    assert tuple(raw["intrinsics"].shape) == (3, 3) and raw["num_frames"] == 10
    back = read_hand_poses(path, VID, 10)
    np.testing.assert_array_equal(back.left.valid, result.left.valid)
    np.testing.assert_allclose(back.right.wrist_pose, result.right.wrist_pose, atol=1e-6)


def test_wilor_video_without_hands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wilor_api.install(monkeypatch, {})
    frames, meta = frames_and_meta(4, 48, 64)
    backend = wilor.WiLoRBackend(HandsSettings(backend="real", weights_dir=wilor_weights(tmp_path)))
    backend.load()
    depth = DepthCamera(np.ones((4, 48, 64), np.float32), np.tile(K_HAND, (4, 1, 1)), np.tile(np.eye(4), (4, 1, 1)))
    result = backend.infer(VideoRef(VID, tmp_path / "v.mp4", "h"), frames, meta, depth)
    for side in HAND_SIDES:
        hand = result.side(side)
        assert not hand.valid.any() and np.isnan(hand.wrist_pose).all() and np.isnan(hand.betas).all()


def test_wilor_loads_its_config_and_checkpoint_from_weights_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = wilor_api.install(monkeypatch, {})
    root = wilor_weights(tmp_path)
    backend = wilor.WiLoRBackend(HandsSettings(backend="real", weights_dir=root))
    backend.load()
    model = state["models"][0]
    assert sorted(model.state_dict) == sorted(wilor_api.STATE_DICT_KEYS)  # the checkpoint's weights
    assert not model.init_renderer  # no EGL context for a renderer trackset never uses
    assert state["detectors"][0].path == str(root / "pretrained_models" / "detector.pt")
    cfg = model.cfg
    assert cfg.frozen
    assert cfg.MANO.MEAN_PARAMS == str(root / "mano_data" / "mano_mean_params.npz")
    assert cfg.MODEL.BBOX_SHAPE == [192, 256] and "PRETRAINED_WEIGHTS" not in cfg.MODEL.BACKBONE


def test_wilor_loads_mano_without_chumpy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The licensed MANO_RIGHT.pkl holds chumpy arrays and chumpy does not import on Python 3.11:
    smplx's plain pickle.load of the file as downloaded fails. WiLoR gets the same fields as
    numpy arrays, from a folder of the backend's that goes with it."""
    state = wilor_api.install(monkeypatch, {})
    root = wilor_weights(tmp_path)
    with pytest.raises(ImportError, match="chumpy"):
        wilor_api.load_mano_as_smplx(str(root / "mano_data"))
    backend = wilor.WiLoRBackend(HandsSettings(backend="real", weights_dir=root))
    backend.load()
    cfg, mano = state["models"][0].cfg, state["models"][0].mano.data
    expected = wilor_api.mano_fields()
    assert isinstance(mano["shapedirs"], np.ndarray)
    np.testing.assert_array_equal(mano["shapedirs"], expected["shapedirs"].x)
    np.testing.assert_array_equal(mano["J_regressor"].toarray(), expected["J_regressor"].toarray())
    assert Path(cfg.MANO.MODEL_PATH) != root / "mano_data" and cfg.MANO.DATA_DIR == cfg.MANO.MODEL_PATH
    backend.unload()
    assert not Path(cfg.MANO.MODEL_PATH).exists()


def test_wilor_trusts_only_the_configured_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """torch >= 2.6 loads ``weights_only`` by default: the checkpoint (a config object in its
    hyper-parameters) and the detector (a pickled module) load because they are the configured
    files; torch.load is itself again afterwards, and another file stays under torch's rules."""
    state = wilor_api.install(monkeypatch, {})
    root = wilor_weights(tmp_path)
    for name in ("wilor_final.ckpt", "detector.pt"):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            torch.load(root / "pretrained_models" / name)
    original = torch.load
    wilor.WiLoRBackend(HandsSettings(backend="real", weights_dir=root)).load()
    assert torch.load is original
    assert isinstance(state["detectors"][0].checkpoint["model"], wilor_api.DetectionModel)
    other = tmp_path / "other.pt"
    torch.save({"model": wilor_api.DetectionModel()}, other)
    with wilor.trusting_torch_load(root / "pretrained_models" / "detector.pt"):
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            torch.load(other)
        torch.load(str(root / "pretrained_models" / "detector.pt"), map_location="cpu")


def test_mano_reader_refuses_anything_but_arrays(tmp_path: Path) -> None:
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"f": np.zeros(3), "evil": os.system}, protocol=2))
    with pytest.raises(mano.ManoFileError, match=r"MANO_RIGHT\.pkl: refusing (posix|nt)\.system"):
        mano.read_mano(path)
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(mano.ManoFileError, match="a dict of fields"):
        mano.read_mano(path)


# ---------------------------------------------------------------- missing packages and weights


def _checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tapip3d_final.pth"
    path.write_bytes(b"x")
    return path


def _placed(overrides: dict, tmp_path: Path) -> dict:
    """``overrides`` with ``<ckpt>``, ``<wilor>`` and ``<wilor-no-detector>`` replaced by files made here."""

    def place(value: object) -> object:
        if value == "<ckpt>":
            return _checkpoint(tmp_path)
        if value in ("<wilor>", "<wilor-no-detector>"):
            weights = wilor_weights(tmp_path)
            if value == "<wilor-no-detector>":
                (weights / "pretrained_models" / "detector.pt").unlink()
            return weights
        return value

    return {stage: {key: place(value) for key, value in section.items()} for stage, section in overrides.items()}


@pytest.mark.parametrize(
    ("module", "missing", "overrides", "expected"),
    [
        (
            vipe,
            ["vipe"],
            {"depth_camera": {"backend": "real"}},
            "backend 'real' for depth_camera needs the 'vipe' package (pip install --no-build-isolation nvidia-vipe,"
            " see docs/real-models.md); set depth_camera.backend: synthetic to run without it",
        ),
        (
            vipe,
            [],
            {"depth_camera": {"backend": "real", "weights_dir": "/nonexistent/vipe"}},
            "depth_camera.weights_dir = /nonexistent/vipe, which is not a directory",
        ),
        (
            tapip3d,
            ["models"],
            {"tracks_3d": {"backend": "real", "weights_path": "<ckpt>"}},
            "needs the 'models' package (a checkout of github.com/zbw001/TAPIP3D on PYTHONPATH",
        ),
        (tapip3d, [], {"tracks_3d": {"backend": "real"}}, "set tracks_3d.weights_path"),
        (
            tapip3d,
            [],
            {"tracks_3d": {"backend": "real", "weights_path": "/nonexistent/tapip3d_final.pth"}},
            "tracks_3d.weights_path = /nonexistent/tapip3d_final.pth, which is not a file",
        ),
        (wilor, ["wilor"], {"hands": {"backend": "real", "weights_dir": "<wilor>"}}, "needs the 'wilor' package"),
        (
            wilor,
            ["ultralytics"],
            {"hands": {"backend": "real", "weights_dir": "<wilor>"}},
            "needs the 'ultralytics' package",
        ),
        (wilor, [], {"hands": {"backend": "real"}}, "set hands.weights_dir"),
        (
            wilor,
            [],
            {"hands": {"backend": "real", "weights_dir": "/nonexistent/wilor"}},
            "WiLoR's weights at hands.weights_dir = /nonexistent/wilor, which is not a directory",
        ),
        (
            wilor,
            [],
            {"hands": {"backend": "real", "weights_dir": "<wilor-no-detector>"}},
            "detector.pt under hands.weights_dir = ",
        ),
    ],
    ids=[
        "vipe-package",
        "vipe-weights",
        "tapip3d-code",
        "tapip3d-unset",
        "tapip3d-file",
        "wilor-package",
        "ultralytics-package",
        "wilor-unset",
        "wilor-dir",
        "wilor-file",
    ],
)
def test_one_missing_model_part_fails_early_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module, missing: list[str], overrides: dict, expected: str
) -> None:
    vipe_api.install(monkeypatch, vipe_scene())
    tapip3d_api.install(monkeypatch)
    wilor_api.install(monkeypatch, {})
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" fail, installed or not
    stage = next(iter(overrides))
    section = getattr(Settings(**_placed(overrides, tmp_path)), stage)
    assert len(module.missing(section)) == 1
    with pytest.raises(ModelUnavailableError) as caught:
        module.check_available(section)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert message.startswith(f"backend 'real' for {stage} needs ")
    assert message.endswith(f"set {stage}.backend: synthetic to run without it")
    backend = {vipe: vipe.ViPEBackend, tapip3d: tapip3d.TAPIP3DBackend, wilor: wilor.WiLoRBackend}[module](section)
    with pytest.raises(ModelUnavailableError, match="synthetic to run without it"):
        backend.load()  # the same check guards load()


DOCS_REF = "see docs/real-models.md"


def test_every_missing_part_is_named_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not one per attempt: every package, weight file and setting of every stage, in one error."""
    tapip3d_api.install(monkeypatch)
    wilor_api.install(monkeypatch, {})
    for name in ("vipe", "models", "wilor", "ultralytics"):
        monkeypatch.setitem(sys.modules, name, None)
    weights = wilor_weights(tmp_path)
    (weights / "pretrained_models" / "detector.pt").unlink()
    (weights / "mano_data" / "MANO_RIGHT.pkl").unlink()
    settings = Settings(
        depth_camera={"backend": "real", "weights_dir": tmp_path / "no-cache"},
        tracks_3d={"backend": "real"},
        hands={"backend": "real", "weights_dir": weights},
    )
    vipe_lines = [
        f"the 'vipe' package (pip install --no-build-isolation nvidia-vipe, {DOCS_REF})",
        f"its weights cache at depth_camera.weights_dir = {tmp_path / 'no-cache'}, which is not a directory"
        f" ({DOCS_REF})",
    ]
    tapip3d_lines = [
        f"the 'models' package (a checkout of github.com/zbw001/TAPIP3D on PYTHONPATH, {DOCS_REF})",
        f"the TAPIP3D checkpoint tapip3d_final.pth: set tracks_3d.weights_path ({DOCS_REF})",
    ]
    wilor_lines = [
        "the 'wilor' and 'ultralytics' packages (a checkout of github.com/rolpotamias/WiLoR on PYTHONPATH with its"
        f" requirements.txt installed, {DOCS_REF})",
        f"detector.pt under hands.weights_dir = {weights}: {weights / 'pretrained_models' / 'detector.pt'} is missing"
        f" ({DOCS_REF})",
        f"MANO_RIGHT.pkl under hands.weights_dir = {weights}: {weights / 'mano_data' / 'MANO_RIGHT.pkl'} is missing"
        f" ({DOCS_REF})",
    ]
    assert vipe.missing(settings.depth_camera) == vipe_lines
    assert tapip3d.missing(settings.tracks_3d) == tapip3d_lines
    assert wilor.missing(settings.hands) == wilor_lines

    with pytest.raises(ModelUnavailableError) as caught:
        tapip3d.check_available(settings.tracks_3d)
    assert str(caught.value).splitlines() == [
        "backend 'real' for tracks_3d needs 2 things; set tracks_3d.backend: synthetic to run without it:",
        *(f"  - tracks_3d: {line}" for line in tapip3d_lines),
    ]
    with pytest.raises(ModelUnavailableError) as caught:
        check_real_backends(settings)  # a run's start: one error, every stage
    assert str(caught.value).splitlines() == [
        "backend 'real' for depth_camera, tracks_3d and hands needs 7 things; set depth_camera.backend,"
        " tracks_3d.backend and hands.backend: synthetic to run without them:",
        *(f"  - depth_camera: {line}" for line in vipe_lines),
        *(f"  - tracks_3d: {line}" for line in tapip3d_lines),
        *(f"  - hands: {line}" for line in wilor_lines),
    ]


def test_a_run_start_with_one_missing_part_says_it_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vipe", None)
    with pytest.raises(ModelUnavailableError) as caught:
        check_real_backends(Settings(depth_camera={"backend": "real"}))
    assert str(caught.value) == (
        f"backend 'real' for depth_camera needs the 'vipe' package (pip install --no-build-isolation nvidia-vipe,"
        f" {DOCS_REF}); set depth_camera.backend: synthetic to run without it"
    )


def test_everything_available_passes_the_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    vipe_api.install(monkeypatch, vipe_scene())
    tapip3d_api.install(monkeypatch)
    wilor_api.install(monkeypatch, {})
    settings = Settings(
        tracks_3d={"backend": "real", "weights_path": _checkpoint(tmp_path)},
        hands={"backend": "real", "weights_dir": wilor_weights(tmp_path)},
    )
    for module, stage in ((vipe, "depth_camera"), (tapip3d, "tracks_3d"), (wilor, "hands")):
        module.check_available(getattr(settings, stage))
