"""Synthetic stand-ins for ViPE, TAPIP3D and WiLoR, exact up to optional noise.

(SAM3, DiffuEraser and CoTracker have theirs in :mod:`~trackset.synthetic.masks`,
:mod:`~trackset.synthetic.inpaint` and :mod:`~trackset.synthetic.tracks_2d`.)

Each backend implements its Protocol of :mod:`trackset.stages.backends`, reads the scene
sidecar of ``video.source`` (:func:`~trackset.synthetic.corpus.load_scene_for`) and evaluates
the scene at the frames' source times (``FramesMeta.timestamps_s``), so whatever resampling
preprocessing did, the outputs describe exactly the content of each kept frame. Frames of
another size than the scene's get the correspondingly cropped and scaled intrinsics.

Every backend spends what its stage's :class:`~trackset.config.settings.SyntheticStageCost` says
(:class:`~trackset.synthetic.cost.SimulatedCost`), through the allocator it was given.

Noise (``synthetic.noise_std``, metres) is seeded from the video id, the stage and, for
tracks, the window start, so a rerun reproduces it bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
from pydantic import ValidationError

from trackset.config.settings import (
    CleanFramesSettings,
    DepthCameraSettings,
    HandsSettings,
    HumanMasksSettings,
    ObjectMasksSettings,
    SyntheticModelSettings,
    Tracks2dSettings,
    Tracks3dSettings,
)
from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import HAND_SIDES, DepthCamera, FramesMeta, Hand, HandPoses, Tracks3d
from trackset.geometry import camera as geometry
from trackset.gpu.allocator import Allocator
from trackset.synthetic.corpus import load_scene_for, sidecar_path
from trackset.synthetic.cost import SimulatedCost
from trackset.synthetic.scene import HAND_IDS, STATIC_ID, SceneSpec

# Separate noise streams per stage, so depth noise and track noise are independent.
_STAGE_STREAM: dict[str, int] = {
    "depth_camera": 1,
    "tracks_3d": 2,
    "hands": 3,
    "human_masks": 4,
    "clean_frames": 5,
    "object_masks": 6,
    "tracks_2d": 7,
}


def frame_times(meta: FramesMeta, num_frames: int, fallback_fps: float) -> np.ndarray:
    """Source time of each frame: ``meta.timestamps_s`` when it has one per frame, else ``k / fps``.

    Frames read from the script pipeline's PNGs carry no timestamps; they were sampled at a
    constant rate, so ``k / fps`` (the meta's, else the scene's) is their time.

    Examples:
        >>> meta = FramesMeta("00000", 3, 10.0, 4, 4, timestamps_s=[0.0, 0.1, 0.25])
        >>> frame_times(meta, 3, 30.0).tolist()
        [0.0, 0.1, 0.25]
        >>> frame_times(FramesMeta("00000", 2, 0.0, 4, 4), 2, 5.0).tolist()
        [0.0, 0.2]
    """
    if len(meta.timestamps_s) == num_frames:
        return np.asarray(meta.timestamps_s, dtype=np.float64)
    return np.arange(num_frames) / (meta.fps or fallback_fps)


def video_rng(video_id: str, stage: str, *keys: int) -> np.random.Generator:
    """Random stream for one video, stage and optional sub-keys (e.g. a window start).

    Examples:
        >>> a = video_rng("00007", "tracks_3d", 3).normal()
        >>> a == video_rng("00007", "tracks_3d", 3).normal(), a == video_rng("00007", "tracks_3d", 4).normal()
        (True, False)
    """
    return np.random.default_rng([int(video_id), _STAGE_STREAM[stage], *keys])


def sample_query_pixels(
    object_id: np.ndarray,
    depth: np.ndarray,
    count: int,
    rng: np.random.Generator,
    preferred_share: float = 0.6,
    hand_radius_px: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of up to ``count`` distinct query pixels, favouring what moves.

    The script pipeline samples queries "from object masks" (hands and the objects they
    manipulate). Here the mask is every moving body plus a band of ``hand_radius_px`` around
    each hand; about ``preferred_share`` of the points come from it when it is not empty, the
    rest from the static background, so camera motion stays observable. Only pixels with
    valid depth are eligible. Sampling without replacement uses the Gumbel top-k trick, one
    vectorised pass over the image.

    Examples:
        >>> ids = np.zeros((4, 4), np.int32); ids[0, 0] = 1
        >>> rows, cols = sample_query_pixels(ids, np.ones((4, 4), np.float32), 3, np.random.default_rng(0))
        >>> len(rows), len(set(zip(rows.tolist(), cols.tolist())))
        (3, 3)
    """
    valid = np.isfinite(depth) & (depth > 0)
    hands = np.isin(object_id, list(HAND_IDS.values())).astype(np.uint8)
    kernel = np.ones((2 * hand_radius_px + 1, 2 * hand_radius_px + 1), np.uint8)
    preferred = ((object_id > STATIC_ID) | (cv2.dilate(hands, kernel) > 0)) & valid
    background = valid & ~preferred
    n_preferred, n_background = int(preferred.sum()), int(background.sum())
    weights = background.astype(np.float64)
    if n_preferred:
        share = preferred_share / (1 - preferred_share) * n_background / n_preferred if n_background else 1.0
        weights[preferred] = share
    take = min(count, n_preferred + n_background)
    if take == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with np.errstate(divide="ignore"):
        keys = np.log(weights.ravel()) + rng.gumbel(size=weights.size)
    chosen = np.sort(np.argpartition(-keys, take - 1)[:take])
    rows, cols = np.unravel_index(chosen, depth.shape)
    return rows.astype(np.int64), cols.astype(np.int64)


