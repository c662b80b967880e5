"""The synthetic scene: rigid cameras, analytic depth, determinism, JSON, hands in and out.

Expectations are computed from the spec's own parameters with scipy (``expected_pose``),
never with the scene's helpers (DECISIONS.md: ground truth is computed independently).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trackset.synthetic.scene import (
    HAND_IDS,
    NO_HIT,
    STATIC_ID,
    Oscillation,
    Plane,
    RigidMotion,
    SceneSpec,
)


def expected_pose(motion: RigidMotion, times: np.ndarray) -> np.ndarray:
    """``(T,4,4)`` body->world straight from a motion's parameters: a + b sin(w t + phi)."""

    def wave(osc: Oscillation) -> np.ndarray:
        t = np.asarray(times, dtype=np.float64)[:, None]
        return np.array(osc.offset) + np.array(osc.amplitude) * np.sin(np.array(osc.omega) * t + np.array(osc.phase))

    out = np.tile(np.eye(4), (len(times), 1, 1))
    out[:, :3, :3] = Rotation.from_rotvec(wave(motion.rotation)).as_matrix()
    out[:, :3, 3] = wave(motion.translation)
    return out


def expected_extrinsics(spec: SceneSpec, times: np.ndarray) -> np.ndarray:
    """World->camera from the camera's parameters, inverted with numpy's general inverse."""
    return np.linalg.inv(expected_pose(spec.camera, times))


def still(offset=(0.0, 0.0, 0.0), rotvec=(0.0, 0.0, 0.0)) -> RigidMotion:
    return RigidMotion(Oscillation(tuple(offset)), Oscillation(tuple(rotvec)))


@pytest.fixture(scope="module")
def spec() -> SceneSpec:
    return SceneSpec.from_seed(4, num_frames=16)


def test_extrinsics_are_rigid_and_follow_the_parameters(spec):
    times = np.linspace(0.0, 3.0, 31)
    extrinsics = spec.extrinsics(times)
    rot = extrinsics[:, :3, :3]
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    np.testing.assert_array_equal(extrinsics[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (31, 1)))
    np.testing.assert_allclose(extrinsics, expected_extrinsics(spec, times), atol=1e-12)
    # The camera really moves: a few cm and a few degrees.
    travel = np.ptp(spec.camera_poses(times)[:, :3, 3], axis=0)
    assert 0.005 < travel.max() < 0.5


def test_object_and_wrist_poses_follow_the_parameters(spec):
    times = spec.frame_times()
    poses = spec.object_poses(times)
    assert poses.shape == (16, len(spec.objects), 4, 4)
    for index, box in enumerate(spec.objects):
        np.testing.assert_allclose(poses[:, index], expected_pose(box.motion, times), atol=1e-12)
    for hand in spec.hands:
        expected = expected_pose(hand.motion, times)
        np.testing.assert_allclose(spec.wrist_poses_world(hand.side, times), expected, atol=1e-12)


def test_fronto_parallel_plane_renders_its_distance(spec):
    wall = Plane((0.0, 0.0, 2.0), (0.0, 0.0, -1.0), spec.planes[0].texture)
    flat = replace(spec, camera=still(), planes=(wall,), objects=(), hands=())
    rgb, depth, ids = flat.render(0.3)
    assert rgb.shape == (384, 512, 3) and rgb.dtype == np.uint8
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, 2.0, rtol=1e-6)
    assert (ids == STATIC_ID).all()


def test_tilted_plane_matches_the_analytic_depth(spec):
    normal = np.array([0.3, -0.2, -1.0]) / np.linalg.norm([0.3, -0.2, -1.0])
    point = np.array([0.1, 0.0, 1.8])
    camera = still(offset=(0.05, -0.02, 0.1), rotvec=(0.02, -0.03, 0.01))
    scene = replace(
        spec, camera=camera, planes=(Plane(tuple(point), tuple(normal), spec.planes[0].texture),), objects=(), hands=()
    )
    depth = scene.render_depth(0.0)[0]

    pose = expected_pose(camera, np.array([0.0]))[0]
    cols, rows = np.meshgrid(np.arange(512.0), np.arange(384.0))
    rays = np.stack([(cols - spec.cx) / spec.fx, (rows - spec.cy) / spec.fy, np.ones_like(cols)], axis=-1)
    # Ray x_cam = z * rays hits n . (R x_cam + c - p) = 0 at z = n.(p - c) / n.(R rays).
    z = ((point - pose[:3, 3]) @ normal) / (rays @ pose[:3, :3].T @ normal)
    np.testing.assert_allclose(depth, z, rtol=2e-6)


