"""Synthetic backends against the scene's ground truth, and their simulated cost.

Expected values come from the spec's parameters (``expected_pose`` in test_scene), not from
the backends' helpers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

from tests.unit.test_scene import expected_extrinsics, expected_pose
from trackset.config.settings import Settings, SyntheticStageCost
from trackset.domain import VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import FramesMeta
from trackset.gpu.allocator import TorchAllocator
from trackset.synthetic.backends import SyntheticDepthCamera, SyntheticHands, SyntheticTracks3d
from trackset.synthetic.corpus import write_scene_sidecar
from trackset.synthetic.cost import SimulatedCost
from trackset.synthetic.scene import STATIC_ID, SceneSpec

FRAMES, LENGTH, STRIDE, POINTS = 12, 6, 3, 96


class RecordingAllocator:
    """Records every call, so tests see exactly what a backend charges."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.held = 0

    def allocate(self, nbytes: int) -> None:
        self.calls.append(("allocate", nbytes))
        self.held += nbytes

    def release(self, nbytes: int) -> None:
        self.calls.append(("release", nbytes))
        self.held -= nbytes

    @contextmanager
    def gpu_phase(self):
        self.calls.append(("gpu_phase", 0))
        yield


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A scene, its sidecar beside a (never decoded) video path, rendered frames and meta."""
    folder = tmp_path_factory.mktemp("clip")
    spec = SceneSpec.from_seed(21, num_frames=FRAMES)
    source = folder / "clip_021.mp4"
    write_scene_sidecar(source, spec)
    times = spec.frame_times()
    frames = np.stack([spec.render(float(t))[0] for t in times])
    meta = FramesMeta("00021", FRAMES, 10.0, 512, 384, str(source), 512, 384, times.tolist())
    return spec, VideoRef("00021", source, "hash"), frames, meta


def settings(**synthetic) -> Settings:
    return Settings(
        tracks_3d={"window_length": LENGTH, "stride": STRIDE, "points_per_window": POINTS}, synthetic=synthetic
    )


def make(backend_class, allocator=None, **synthetic):
    """A synthetic backend given its stage's section and synthetic settings, as its stage does."""
    chosen = settings(**synthetic)
    stage = backend_class.stage
    return backend_class(getattr(chosen, stage), chosen.synthetic.for_stage(stage), allocator=allocator)


def test_depth_camera_is_the_scene_truth(clip):
    spec, video, frames, meta = clip
    result = make(SyntheticDepthCamera).infer(video, frames, meta)
    assert result.depths.shape == (FRAMES, 384, 512) and result.depths.dtype == np.float32
    np.testing.assert_allclose(result.depths[5], spec.render_depth(0.5)[0])
    np.testing.assert_allclose(result.intrinsics, np.tile(spec.intrinsics(), (FRAMES, 1, 1)))
    np.testing.assert_allclose(result.extrinsics, expected_extrinsics(spec, spec.frame_times()), atol=1e-12)


def test_depth_uses_the_frames_timestamps(clip):
    """Resampled frames carry their source times: the depth is the scene at those times."""
    spec, video, frames, meta = clip
    shifted = replace(meta, num_frames=2, timestamps_s=[0.05, 0.95])
    result = make(SyntheticDepthCamera).infer(video, frames[:2], shifted)
    np.testing.assert_allclose(result.depths[1], spec.render_depth(0.95)[0])
    np.testing.assert_allclose(result.extrinsics, expected_extrinsics(spec, np.array([0.05, 0.95])), atol=1e-12)


def test_depth_of_resized_frames_uses_scaled_intrinsics(clip):
    spec, video, _, meta = clip
    small = np.zeros((3, 192, 256, 3), np.uint8)
    three = replace(meta, num_frames=3, timestamps_s=[0.0, 0.1, 0.2])
    result = make(SyntheticDepthCamera).infer(video, small, three)
    assert result.depths.shape == (3, 192, 256)
    np.testing.assert_allclose(result.intrinsics[0, 0, 0], spec.fx / 2)


def test_depth_noise_is_seeded_by_video_and_keeps_misses(clip):
    _, video, frames, meta = clip
    backend = make(SyntheticDepthCamera, noise_std=0.01)
    exact = make(SyntheticDepthCamera).infer(video, frames[:2], replace(meta, num_frames=2)).depths
    noisy = backend.infer(video, frames[:2], replace(meta, num_frames=2)).depths
    again = backend.infer(video, frames[:2], replace(meta, num_frames=2)).depths
    other = backend.infer(replace(video, video_id="00022"), frames[:2], replace(meta, num_frames=2)).depths
    assert noisy.tobytes() == again.tobytes() != other.tobytes()
    assert 0.008 < np.std(noisy - exact) < 0.012


