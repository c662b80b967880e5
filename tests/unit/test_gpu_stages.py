"""GPU stages with the synthetic backends: the FORMATS.md files they write, read back.

Frames are written directly from the scene's renders (preprocessing is tested elsewhere).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.unit.test_scene import expected_extrinsics, still
from trackset.config.settings import Settings
from trackset.domain import VideoRef
from trackset.errors import BadInputError, ModelUnavailableError, UnusableVideoError
from trackset.formats.intermediates import (
    DepthCamera,
    FramesMeta,
    load_pt,
    read_depth_camera,
    read_hand_poses,
    read_tracks_3d,
    write_frames,
)
from trackset.formats.layout import WorkLayout
from trackset.stages.depth_camera import DepthCameraStage, flat_frame_fraction
from trackset.stages.hands import HandsStage
from trackset.stages.registry import stage_config, stage_spec
from trackset.stages.tracks_3d import Tracks3dStage
from trackset.synthetic.corpus import write_scene_sidecar
from trackset.synthetic.scene import Plane, SceneSpec

FRAMES, LENGTH, POINTS = 13, 10, 48
TRACK_KEYS = {
    "tracks",
    "windows",
    "window_poses",
    "intrinsics",
    "video_name",
    "window_length",
    "stride",
    "grid_size",
    "num_frames",
    "resolution",
}
HAND_KEYS = {"intrinsics", "num_frames"} | {
    f"{side}_{key}" for side in ("left", "right") for key in ("valid", "wrist_pose", "hand_pose", "joints_3d", "betas")
}


def make_settings(root, **overrides: dict) -> Settings:
    """Settings writing under ``root``, short windows; ``overrides`` are merged per section."""
    sections = {
        "paths": {"work_dir": root / "work", "dataset_dir": root / "dataset", "videos_dir": root / "videos"},
        "tracks_3d": {"window_length": LENGTH, "points_per_window": POINTS},
        # Queries from the whole frame; the masked ones are tests/unit/test_mask_stages.py's.
        "object_masks": {"enabled": False},
    }
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    return Settings(**sections)


def build(stage_class, settings: Settings, **kwargs):
    """A stage of ``stage_class`` built from its part of ``settings``, as the flows build it."""
    return stage_class(stage_config(stage_class.name, settings), **kwargs)


def add_video(settings: Settings, spec: SceneSpec, video_id: str) -> VideoRef:
    """A sidecar beside a video path, and frames rendered from the scene as preprocessing would write them."""
    source = settings.paths.videos_dir / f"clip_{video_id}.mp4"
    source.parent.mkdir(parents=True, exist_ok=True)
    write_scene_sidecar(source, spec)
    times = spec.frame_times()
    frames = np.stack([spec.render(float(t))[0] for t in times])
    meta = FramesMeta(
        video_id, len(times), spec.fps, spec.width, spec.height, str(source), spec.width, spec.height, times.tolist()
    )
    write_frames(WorkLayout(settings.paths.work_dir), meta, frames)
    return VideoRef(video_id, source, f"hash-{video_id}")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """One video through depth, tracks and hands, as a worker would run them."""
    root = tmp_path_factory.mktemp("stages")
    settings = make_settings(root)
    spec = SceneSpec.from_seed(33, num_frames=FRAMES)
    video = add_video(settings, spec, "00007")
    infos = {}
    for stage_class in (DepthCameraStage, Tracks3dStage, HandsStage):
        stage = build(stage_class, settings)
        stage.setup()
        infos[stage.name] = stage.run(video)
        stage.teardown()
    return settings, spec, video, infos


def test_stage_names_resources_and_outputs(tmp_path):
    settings = make_settings(tmp_path)
    work = WorkLayout(settings.paths.work_dir)
    for stage_class, name, path in (
        (DepthCameraStage, "depth_camera", work.vipe("00001")),
        (Tracks3dStage, "tracks_3d", work.tracks_3d("00001")),
        (HandsStage, "hands", work.hand_poses("00001")),
    ):
        stage = build(stage_class, settings)
        resources = stage_spec(name).resources
        assert stage.name == name and resources.uses_gpu and resources.cpus == 1
        assert stage.outputs("00001") == [path]


def test_depth_file_has_exactly_the_contract(processed):
    settings, spec, video, infos = processed
    path = WorkLayout(settings.paths.work_dir).vipe(video.video_id)
    with np.load(path) as raw:
        assert {key: (raw[key].dtype, raw[key].shape) for key in raw.files} == {
            "depths": (np.float16, (FRAMES, 384, 512)),
            "intrinsics": (np.float32, (FRAMES, 3, 3)),
            "extrinsics": (np.float32, (FRAMES, 4, 4)),
        }
    depth = read_depth_camera(path, video.video_id, FRAMES)
    np.testing.assert_allclose(depth.extrinsics, expected_extrinsics(spec, spec.frame_times()), atol=1e-6)
    np.testing.assert_allclose(depth.depths[0], spec.render_depth(0.0)[0], rtol=1e-3)  # float16 storage
    assert infos["depth_camera"].info == {"frames": FRAMES, "flat_fraction": 0.0}


def test_tracks_file_has_exactly_the_contract(processed):
    settings, spec, video, infos = processed
    path = WorkLayout(settings.paths.work_dir).tracks_3d(video.video_id)
    data = load_pt(path, video.video_id, "tracks_3d")
    assert set(data) == TRACK_KEYS
    windows = FRAMES - LENGTH + 1
    assert data["windows"] == [(s, s + LENGTH) for s in range(windows)]
    assert [(t.shape, t.dtype) for t in data["tracks"]] == [((1, LENGTH, POINTS, 3), torch.float32)] * windows
    assert (data["video_name"], data["window_length"], data["stride"]) == ("00007", LENGTH, 1)
    assert data["num_frames"] == FRAMES
    assert tuple(data["resolution"]) == (384, 512)
    assert data["intrinsics"].shape == (3, 3) and data["intrinsics"].dtype == torch.float32
    tracks = read_tracks_3d(path, video.video_id, FRAMES)
    assert len(tracks.tracks) == windows
    assert infos["tracks_3d"].info == {"frames": FRAMES, "windows": windows, "points": windows * POINTS}


def test_window_poses_are_camera_k_in_camera_0(processed):
    """E_s inv(E_{s+k}), computed here from the scene's camera parameters."""
    settings, spec, video, _ = processed
    data = load_pt(WorkLayout(settings.paths.work_dir).tracks_3d(video.video_id), video.video_id, "tracks_3d")
    extrinsics = expected_extrinsics(spec, spec.frame_times())
    assert len(data["window_poses"]) == len(data["windows"])
    for (start, end), poses in zip(data["windows"], data["window_poses"]):
        assert poses.shape == (LENGTH, 4, 4) and poses.dtype == torch.float32
        np.testing.assert_allclose(poses[0].numpy(), np.eye(4), atol=1e-6)
        expected = np.stack([extrinsics[start] @ np.linalg.inv(extrinsics[k]) for k in range(start, end)])
        np.testing.assert_allclose(poses.numpy(), expected, atol=2e-6)