def test_nothing_hit_is_zero_depth_and_no_hit(spec):
    scene = replace(spec, camera=still(), planes=(), objects=(), hands=())
    _, depth, ids = scene.render(0.0)
    assert (depth == 0).all() and (ids == NO_HIT).all()


def test_a_static_world_point_stays_on_its_pixel(spec):
    """A wall point projected with K E_t lands, in every frame, on a pixel that shows it."""
    times = spec.frame_times()
    k = spec.intrinsics()
    depth0, ids0 = spec.render_depth(0.0)
    pose0 = expected_pose(spec.camera, times[:1])[0]
    rows, cols = np.mgrid[20:120:25, 30:480:40]  # upper part of the image: the back wall
    rays = np.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], np.ones(cols.shape)], -1)
    cam = rays * depth0[rows, cols, None]
    world = cam.reshape(-1, 3) @ pose0[:3, :3].T + pose0[:3, 3]
    on_wall = ids0[rows, cols].ravel() == STATIC_ID
    checked = 0
    for t, extrinsic in zip(times, expected_extrinsics(spec, times)):
        depth, ids = spec.render_depth(float(t))
        x = world @ extrinsic[:3, :3].T + extrinsic[:3, 3]
        u = np.rint(k[0, 0] * x[:, 0] / x[:, 2] + k[0, 2]).astype(int)
        v = np.rint(k[1, 1] * x[:, 1] / x[:, 2] + k[1, 2]).astype(int)
        inside = on_wall & (u >= 0) & (u < 512) & (v >= 0) & (v < 384)
        seen = inside.copy()
        seen[inside] = ids[v[inside], u[inside]] == STATIC_ID  # not hidden by a box or a hand
        # Rounding to the pixel centre moves the ray by <= 0.71 px: a few mm of depth at 2 m.
        np.testing.assert_allclose(depth[v[seen], u[seen]], x[seen, 2], atol=0.01)
        checked += int(seen.sum())
    assert checked > 100


def test_same_seed_same_scene_and_pixels_other_seed_differs():
    a, b, c = (SceneSpec.from_seed(seed, num_frames=12) for seed in (9, 9, 10))
    assert a == b and a != c
    rgb_a, depth_a, _ = a.render(0.7)
    rgb_b, depth_b, _ = b.render(0.7)
    assert rgb_a.tobytes() == rgb_b.tobytes() and depth_a.tobytes() == depth_b.tobytes()
    assert rgb_a.tobytes() != c.render(0.7)[0].tobytes()


def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    assert SceneSpec.from_json(text) == spec
    assert SceneSpec.from_json(text).to_json() == text


@pytest.mark.parametrize("num_frames", [12, 40])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hands_enter_and_leave_the_view(seed, num_frames):
    scene = SceneSpec.from_seed(seed, num_frames=num_frames)
    times = scene.frame_times()
    for side in ("left", "right"):
        valid = scene.hand_valid(side, times)
        assert valid.any() and not valid.all(), (side, valid)
        # Independently: the wrist projects inside the image with z > 0.
        wrist = (expected_extrinsics(scene, times) @ expected_pose(scene.hand(side).motion, times))[:, :3, 3]
        u = scene.fx * wrist[:, 0] / wrist[:, 2] + scene.cx
        v = scene.fy * wrist[:, 1] / wrist[:, 2] + scene.cy
        np.testing.assert_array_equal(valid, (wrist[:, 2] > 0) & (u >= 0) & (u <= 511) & (v >= 0) & (v <= 383))


