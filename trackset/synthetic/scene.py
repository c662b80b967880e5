"""A procedural 3D scene with analytic ground truth, deterministic from a seed.

The synthetic backends stand in for ViPE, TAPIP3D and WiLoR. To test the pipeline's geometry
(not just its plumbing) they must know the *true* depth, camera, object motion and hand poses
of every frame of a real encoded video. A :class:`SceneSpec` is that truth: a small frozen
description (a few hundred numbers, saved as ``<stem>.scene.json`` beside the video) from which
every quantity is a closed-form function of time in seconds. Because everything is a function
of time, not of frame index, any resampling of the video (preprocessing keeps the source
timestamps in ``FramesMeta.timestamps_s``) maps onto the truth exactly.

Conventions (FORMATS.md): camera axes x right, y down, z forward; ``extrinsics`` are
world->camera (``x_cam = E @ x_world``); pixel ``(u, v)`` is column, row with pixel centres on
integers (OpenCV); depth is z in metres, 0 where a ray hits nothing.

The scene: a static textured back wall (1.8-2.4 m, tilted, so on some seeds its far side
passes 2.5 m and depth clipping is exercised) and floor; 1-3 textured boxes at 0.75-1.45 m,
each in smooth rigid motion; and two "hands", skin-coloured ellipsoids around a wrist whose
6-DoF pose sweeps in and out of the view, so their validity flips within every clip. Textures
are solid (3D) procedural patterns in each body's own coordinates, so a point on a body keeps
its colour as the body moves: exactly what a point tracker follows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import TypeAdapter
from scipy.spatial.transform import Rotation

from trackset.geometry.camera import matmul
from trackset.synthetic.products import column_dots, dot3, matrix_times, transpose_times, vector_times

Vec3 = tuple[float, float, float]
HandSide = Literal["left", "right"]
Motion = Literal["gentle", "turning"]

NO_HIT = -1
"""``object_id`` of a pixel whose ray hits nothing (its depth is 0)."""
STATIC_ID = 0
"""``object_id`` of the static background (wall and floor); moving boxes are 1..n."""
HAND_IDS: dict[str, int] = {"left": 101, "right": 102}
"""``object_id`` of each hand's ellipsoid."""

# A right hand's 21 joints (MANO/OpenPose order: wrist, then thumb, index, middle, ring and
# pinky from base to tip) in the wrist frame, metres: fingers along -y, thumb towards +x.
# The left hand is the mirror image (x negated).
RIGHT_HAND_JOINTS = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.025, -0.020, -0.005],
        [0.040, -0.040, -0.008],
        [0.052, -0.060, -0.010],
        [0.062, -0.076, -0.010],
        [0.022, -0.090, 0.0],
        [0.023, -0.125, 0.0],
        [0.024, -0.146, 0.0],
        [0.025, -0.165, 0.0],
        [0.000, -0.095, 0.0],
        [0.000, -0.134, 0.0],
        [0.000, -0.158, 0.0],
        [0.000, -0.180, 0.0],
        [-0.018, -0.090, 0.0],
        [-0.019, -0.125, 0.0],
        [-0.020, -0.147, 0.0],
        [-0.020, -0.166, 0.0],
        [-0.035, -0.080, 0.0],
        [-0.037, -0.105, 0.0],
        [-0.038, -0.121, 0.0],
        [-0.039, -0.137, 0.0],
    ]
)


@dataclass(frozen=True)
class Oscillation:
    """A smooth 3-vector of time: ``offset + amplitude * sin(omega * t + phase)`` per axis.

    Examples:
        >>> wave = Oscillation((1.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, np.pi, 0.0), (0.0, 0.0, 0.0))
        >>> wave.at(np.array([0.0, 0.5])).round(6).tolist()
        [[1.0, 0.0, 0.0], [1.0, 2.0, 0.0]]
    """

    offset: Vec3
    amplitude: Vec3 = (0.0, 0.0, 0.0)
    omega: Vec3 = (0.0, 0.0, 0.0)  # rad/s
    phase: Vec3 = (0.0, 0.0, 0.0)  # rad

    def at(self, times: np.ndarray) -> np.ndarray:
        """``(T, 3)`` values at ``times`` seconds."""
        t = np.asarray(times, dtype=np.float64).reshape(-1, 1)
        return np.asarray(self.offset) + np.asarray(self.amplitude) * np.sin(
            np.asarray(self.omega) * t + np.asarray(self.phase)
        )