class _SyntheticBackend:
    """Lifecycle and scene lookup shared by the synthetic backends."""

    stage: ClassVar[StageName]

    def __init__(
        self,
        section: (
            DepthCameraSettings
            | Tracks3dSettings
            | HandsSettings
            | HumanMasksSettings
            | CleanFramesSettings
            | ObjectMasksSettings
            | Tracks2dSettings
        ),
        synthetic: SyntheticModelSettings,
        allocator: Allocator | None = None,
    ) -> None:
        self.section = section
        self.synthetic = synthetic
        self.cost = SimulatedCost(synthetic.cost, allocator)

    def load(self) -> None:
        """Take the simulated model's memory and load time."""
        self.cost.load()

    def unload(self) -> None:
        """Give the simulated model's memory back."""
        self.cost.unload()

    def scene(self, video: VideoRef) -> SceneSpec:
        """The video's scene; a missing or malformed sidecar fails that video only."""
        path = sidecar_path(Path(video.source))
        try:
            return load_scene_for(video.source)
        except FileNotFoundError:
            reason = (
                f"no scene sidecar {path.name}: synthetic backends need the ground truth written by "
                f"make_corpus (set {self.stage}.backend: real for real videos)"
            )
            raise BadInputError(video.video_id, self.stage, path, reason) from None
        except ValidationError as exc:
            reason = f"malformed scene sidecar: {exc}".splitlines()[0]
            raise BadInputError(video.video_id, self.stage, path, reason) from None

    @property
    def noise_std(self) -> float:
        return self.synthetic.noise_std


class SyntheticDepthCamera(_SyntheticBackend):
    """ViPE's role: the scene's z-depth (0 where nothing is hit), K and world->camera poses.

    Depth is not clipped here: clipping to the dataset's range is the H5 stage's job, for
    every backend alike.
    """

    stage: ClassVar[StageName] = "depth_camera"

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta) -> DepthCamera:
        scene = self.scene(video)
        num_frames, height, width = frames.shape[:3]
        times = frame_times(meta, num_frames, scene.fps)
        with self.cost.video(num_frames):
            depths = np.stack([scene.render_depth(float(t), width, height)[0] for t in times])
            if self.noise_std > 0:
                noise = video_rng(video.video_id, self.stage).standard_normal(depths.shape, dtype=np.float32)
                depths += np.where(depths > 0, np.float32(self.noise_std) * noise, np.float32(0))
            intrinsics = np.broadcast_to(scene.intrinsics_for(width, height), (num_frames, 3, 3)).copy()
            return DepthCamera(depths, intrinsics, scene.extrinsics(times))