@pytest.fixture(scope="module")
def tracks(clip):
    spec, video, frames, meta = clip
    return make(SyntheticTracks3d).infer(video, frames, meta, depth=None)


def test_tracks_cover_every_full_window(tracks):
    starts = list(range(0, FRAMES - LENGTH + 1, STRIDE))
    assert tracks.windows == [(s, s + LENGTH) for s in starts]
    assert [t.shape for t in tracks.tracks] == [(LENGTH, POINTS, 3)] * len(starts)
    assert all(t.dtype == np.float32 for t in tracks.tracks)
    assert (tracks.num_frames, tracks.window_length, tracks.stride) == (FRAMES, LENGTH, STRIDE)
    assert tracks.resolution == (384, 512)


def test_tracks_start_on_the_rendered_pixel_they_were_sampled_at(clip, tracks):
    spec, *_ = clip
    k = spec.intrinsics()
    for (start, _), points in zip(tracks.windows, tracks.tracks):
        depth, _ = spec.render_depth(start / 10.0)
        first = points[0].astype(np.float64)
        u = k[0, 0] * first[:, 0] / first[:, 2] + k[0, 2]
        v = k[1, 1] * first[:, 1] / first[:, 2] + k[1, 2]
        assert np.abs(u - np.rint(u)).max() < 0.5 and np.abs(v - np.rint(v)).max() < 0.5
        np.testing.assert_allclose(u, np.rint(u), atol=1e-3)
        np.testing.assert_allclose(v, np.rint(v), atol=1e-3)
        np.testing.assert_allclose(depth[np.rint(v).astype(int), np.rint(u).astype(int)], first[:, 2], rtol=1e-5)


def test_static_points_do_not_move_and_moving_points_follow_their_body(clip, tracks):
    spec, *_ = clip
    times = spec.frame_times()
    extrinsics = expected_extrinsics(spec, times)
    cameras = np.linalg.inv(extrinsics)
    k = spec.intrinsics()
    static_count = moving_count = 0
    for (start, end), points in zip(tracks.windows, tracks.tracks):
        _, ids = spec.render_depth(float(times[start]))
        first = points[0].astype(np.float64)
        u = np.rint(k[0, 0] * first[:, 0] / first[:, 2] + k[0, 2]).astype(int)
        v = np.rint(k[1, 1] * first[:, 1] / first[:, 2] + k[1, 2]).astype(int)
        body = ids[v, u]
        static = body == STATIC_ID
        np.testing.assert_array_equal(points[:, static], np.broadcast_to(points[:1, static], points[:, static].shape))
        static_count += int(static.sum())
        for index, box in enumerate(spec.objects):
            on_box = body == index + 1
            if not on_box.any():
                continue
            motion = expected_pose(box.motion, times[start:end])
            world0 = first[on_box] @ cameras[start, :3, :3].T + cameras[start, :3, 3]
            local = (world0 - motion[0, :3, 3]) @ motion[0, :3, :3]  # R^T (x - t)
            world = np.einsum("kij,nj->kni", motion[:, :3, :3], local) + motion[:, None, :3, 3]
            expected = world @ extrinsics[start, :3, :3].T + extrinsics[start, :3, 3]
            np.testing.assert_allclose(points[:, on_box], expected, atol=1e-5)
            moving_count += int(on_box.sum())
    assert static_count > 0 and moving_count > 0
    # Query points favour moving bodies (boxes and hands) over the background.
    assert moving_count > 0.2 * sum(p.shape[1] for p in tracks.tracks)


def test_tracks_are_deterministic_and_noise_is_seeded(clip, tracks):
    spec, video, frames, meta = clip
    again = make(SyntheticTracks3d).infer(video, frames, meta, depth=None)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again.tracks, tracks.tracks))
    noisy = make(SyntheticTracks3d, noise_std=0.005).infer(video, frames, meta, depth=None)
    error = np.concatenate([(n - t).ravel() for n, t in zip(noisy.tracks, tracks.tracks)])
    assert 0.004 < error.std() < 0.006