def test_hands_file_has_exactly_the_contract(processed):
    settings, spec, video, infos = processed
    path = WorkLayout(settings.paths.work_dir).hand_poses(video.video_id)
    data = load_pt(path, video.video_id, "hands")
    assert set(data) == HAND_KEYS
    shapes = {
        "valid": (FRAMES,),
        "wrist_pose": (FRAMES, 4, 4),
        "hand_pose": (FRAMES, 15, 3, 3),
        "joints_3d": (FRAMES, 21, 3),
        "betas": (10,),
    }
    for side in ("left", "right"):
        for key, shape in shapes.items():
            value = data[f"{side}_{key}"]
            assert tuple(value.shape) == shape
            assert value.dtype == (torch.bool if key == "valid" else torch.float32)
    assert data["num_frames"] == FRAMES and tuple(data["intrinsics"].shape) == (3, 3)
    hands = read_hand_poses(path, video.video_id, FRAMES)
    assert infos["hands"].info == {
        "frames": FRAMES,
        "left_valid_frames": int(hands.left.valid.sum()),
        "right_valid_frames": int(hands.right.valid.sum()),
    }


def test_a_second_run_skips_current_outputs(processed):
    settings, _, video, _ = processed
    assert build(Tracks3dStage, settings).run(video).status == "skipped"