def test_a_visible_hand_is_in_the_depth_buffer(spec):
    times = spec.frame_times()
    side = "left"
    t = float(times[spec.hand_valid(side, times)][0])
    _, depth, ids = spec.render(t)
    wrist = (expected_extrinsics(spec, np.array([t])) @ expected_pose(spec.hand(side).motion, np.array([t])))[0, :3, 3]
    u = int(np.rint(spec.fx * wrist[0] / wrist[2] + spec.cx))
    v = int(np.rint(spec.fy * wrist[1] / wrist[2] + spec.cy))
    # The wrist is inside the ellipsoid, so what is seen there is at most as far as the wrist.
    assert depth[v, u] <= wrist[2] + 1e-3
    assert (ids == HAND_IDS[side]).sum() > 100


def test_missing_hand_is_never_valid(spec):
    scene = replace(spec, hands=spec.hands[1:])
    assert not scene.hand_valid("left", scene.frame_times()).any()
    with pytest.raises(KeyError, match="no left hand"):
        scene.wrist_poses_world("left", scene.frame_times())


def test_some_seeds_put_background_beyond_the_clip_range():
    beyond = [seed for seed in range(12) if (SceneSpec.from_seed(seed, num_frames=4).render_depth(0.0)[0] > 2.5).any()]
    assert 0 < len(beyond) < 12


def test_resized_render_uses_scaled_intrinsics(spec):
    half = spec.intrinsics_for(256, 192)
    np.testing.assert_allclose(half[0, 0], spec.fx / 2)
    np.testing.assert_allclose(half[0, 2], (spec.cx + 0.5) / 2 - 0.5)
    depth, ids = spec.render_depth(0.2, 256, 192)
    assert depth.shape == ids.shape == (192, 256)


@pytest.mark.parametrize("seed", [0, 7])
def test_turning_motion_changes_only_the_camera_and_hand_motions(seed):
    gentle, turning = (SceneSpec.from_seed(seed, num_frames=20, motion=m) for m in ("gentle", "turning"))
    assert SceneSpec.from_seed(seed, num_frames=20) == gentle  # the default is the demo's gentle scene
    assert replace(turning, camera=gentle.camera, hands=gentle.hands) == gentle
    assert turning.camera.translation == gentle.camera.translation
    assert [h.side for h in turning.hands] == [h.side for h in gentle.hands]
    assert SceneSpec.from_json(turning.to_json()) == turning  # the sidecar describes it fully


def test_turning_motion_turns_the_camera_and_the_hands_about_every_axis():
    scene = SceneSpec.from_seed(3, num_frames=20, motion="turning")
    times = scene.frame_times()
    camera = Rotation.from_matrix(expected_pose(scene.camera, times)[:, :3, :3])
    window_turns = np.stack([(camera[t].inv() * camera[t + 9]).as_rotvec() for t in range(len(times) - 9)])
    assert (np.degrees(np.abs(window_turns)).max(axis=0) > 2.0).all()  # about x, y and z
    assert 8.0 < np.degrees(np.linalg.norm(window_turns, axis=1)).max() < 25.0
    for hand in scene.hands:
        wrist = Rotation.from_matrix(expected_pose(hand.motion, times)[:, :3, :3])
        spread = np.ptp((wrist * wrist[0].inv()).as_rotvec(), axis=0)
        assert (spread > 0.3).all(), (hand.side, spread)


def test_a_frame_is_cast_once_per_scene_time_and_size_and_shared_read_only(monkeypatch):
    """The depth, mask and track stages of a build ask for the same frames: cast once, and
    the shared arrays cannot be changed by one caller under another."""
    scene = SceneSpec.from_seed(101, num_frames=3)  # a scene no other test renders: none cached
    casts: list[tuple[float, int, int]] = []
    real = SceneSpec._cast

    def counting(self, time, width, height):
        casts.append((time, width, height))
        return real(self, time, width, height)

    monkeypatch.setattr(SceneSpec, "_cast", counting)
    depth, ids = scene.render_depth(0.1)
    again = SceneSpec.from_json(scene.to_json()).render_depth(0.1)  # an equal scene, as each stage loads it
    assert again[0] is depth and again[1] is ids and casts == [(0.1, scene.width, scene.height)]
    with pytest.raises(ValueError, match="read-only"):
        depth[0, 0] = 1.0
    scene.render_depth(0.1, 256, 192)
    scene.render_depth(0.2)
    assert casts[1:] == [(0.1, 256, 192), (0.2, scene.width, scene.height)]