def test_hands_are_the_wrist_in_each_frames_camera(clip):
    spec, video, frames, meta = clip
    result = make(SyntheticHands).infer(video, frames, meta, depth=None)
    times = spec.frame_times()
    extrinsics = expected_extrinsics(spec, times)
    np.testing.assert_allclose(result.intrinsics, spec.intrinsics())
    assert result.num_frames == FRAMES
    for side in ("left", "right"):
        hand = result.side(side)
        wrist = extrinsics @ expected_pose(spec.hand(side).motion, times)
        u = spec.fx * wrist[:, 0, 3] / wrist[:, 2, 3] + spec.cx
        v = spec.fy * wrist[:, 1, 3] / wrist[:, 2, 3] + spec.cy
        valid = (wrist[:, 2, 3] > 0) & (u >= 0) & (u <= 511) & (v >= 0) & (v <= 383)
        np.testing.assert_array_equal(hand.valid, valid)
        assert valid.any() and not valid.all()
        np.testing.assert_allclose(hand.wrist_pose[valid], wrist[valid], atol=1e-12)
        assert np.isnan(hand.wrist_pose[~valid]).all() and np.isnan(hand.joints_3d[~valid]).all()
        assert np.isnan(hand.hand_pose[~valid]).all()
        np.testing.assert_allclose(hand.joints_3d[valid][:, 0], wrist[valid][:, :3, 3], atol=1e-12)
        rotations = hand.hand_pose[valid]
        identity = np.broadcast_to(np.eye(3), rotations.shape)
        np.testing.assert_allclose(rotations @ np.swapaxes(rotations, -1, -2), identity, atol=1e-12)
        np.testing.assert_allclose(hand.betas, spec.hand(side).betas)


def test_a_scene_without_a_hand_reports_it_invalid(clip, tmp_path):
    spec, video, frames, meta = clip
    source = tmp_path / "one_hand.mp4"
    write_scene_sidecar(source, replace(spec, hands=spec.hands[1:]))
    result = make(SyntheticHands).infer(replace(video, source=source), frames, meta, depth=None)
    assert not result.left.valid.any() and np.isnan(result.left.betas).all()
    assert result.right.valid.any()


def test_missing_sidecar_fails_the_video_naming_the_file(clip, tmp_path):
    _, video, frames, meta = clip
    orphan = replace(video, source=tmp_path / "camera_roll.mp4")
    expected = r"video 00021, stage depth_camera \(.*camera_roll\.scene\.json\): no scene sidecar"
    with pytest.raises(BadInputError, match=expected):
        make(SyntheticDepthCamera).infer(orphan, frames, meta)


def test_simulated_cost_charges_and_releases_through_the_allocator():
    cost = SyntheticStageCost(
        model_mb=2, per_video_mb=1, per_frame_mb=0.5, load_s=0.05, gpu_s_per_frame=0.01, cpu_s_per_frame=0.02
    )
    allocator = RecordingAllocator()
    simulated = SimulatedCost(cost, allocator)
    start = time.perf_counter()
    simulated.load()
    simulated.load()  # once per worker: a second load takes nothing more
    assert time.perf_counter() - start >= 0.05
    assert allocator.calls == [("allocate", 2 * 2**20)]
    start = time.perf_counter()
    with simulated.video(4):
        assert allocator.held == (2 + 1 + 0.5 * 4) * 2**20
        assert allocator.calls[-1] == ("gpu_phase", 0)
    assert time.perf_counter() - start >= 4 * (0.01 + 0.02)
    assert allocator.held == 2 * 2**20
    with pytest.raises(RuntimeError), simulated.video(4):
        raise RuntimeError("model crashed")
    assert allocator.held == 2 * 2**20  # released even when the video fails
    simulated.unload()
    simulated.unload()
    assert allocator.held == 0 and allocator.calls[-1] == ("release", 2 * 2**20)


def test_zero_cost_never_touches_the_allocator():
    allocator = RecordingAllocator()
    simulated = SimulatedCost(SyntheticStageCost(), allocator)
    simulated.load()
    with simulated.video(100):
        pass
    simulated.unload()
    assert allocator.calls == []


def test_torch_allocator_holds_real_memory():
    allocator = TorchAllocator("cpu")
    allocator.allocate(3 * 2**20)
    allocator.allocate(2**20)
    assert allocator.held_bytes() == 4 * 2**20
    allocator.release(3 * 2**20)
    assert allocator.held_bytes() == 2**20
    with pytest.raises(ValueError, match="never allocated"):
        allocator.release(5)


def test_backends_charge_their_own_stage_cost(clip):
    _, video, frames, meta = clip
    allocator = RecordingAllocator()
    backend = make(SyntheticHands, allocator=allocator, hands={"model_mb": 3, "per_frame_mb": 1})
    backend.load()
    backend.infer(video, frames, meta, depth=None)
    backend.unload()
    mib = 2**20
    assert allocator.calls == [
        ("allocate", 3 * mib),
        ("allocate", FRAMES * mib),
        ("release", FRAMES * mib),
        ("release", 3 * mib),
    ]


def test_default_allocator_is_torch():
    backend = make(SyntheticDepthCamera)
    assert isinstance(backend.cost.allocator, TorchAllocator)