@dataclass(frozen=True)
class RigidMotion:
    """A body->world pose over time: translation in metres, rotation as a rotation vector (rad).

    Examples:
        >>> still = RigidMotion(Oscillation((0.0, 0.0, 2.0)), Oscillation((0.0, 0.0, 0.0)))
        >>> still.matrices(np.array([0.0]))[0, :3, 3].tolist()
        [0.0, 0.0, 2.0]
    """

    translation: Oscillation
    rotation: Oscillation

    def matrices(self, times: np.ndarray) -> np.ndarray:
        """``(T, 4, 4)`` body->world transforms at ``times`` seconds."""
        rotvec = self.rotation.at(times)
        out = np.zeros((rotvec.shape[0], 4, 4))
        out[:, :3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
        out[:, :3, 3] = self.translation.at(times)
        out[:, 3, 3] = 1.0
        return out


@dataclass(frozen=True)
class Texture:
    """A solid texture: a checkerboard blended with a sum of plane waves, between two colours.

    Solid (3D) so that any surface of a body gets a rich, non-repeating pattern without
    per-face texture coordinates.
    """

    color_a: Vec3  # RGB, 0-255
    color_b: Vec3
    checker_m: float  # side of a checker cell, metres
    wave_vectors: tuple[Vec3, ...]  # rad/m
    wave_phases: tuple[float, ...]  # rad

    def colors(self, points: np.ndarray, brightness: np.ndarray | None = None) -> np.ndarray:
        """``(3, M)`` float32 RGB of the texture at body-frame ``points`` given as ``(3, M)``.

        Axis-first, as the renderer keeps every per-pixel array (contiguous rows are several
        times faster than ``(M, 3)`` here). ``brightness`` (M,) scales each colour (shading).

        Examples:
            >>> tex = Texture((200.0, 0.0, 0.0), (0.0, 0.0, 200.0), 1.0, ((0.0, 0.0, 0.0),), (-np.pi / 2,))
            >>> tex.colors(np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]]).T).T.round(3).tolist()
            [[200.0, 0.0, 0.0], [100.0, 0.0, 100.0]]
        """
        q = np.asarray(points, dtype=np.float32)
        cells = np.floor(q / np.float32(self.checker_m)).astype(np.int32)
        checker = ((cells[0] + cells[1] + cells[2]) & 1).astype(np.float32)
        waves = matrix_times(np.asarray(self.wave_vectors, np.float32), q)
        waves += np.asarray(self.wave_phases, np.float32)[:, None]
        np.sin(waves, out=waves)
        count = waves.shape[0]
        pattern = 0.5 * checker + (0.25 / count) * (count + waves.sum(axis=0))
        scale = np.ones_like(pattern) if brightness is None else brightness.astype(np.float32)
        a, b = np.asarray(self.color_a, np.float32), np.asarray(self.color_b, np.float32)
        return a[:, None] * scale + (b - a)[:, None] * (scale * pattern)


@dataclass(frozen=True)
class Plane:
    """A static infinite plane through ``point`` with unit ``normal`` (world frame)."""

    point: Vec3
    normal: Vec3
    texture: Texture


@dataclass(frozen=True)
class Box:
    """A moving rigid box centred on its body origin, with ``half_extents`` along its axes."""

    half_extents: Vec3
    motion: RigidMotion
    texture: Texture


@dataclass(frozen=True)
class HandSpec:
    """One hand: a wrist pose over time, an ellipsoid around it, and MANO-like parameters."""

    side: HandSide
    motion: RigidMotion  # wrist->world
    radii: Vec3  # ellipsoid semi-axes in the wrist frame, metres
    center: Vec3  # ellipsoid centre in the wrist frame (the palm), metres
    texture: Texture
    betas: tuple[float, ...]  # 10 shape coefficients, constant over the clip
    finger_curl_rad: float  # amplitude of the finger joints' flexion
    finger_omega: float  # rad/s


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render a clip and to evaluate its ground truth at any time.

    ``camera`` is camera->world (its inverse gives the extrinsics). Build one with
    :meth:`from_seed`; save it with :meth:`to_json`.
    """

    seed: int
    width: int
    height: int
    fps: float
    num_frames: int
    fx: float
    fy: float
    cx: float
    cy: float
    camera: RigidMotion
    planes: tuple[Plane, ...]
    objects: tuple[Box, ...]
    hands: tuple[HandSpec, ...]

    @property
    def duration_s(self) -> float:
        """Length of the clip in seconds (``num_frames / fps``)."""
        return self.num_frames / self.fps

    def frame_times(self) -> np.ndarray:
        """``(num_frames,)`` time of each encoded frame, seconds."""
        return np.arange(self.num_frames) / self.fps

    # ----------------------------------------------------------------- cameras
    def intrinsics(self) -> np.ndarray:
        """``(3, 3)`` pinhole K at the scene's own ``width x height``."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def intrinsics_for(self, width: int, height: int) -> np.ndarray:
        """K of frames resized to ``width x height`` as preprocessing does it.

        Preprocessing cuts the largest centred window of the target's aspect ratio, then
        resizes it; pixel centres map as ``x' = (x - x0 + 0.5) * s - 0.5``.
        """
        return resized_intrinsics(self.intrinsics(), self.width, self.height, width, height)

    def camera_poses(self, times: np.ndarray) -> np.ndarray:
        """``(T, 4, 4)`` camera->world at ``times`` seconds."""
        return self.camera.matrices(times)

    def extrinsics(self, times: np.ndarray) -> np.ndarray:
        """``(T, 4, 4)`` world->camera at ``times`` seconds (``x_cam = E @ x_world``)."""
        return _invert_rigid(self.camera_poses(times))

    # ----------------------------------------------------------------- bodies
    def object_poses(self, times: np.ndarray) -> np.ndarray:
        """``(T, n_objects, 4, 4)`` object->world of every moving box."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if not self.objects:
            return np.zeros((t.size, 0, 4, 4))
        return np.stack([box.motion.matrices(t) for box in self.objects], axis=1)

    def hand(self, side: str) -> HandSpec | None:
        """The hand on ``side``, or ``None`` when this scene has none there."""
        return next((h for h in self.hands if h.side == side), None)

    def _hand(self, side: str) -> HandSpec:
        hand = self.hand(side)
        if hand is None:
            raise KeyError(f"scene {self.seed} has no {side} hand")
        return hand

    def wrist_poses_world(self, side: str, times: np.ndarray) -> np.ndarray:
        """``(T, 4, 4)`` wrist->world of one hand; ``KeyError`` if the scene lacks it."""
        return self._hand(side).motion.matrices(times)

    def hand_valid(
        self, side: str, times: np.ndarray, width: int | None = None, height: int | None = None
    ) -> np.ndarray:
        """``(T,)`` True where the wrist projects inside the image with z > 0.

        "Inside" is ``0 <= u <= width - 1`` and ``0 <= v <= height - 1``, for frames of
        ``width x height`` (default: the scene's size). A missing hand is never valid.
        """
        width, height = width or self.width, height or self.height
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if self.hand(side) is None:
            return np.zeros(t.size, dtype=bool)
        wrist_cam = matmul(self.extrinsics(t), self.wrist_poses_world(side, t))[:, :3, 3]
        k = self.intrinsics_for(width, height)
        z = wrist_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = k[0, 0] * wrist_cam[:, 0] / z + k[0, 2]
            v = k[1, 1] * wrist_cam[:, 1] / z + k[1, 2]
        return (z > 0) & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)

    def finger_rotations(self, side: str, times: np.ndarray) -> np.ndarray:
        """``(T, 15, 3, 3)`` MANO-like joint rotations: each finger joint flexes about its x axis.

        Joint j bends by ``curl * (0.5 + 0.5 sin(omega t + 0.4 j))``, a known, smooth ground
        truth for the hand-pose field.
        """
        hand = self._hand(side)
        t = np.asarray(times, dtype=np.float64).reshape(-1, 1)
        angle = hand.finger_curl_rad * (0.5 + 0.5 * np.sin(hand.finger_omega * t + 0.4 * np.arange(15)))
        cos, sin = np.cos(angle), np.sin(angle)
        out = np.zeros((*angle.shape, 3, 3))
        out[..., 0, 0] = 1.0
        out[..., 1, 1], out[..., 1, 2] = cos, -sin
        out[..., 2, 1], out[..., 2, 2] = sin, cos
        return out

    def joint_offsets(self, side: str) -> np.ndarray:
        """``(21, 3)`` joints in the wrist frame (the left hand mirrors the right)."""
        self._hand(side)
        return RIGHT_HAND_JOINTS * np.array([-1.0 if side == "left" else 1.0, 1.0, 1.0])

    def body_poses(self, times: np.ndarray) -> dict[int, np.ndarray]:
        """``{object_id: (T, 4, 4) body->world}`` for the background, every box and hand.

        The background's pose is the identity: its points are world points.
        """
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        poses = {STATIC_ID: np.broadcast_to(np.eye(4), (t.size, 4, 4)).copy()}
        for index, box in enumerate(self.objects):
            poses[index + 1] = box.motion.matrices(t)
        for hand in self.hands:
            poses[HAND_IDS[hand.side]] = hand.motion.matrices(t)
        return poses

    # ----------------------------------------------------------------- rendering
    def render(
        self, time: float, width: int | None = None, height: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ray-cast one frame at ``time`` seconds.

        Returns:
            ``rgb (H,W,3) uint8``, ``depth (H,W) float32`` z in metres (0 where nothing is
            hit), ``object_id (H,W) int32`` (:data:`NO_HIT`, :data:`STATIC_ID`, box index + 1,
            or :data:`HAND_IDS`), at ``width x height`` (default: the scene's own size).
        """
        cast = self._cast(time, width or self.width, height or self.height)
        # Group pixels by the body they show with one sort, so each body works on contiguous
        # slices instead of gathering and scattering its own pixels.
        winner = cast.winner.ravel().astype(np.int8)  # int8 sorts by radix sort
        order = np.argsort(winner, kind="stable")
        bounds = np.searchsorted(winner[order], np.arange(-1, len(cast.bodies) + 1))
        depth, dirs = cast.depth.ravel()[order], cast.dirs.reshape(3, -1)[:, order]
        rgb = np.zeros((3, depth.size), dtype=np.float32)
        for index, body in enumerate(cast.bodies):
            pixels = slice(bounds[index + 1], bounds[index + 2])
            if pixels.start == pixels.stop:
                continue
            local_dirs = matrix_times(body.rotation.T, dirs[:, pixels])
            local_points = body.local_origin[:, None] + depth[pixels] * local_dirs
            normals = body.normals(local_points)
            cosine = column_dots(normals, local_dirs) / np.sqrt(column_dots(local_dirs, local_dirs))
            # Headlight shading: faces seen obliquely are darker, so box edges stay visible.
            rgb[:, pixels] = body.texture.colors(local_points, 0.55 + 0.45 * np.abs(cosine))
        unsorted = np.empty_like(rgb)
        unsorted[:, order] = rgb
        rgb8 = np.clip(np.rint(unsorted), 0, 255).astype(np.uint8).reshape(3, *cast.depth.shape)
        return np.ascontiguousarray(rgb8.transpose(1, 2, 0)), *cast.depth_and_ids()

    def render_depth(
        self, time: float, width: int | None = None, height: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Depth and ``object_id`` of :meth:`render` without shading (cheaper, same values).

        Read-only arrays, remembered for the last 128 frames cast in this process (~190 MB
        at 512x384): the depth, mask and track stages of a video ask for the same frames, and
        so do the repeated builds of one corpus in a test module.
        """
        return _depth_and_ids(self, time, width or self.width, height or self.height)

    def _cast(self, time: float, width: int, height: int) -> _Cast:
        """Nearest hit of every pixel's ray among all bodies (a z-buffer over bodies).

        A box or hand covers a small part of the image, so its rays are only cast inside the
        screen rectangle of its projected bounding box: most of a frame's cost is the planes.
        """
        k = self.intrinsics_for(width, height)
        camera = self.camera_poses(np.array([time]))[0]
        rot_c, origin = camera[:3, :3], camera[:3, 3]
        # float32 throughout: 0.1 um at 2 m is far below any test tolerance, and it halves
        # the memory traffic of every per-pixel operation.
        xs = ((np.arange(width) - k[0, 2]) / k[0, 0]).astype(np.float32)
        ys = ((np.arange(height) - k[1, 2]) / k[1, 1]).astype(np.float32)
        rot_c32 = rot_c.astype(np.float32)
        # World direction of the camera ray (x, y, 1), axis first (3, H, W) so that every
        # per-pixel operation runs over contiguous rows. With z = 1 in the camera frame, the
        # ray parameter of a hit *is* its z-depth.
        columns = rot_c32[:, :, None, None]
        dirs = columns[:, 0] * xs[None, None, :] + columns[:, 1] * ys[None, :, None] + columns[:, 2]
        depth = np.full((height, width), np.inf, dtype=np.float32)
        winner = np.full((height, width), -1, dtype=np.int32)
        bodies = self._bodies_at(time, origin)
        for index, body in enumerate(bodies):
            rows, cols = body.screen_box(camera, k, width, height)
            if rows.start >= rows.stop or cols.start >= cols.stop:
                continue
            window_dirs = dirs[:, rows, cols]
            local_dirs = matrix_times(body.rotation.T, window_dirs.reshape(3, -1))
            hits = body.intersect(local_dirs).reshape(window_dirs.shape[1:])
            closer = hits < depth[rows, cols]
            depth[rows, cols][closer] = hits[closer]
            winner[rows, cols][closer] = index
        return _Cast(dirs=dirs, bodies=bodies, winner=winner, depth=depth)

    def _bodies_at(self, time: float, origin: np.ndarray) -> list[_Body]:
        """Every surface at ``time``, with the camera centre in its own frame."""
        t = np.array([time])
        bodies = [
            _Body(STATIC_ID, np.eye(4), _f32(origin), plane.texture, "plane", _f32(plane.normal), _f32(plane.point))
            for plane in self.planes
        ]
        for index, box in enumerate(self.objects):
            pose = box.motion.matrices(t)[0]
            local_origin = transpose_times(pose[:3, :3], origin - pose[:3, 3])
            bodies.append(
                _Body(index + 1, pose, _f32(local_origin), box.texture, "box", _f32(box.half_extents), _f32((0, 0, 0)))
            )
        for hand in self.hands:
            pose = hand.motion.matrices(t)[0]
            local_origin = transpose_times(pose[:3, :3], origin - pose[:3, 3])
            bodies.append(
                _Body(
                    HAND_IDS[hand.side],
                    pose,
                    _f32(local_origin),
                    hand.texture,
                    "ellipsoid",
                    _f32(hand.radii),
                    _f32(hand.center),
                )
            )
        return bodies

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> str:
        """The spec as JSON (the ``<stem>.scene.json`` sidecar)."""
        return _ADAPTER.dump_json(self, indent=1).decode()

    @classmethod
    def from_json(cls, text: str) -> SceneSpec:
        """Inverse of :meth:`to_json`; raises ``pydantic.ValidationError`` on a malformed file."""
        return _ADAPTER.validate_json(text)

    # ----------------------------------------------------------------- generation
    @classmethod
    def from_seed(
        cls,
        seed: int,
        num_frames: int = 40,
        fps: float = 10.0,
        width: int = 512,
        height: int = 384,
        motion: Motion = "gentle",
    ) -> SceneSpec:
        """A random scene, the same for the same arguments.

        Hands sweep across an image edge with a period of at most 95 % of the clip (and at
        most ~4.3 s), so each hand is both visible and not visible within the clip.

        ``motion="turning"`` keeps everything else and gives the camera and the hands larger
        rotations about all three axes (:func:`_turning`), the ground truth that tells
        ``R_k R_0^T`` from ``R_0^T R_k`` and ``E_s E_{s+k}^-1`` from ``E_{s+k}^-1 E_s``;
        "gentle" (the default) is the demo's scene.
        """
        rng = np.random.default_rng(seed)
        scale = width / 512
        fx = float(rng.uniform(400.0, 450.0)) * scale
        fy = fx * float(rng.uniform(0.99, 1.01))
        cx = width / 2 + float(rng.uniform(-4.0, 4.0)) * scale
        cy = height / 2 + float(rng.uniform(-3.0, 3.0)) * scale
        half_fov_x, half_fov_y = cx / fx, cy / fy  # tan of the half field of view

        turn_low, turn_high = np.deg2rad([(1.0, 1.0, 1.0), (4.0, 4.0, 3.0)])
        camera = RigidMotion(
            _oscillation(rng, (0.0, 0.0, 0.0), (0.03, 0.01, 0.02), (0.12, 0.06, 0.10), (3.0, 8.0)),
            _oscillation(rng, (0.0, 0.0, 0.0), turn_low, turn_high, (3.0, 8.0)),
        )
        wall_z = float(rng.uniform(1.8, 2.4))
        yaw, pitch = float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.08, 0.08))
        wall_normal = np.array([np.sin(yaw), np.sin(pitch), -np.cos(yaw)])
        wall_normal /= np.linalg.norm(wall_normal)
        planes = (
            Plane((0.0, 0.0, wall_z), _vec(wall_normal), _texture(rng, 120.0, 235.0)),
            Plane((0.0, float(rng.uniform(0.38, 0.6)), 0.0), (0.0, -1.0, 0.0), _texture(rng, 60.0, 180.0)),
        )

        objects = []
        for _ in range(int(rng.integers(1, 4))):
            z = float(rng.uniform(0.75, 1.45))
            center = (rng.uniform(-0.5, 0.5) * half_fov_x * z, rng.uniform(-0.3, 0.45) * half_fov_y * z, z)
            objects.append(
                Box(
                    _vec(rng.uniform(0.05, 0.14, 3)),
                    RigidMotion(
                        _oscillation(rng, center, (0.02, 0.02, 0.02), (0.12, 0.08, 0.12), (1.5, 5.0)),
                        _oscillation(rng, rng.uniform(-0.6, 0.6, 3), (0.03,) * 3, (0.2,) * 3, (1.5, 5.0)),
                    ),
                    _texture(rng, 40.0, 240.0),
                )
            )

        last_time = max(num_frames - 1, 5) / fps
        hands = []
        sides: tuple[tuple[HandSide, float], ...] = (("left", -1.0), ("right", 1.0))
        for side, sign in sides:
            z = float(rng.uniform(0.6, 0.95))
            period = float(rng.uniform(0.75, 0.95)) * min(last_time, 4.5)
            # Centred on the image edge: the wrist is in view for about half of each sweep.
            translation = Oscillation(
                (sign * (half_fov_x * z + float(rng.uniform(-0.05, 0.05))), float(rng.uniform(0.0, 0.15)), z),
                (float(rng.uniform(0.35, 0.45)), float(rng.uniform(0.02, 0.06)), float(rng.uniform(0.02, 0.06))),
                (2 * np.pi / period, *(2 * np.pi / rng.uniform(1.5, 4.0, 2))),
                _vec(rng.uniform(0.0, 2 * np.pi, 3)),
            )
            base = rng.uniform(-0.3, 0.3, 3)
            hands.append(
                HandSpec(
                    side=side,
                    motion=RigidMotion(translation, _oscillation(rng, base, (0.1,) * 3, (0.35,) * 3, (1.5, 4.0))),
                    radii=(0.045, 0.085, 0.03),
                    center=(0.0, -0.05, 0.0),
                    texture=_skin_texture(rng),
                    betas=tuple(float(b) for b in rng.normal(0.0, 1.0, 10)),
                    finger_curl_rad=float(rng.uniform(0.2, 0.9)),
                    finger_omega=2 * np.pi / float(rng.uniform(1.0, 3.0)),
                )
            )
        spec = cls(
            seed=seed,
            width=width,
            height=height,
            fps=float(fps),
            num_frames=num_frames,
            fx=fx,
            fy=fy,
            cx=cx,
            cy=cy,
            camera=camera,
            planes=planes,
            objects=tuple(objects),
            hands=tuple(hands),
        )
        # A stream of its own, so the gentle scene of a seed stays exactly what it was.
        return spec if motion == "gentle" else _turning(spec, np.random.default_rng([seed, 1]))


_ADAPTER = TypeAdapter(SceneSpec)


def _turning(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """``spec`` with a camera panning and rolling 4-8 degrees (up to ~17 deg/s) about every
    axis, and hands turning 0.3-0.6 rad about every axis, their 2-3 s sweeps centred inside
    the square centre crop so that windows with a hand in the crop are common even in short
    clips, and some windows see a hand leave it.
    """
    turn_low, turn_high = np.deg2rad([(5.0, 5.0, 4.0), (8.0, 8.0, 6.0)])
    camera = replace(spec.camera, rotation=_oscillation(rng, (0.0, 0.0, 0.0), turn_low, turn_high, (3.0, 5.0)))
    crop_half_fov_x = min(spec.width, spec.height) / 2 / spec.fx  # tan of the crop's half field of view
    hands = []
    for hand in spec.hands:
        sign = -1.0 if hand.side == "left" else 1.0
        translation = hand.motion.translation
        z = translation.offset[2]
        centred = replace(
            translation,
            offset=(sign * 0.5 * crop_half_fov_x * z, translation.offset[1], z),
            amplitude=(float(rng.uniform(0.2, 0.3)), *translation.amplitude[1:]),
            omega=(2 * np.pi / float(rng.uniform(2.0, 3.0)), *translation.omega[1:]),
        )
        base = hand.motion.rotation.offset
        rotation = _oscillation(rng, base, (0.3,) * 3, (0.6,) * 3, (1.5, 3.0))
        hands.append(replace(hand, motion=RigidMotion(centred, rotation)))
    return replace(spec, camera=camera, hands=tuple(hands))


@dataclass(frozen=True)
class _Body:
    """One surface at one instant, in its own frame: what the ray caster needs."""

    object_id: int
    pose: np.ndarray  # body->world (4, 4)
    local_origin: np.ndarray  # camera centre in the body frame (float32, like the fields below)
    texture: Texture
    kind: Literal["plane", "box", "ellipsoid"]
    size: np.ndarray  # plane normal, box half extents or ellipsoid radii
    center: np.ndarray  # plane point, or box / ellipsoid centre (body frame)

    @property
    def rotation(self) -> np.ndarray:
        """Body->world rotation (float32): ``world_dirs @ rotation`` are body-frame directions."""
        return self.pose[:3, :3].astype(np.float32)

    def intersect(self, local_dirs: np.ndarray) -> np.ndarray:
        """Ray parameter ``(M,)`` of the first hit in front of the camera, ``inf`` on a miss.

        ``local_dirs`` are ``(3, M)`` body-frame ray directions from :attr:`local_origin`.
        """
        if self.kind == "plane":
            return _ray_plane(self.local_origin, local_dirs, self.center, self.size)
        if self.kind == "box":
            return _ray_box(self.local_origin - self.center, local_dirs, self.size)
        return _ray_ellipsoid(self.local_origin - self.center, local_dirs, self.size)

    def normals(self, points: np.ndarray) -> np.ndarray:
        """Unit surface normals ``(3, M)`` at body-frame ``points`` ``(3, M)`` on this surface."""
        if self.kind == "plane":
            return np.broadcast_to(self.size[:, None], points.shape)
        offsets = points - self.center[:, None]
        if self.kind == "box":
            face = np.argmax(np.abs(offsets) / self.size[:, None], axis=0)
            columns = np.arange(points.shape[1])
            normals = np.zeros_like(points)
            normals[face, columns] = np.sign(offsets[face, columns])
            return normals
        gradient = offsets / (self.size**2)[:, None]
        return gradient / np.sqrt(column_dots(gradient, gradient))

    def screen_box(self, camera: np.ndarray, k: np.ndarray, width: int, height: int) -> tuple[slice, slice]:
        """Rows and columns that can see this body: the whole image for a plane, else the
        rectangle around the projection of its bounding box (whole image if that box reaches
        behind the camera, where a projection is meaningless)."""
        if self.kind == "plane":
            return slice(0, height), slice(0, width)
        signs = np.array(np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0])).reshape(3, -1).T
        corners = (self.center + signs * self.size) @ self.rotation.T + self.pose[:3, 3]
        cam = (corners - camera[:3, 3]) @ camera[:3, :3]
        if cam[:, 2].min() < 1e-3:
            return slice(0, height), slice(0, width)
        u = k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2]
        v = k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]
        cols = slice(int(np.clip(np.floor(u.min()), 0, width)), int(np.clip(np.ceil(u.max()) + 1, 0, width)))
        rows = slice(int(np.clip(np.floor(v.min()), 0, height)), int(np.clip(np.ceil(v.max()) + 1, 0, height)))
        return rows, cols


@dataclass(frozen=True)
class _Cast:
    """Result of casting every pixel's ray, as ``(H, W)`` images."""

    dirs: np.ndarray  # (3, H, W) world directions, camera z = 1
    bodies: list[_Body]
    winner: np.ndarray  # index into bodies, -1 where nothing is hit
    depth: np.ndarray  # ray parameter = z-depth, inf where nothing is hit

    def depth_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """``depth (H,W) float32`` (0 on a miss) and ``object_id (H,W) int32``."""
        missed = self.winner < 0
        # winner -1 (a miss) indexes the trailing NO_HIT.
        ids = np.array([body.object_id for body in self.bodies] + [NO_HIT], dtype=np.int32)[self.winner]
        return np.where(missed, 0.0, self.depth).astype(np.float32), ids


@lru_cache(maxsize=128)
def _depth_and_ids(scene: SceneSpec, time: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`SceneSpec.render_depth`, cast once per scene, time and size (~1.5 MB at 512x384)."""
    depth, ids = scene._cast(time, width, height).depth_and_ids()
    depth.flags.writeable = False
    ids.flags.writeable = False
    return depth, ids


_EPS = 1e-6  # hits closer than this along the ray are the camera's own surface, not in front


def _ray_plane(origin: np.ndarray, dirs: np.ndarray, point: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Ray parameters of hits of ``(3, M)`` rays with a plane; ``inf`` where parallel or behind.

    Examples:
        >>> _ray_plane(np.zeros(3), np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]).T,
        ...            np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, -1.0])).tolist()
        [2.0, inf]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t = dot3(point - origin, normal) / vector_times(normal, dirs)
    return np.where(np.isfinite(t) & (t > _EPS), t, np.inf)


def _ray_box(origin: np.ndarray, dirs: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Ray parameters of the first hit of ``(3, M)`` rays with a box centred at 0 (slab method).

    Examples:
        >>> _ray_box(np.array([0.0, 0.0, -3.0]), np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).T,
        ...          np.array([0.5, 0.5, 0.5])).tolist()
        [2.5, inf]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - origin)[:, None] / dirs
        t2 = (half - origin)[:, None] / dirs
    low, high = np.minimum(t1, t2), np.maximum(t1, t2)
    # fmax/fmin ignore the NaN of a ray lying exactly in a slab's face plane.
    near = np.fmax(np.fmax(low[0], low[1]), low[2])
    far = np.fmin(np.fmin(high[0], high[1]), high[2])
    t = np.where(near > _EPS, near, far)
    return np.where((near <= far) & (t > _EPS), t, np.inf)


def _ray_ellipsoid(origin: np.ndarray, dirs: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Ray parameters of the first hit of ``(3, M)`` rays with an ellipsoid centred at 0.

    Scaling by ``1 / radii`` maps it to the unit sphere and leaves the ray parameter unchanged.

    Examples:
        >>> _ray_ellipsoid(np.array([0.0, 0.0, -2.0]), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]).T,
        ...                np.array([1.0, 1.0, 0.5])).tolist()
        [1.5, inf]
    """
    o, d = origin / radii, dirs / radii[:, None]
    a = column_dots(d, d)
    b = vector_times(o, d)
    c = dot3(o, o) - np.float32(1.0)
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    near, far = (-b - root) / a, (-b + root) / a
    t = np.where(near > _EPS, near, far)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _invert_rigid(transforms: np.ndarray) -> np.ndarray:
    """Inverse of rigid ``(..., 4, 4)`` transforms as ``[R^T, -R^T t]``."""
    out = np.zeros_like(transforms)
    rot_t = np.swapaxes(transforms[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, transforms[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def resized_intrinsics(k: np.ndarray, src_width: int, src_height: int, width: int, height: int) -> np.ndarray:
    """K after a centred cover-crop to the target aspect ratio and a resize (cv2 pixel centres).

    Examples:
        >>> K = np.array([[400.0, 0, 255.5], [0, 400.0, 191.5], [0, 0, 1]])
        >>> resized_intrinsics(K, 512, 384, 256, 192).round(3).tolist()
        [[200.0, 0.0, 127.5], [0.0, 200.0, 95.5], [0.0, 0.0, 1.0]]
        >>> resized_intrinsics(K, 512, 384, 384, 384)[0, 2]  # square crop cuts 64 px each side
        np.float64(191.5)
    """
    crop_w = min(src_width, round(src_height * width / height))
    crop_h = min(src_height, round(src_width * height / width))
    x0, y0 = (src_width - crop_w) // 2, (src_height - crop_h) // 2
    sx, sy = width / crop_w, height / crop_h
    out = np.array(k, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (k[0, 2] - x0 + 0.5) * sx - 0.5
    out[1, 2] = (k[1, 2] - y0 + 0.5) * sy - 0.5
    return out


def _f32(values: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """A float32 vector, so per-pixel arithmetic stays in float32."""
    return np.asarray(values, dtype=np.float32)


def _vec(values: np.ndarray | tuple[float, ...]) -> Vec3:
    """Three Python floats (JSON-friendly, hashable)."""
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def _oscillation(
    rng: np.random.Generator,
    offset: tuple[float, ...] | np.ndarray,
    amplitude_low: tuple[float, ...] | np.ndarray,
    amplitude_high: tuple[float, ...] | np.ndarray,
    period_s: tuple[float, float],
) -> Oscillation:
    """A random oscillation with per-axis amplitudes and periods in the given ranges."""
    return Oscillation(
        _vec(offset),
        _vec(rng.uniform(amplitude_low, amplitude_high)),
        _vec(2 * np.pi / rng.uniform(*period_s, 3)),
        _vec(rng.uniform(0.0, 2 * np.pi, 3)),
    )


def _texture(rng: np.random.Generator, low: float, high: float) -> Texture:
    """A random high-contrast texture: colour ``a`` and a darker ``b``, waves of 3-15 cm."""
    color_a = rng.uniform(low, high, 3)
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    wave_vectors = directions * (2 * np.pi / rng.uniform(0.03, 0.15, (3, 1)))
    return Texture(
        _vec(color_a),
        _vec(color_a * rng.uniform(0.2, 0.5)),
        float(rng.uniform(0.04, 0.15)),
        tuple(_vec(v) for v in wave_vectors),
        _vec(rng.uniform(0.0, 2 * np.pi, 3)),
    )


def _skin_texture(rng: np.random.Generator) -> Texture:
    """A low-contrast skin tone, textured enough for a tracker to follow."""
    skin = np.array([224.0, 172.0, 140.0]) * rng.uniform(0.75, 1.05)
    texture = _texture(rng, 0.0, 1.0)
    return replace(texture, color_a=_vec(np.minimum(skin, 255.0)), color_b=_vec(skin * 0.78), checker_m=0.02)