class SyntheticTracks3d(_SyntheticBackend):
    """TAPIP3D's role: true 3D tracks of query points, per window, in the window's camera 0.

    For a window starting at frame s, the query pixels are the stage's (sampled from the
    object masks) or, without them, sampled on frame s (:func:`sample_query_pixels`); they
    are back-projected with the true depth and attached to the body they lie on (body-frame
    coordinates; the background is the static world). Step k of the window is
    ``E_s @ M(t_{s+k}) @ local``: a static point has exactly zero displacement, a point on a
    moving box follows the box.
    """

    stage: ClassVar[StageName] = "tracks_3d"
    section: Tracks3dSettings

    def infer(
        self,
        video: VideoRef,
        frames: np.ndarray,
        meta: FramesMeta,
        depth: DepthCamera,
        queries: list[np.ndarray] | None = None,
    ) -> Tracks3d:
        scene = self.scene(video)
        num_frames, height, width = frames.shape[:3]
        section = self.section
        length = section.window_length
        times = frame_times(meta, num_frames, scene.fps)
        starts = geometry.window_starts(num_frames, length, section.stride)
        k = scene.intrinsics_for(width, height)
        by_id = scene.body_poses(times)
        body_ids = np.array(sorted(by_id))
        poses = np.stack([by_id[i] for i in body_ids])  # (B, T, 4, 4) body->world
        extrinsics, cameras = scene.extrinsics(times), scene.camera_poses(times)
        with self.cost.video(num_frames):
            tracks = []
            for index, start in enumerate(starts):  # one window at a time, each vectorised over its points
                depth_s, ids_s = scene.render_depth(float(times[start]), width, height)
                rng = video_rng(video.video_id, self.stage, int(start))
                if queries is None:
                    rows, cols = sample_query_pixels(ids_s, depth_s, section.points_per_window, rng)
                else:
                    cols, rows = queries[index][:, 0], queries[index][:, 1]
                    hit = depth_s[rows, cols] > 0  # a ray that hits nothing has no point to track
                    rows, cols = rows[hit], cols[hit]
                cam = geometry.backproject(cols, rows, depth_s[rows, cols].astype(np.float64), k)
                world = geometry.matmul(cam, cameras[start, :3, :3].T) + cameras[start, :3, 3]
                body = np.searchsorted(body_ids, ids_s[rows, cols])
                to_body = geometry.invert_rigid(poses[body, start])  # (n, 4, 4)
                local = np.einsum("nij,nj->ni", to_body[:, :3, :3], world) + to_body[:, :3, 3]
                steps = poses[body[:, None], start + np.arange(length)[None, :]]  # (n, L, 4, 4)
                world_k = np.einsum("nkij,nj->kni", steps[..., :3, :3], local) + np.swapaxes(steps[..., :3, 3], 0, 1)
                points = geometry.matmul(world_k, extrinsics[start, :3, :3].T) + extrinsics[start, :3, 3]  # (L, n, 3)
                if self.noise_std > 0:
                    points = points + rng.normal(0.0, self.noise_std, points.shape)
                tracks.append(points.astype(np.float32))
        return Tracks3d(
            windows=[(int(s), int(s) + length) for s in starts],
            tracks=tracks,
            intrinsics=k,
            num_frames=num_frames,
            window_length=length,
            stride=section.stride,
            grid_size=0,
            resolution=(height, width),
        )


class SyntheticHands(_SyntheticBackend):
    """WiLoR's role: each hand's wrist pose, joint rotations, joints and shape, per frame.

    Everything is in the camera of frame t (``E_t @ W_world(t)``), NaN where the wrist is not
    in view. ``betas`` is the median over valid frames, i.e. the hand's constant shape.
    """

    stage: ClassVar[StageName] = "hands"

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, depth: DepthCamera) -> HandPoses:
        scene = self.scene(video)
        num_frames, height, width = frames.shape[:3]
        times = frame_times(meta, num_frames, scene.fps)
        extrinsics = scene.extrinsics(times)
        with self.cost.video(num_frames):
            hands = {side: _hand_in_camera(scene, side, times, extrinsics, width, height) for side in HAND_SIDES}
        return HandPoses(hands["left"], hands["right"], scene.intrinsics_for(width, height), num_frames)


def _hand_in_camera(
    scene: SceneSpec, side: str, times: np.ndarray, extrinsics: np.ndarray, width: int, height: int
) -> Hand:
    """One hand's per-frame arrays in each frame's camera; all NaN if the scene lacks it."""
    num_frames = times.size
    spec = scene.hand(side)
    if spec is None:
        return Hand(
            valid=np.zeros(num_frames, dtype=bool),
            wrist_pose=np.full((num_frames, 4, 4), np.nan),
            hand_pose=np.full((num_frames, 15, 3, 3), np.nan),
            joints_3d=np.full((num_frames, 21, 3), np.nan),
            betas=np.full(10, np.nan),
        )
    valid = scene.hand_valid(side, times, width, height)
    wrist = geometry.matmul(extrinsics, scene.wrist_poses_world(side, times))
    joints = np.einsum("tij,nj->tni", wrist[:, :3, :3], scene.joint_offsets(side)) + wrist[:, None, :3, 3]
    hand_pose = scene.finger_rotations(side, times)
    for array in (wrist, joints, hand_pose):
        array[~valid] = np.nan
    betas = np.asarray(spec.betas, dtype=np.float64) if valid.any() else np.full(10, np.nan)
    return Hand(valid=valid, wrist_pose=wrist, hand_pose=hand_pose, joints_3d=joints, betas=betas)