def test_flat_wall_video_is_rejected_as_unusable(tmp_path):
    settings = make_settings(tmp_path)
    base = SceneSpec.from_seed(3, num_frames=6)
    wall = Plane((0.0, 0.0, 2.0), (0.0, 0.0, -1.0), base.planes[0].texture)
    video = add_video(settings, replace(base, camera=still(), planes=(wall,), objects=(), hands=()), "00003")
    stage = build(DepthCameraStage, settings)
    expected = r"video 00003, stage depth_camera \(.*clip_00003\.mp4\): 100\.0% of frames are flat"
    with pytest.raises(UnusableVideoError, match=expected) as caught:
        stage.process(video)
    assert caught.value.video_id == "00003" and caught.value.stage == "depth_camera"
    assert not stage.outputs("00003")[0].exists()


def test_empty_depth_is_rejected_for_any_backend(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    video = add_video(settings, SceneSpec.from_seed(1, num_frames=4), "00001")
    stage = build(DepthCameraStage, settings)
    stage.setup()

    def empty(video, frames, meta):
        t, h, w = frames.shape[:3]
        cameras = np.tile(np.eye(3), (t, 1, 1)), np.tile(np.eye(4), (t, 1, 1))
        return DepthCamera(np.full((t, h, w), np.nan, np.float32), *cameras)

    monkeypatch.setattr(stage.backend, "infer", empty)
    with pytest.raises(UnusableVideoError, match="no valid depth"):
        stage.process(video)


def test_wrongly_shaped_backend_output_fails_the_video(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    video = add_video(settings, SceneSpec.from_seed(1, num_frames=4), "00001")
    stage = build(DepthCameraStage, settings)
    stage.setup()
    monkeypatch.setattr(
        stage.backend,
        "infer",
        lambda video, frames, meta: DepthCamera(
            np.ones((4, 10, 10), np.float32), np.tile(np.eye(3), (4, 1, 1)), np.tile(np.eye(4), (4, 1, 1))
        ),
    )
    with pytest.raises(BadInputError, match=r"'depths' of shape \(4, 10, 10\), expected \(4, 384, 512\)"):
        stage.process(video)


def test_flat_fraction_counts_frames_without_valid_depth_as_flat():
    depths = np.stack([np.zeros((4, 4)), np.ones((4, 4)), np.tile([1.0, 2.0], (4, 2))]).astype(np.float32)
    assert flat_frame_fraction(depths, 0.1) == pytest.approx(2 / 3)


@pytest.mark.parametrize("stage_class", [DepthCameraStage, Tracks3dStage, HandsStage])
def test_real_backend_without_its_model_is_unavailable(tmp_path, stage_class):
    settings = make_settings(tmp_path, **{stage_class.name: {"backend": "real"}})
    stage = build(stage_class, settings)
    with pytest.raises((ModelUnavailableError, ModuleNotFoundError)):
        stage.setup()
    assert stage.backend is None


def test_setup_loads_once_and_teardown_releases(tmp_path):
    class Recorder:
        def __init__(self):
            self.held = 0

        def allocate(self, nbytes):
            self.held += nbytes

        def release(self, nbytes):
            self.held -= nbytes

        def gpu_phase(self):
            raise AssertionError("no GPU time configured")

    settings = make_settings(tmp_path, synthetic={"depth_camera": {"model_mb": 4}})
    allocator = Recorder()
    stage = build(DepthCameraStage, settings, allocator=allocator)
    stage.setup()
    stage.setup()
    assert allocator.held == 4 * 2**20
    stage.teardown()
    assert allocator.held == 0 and stage.backend is None


def test_a_video_shorter_than_a_window_has_no_tracks(tmp_path):
    settings = make_settings(tmp_path)
    video = add_video(settings, SceneSpec.from_seed(2, num_frames=LENGTH - 1), "00002")
    build(DepthCameraStage, settings).run(video)
    info = build(Tracks3dStage, settings).run(video).info
    assert info == {"frames": LENGTH - 1, "windows": 0, "points": 0}
    tracks = read_tracks_3d(WorkLayout(settings.paths.work_dir).tracks_3d("00002"), "00002", LENGTH - 1)
    assert tracks.windows == [] and tracks.tracks == []
