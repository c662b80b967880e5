"""Synthetic stand-in for CoTracker3: the true image positions of each window's queries.

A query pixel of frame s is back-projected with the scene's true depth, attached to the
body it lies on, moved with that body and projected with the camera of every step (2D
tracks live in each frame's own image, unlike 3D tracks, which stay in camera 0). A point
counts as visible at a step when it is in front of the camera, inside the image and the
scene shows its body at its (rounded) pixel there; with ``tracks_2d.visibility_threshold``
above 0 a point must be visible at every step to be kept, as CoTracker's is.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from trackset.config.settings import Tracks2dSettings
from trackset.domain import StageName, VideoRef
from trackset.formats.intermediates import FramesMeta, Tracks2d
from trackset.geometry import camera as geometry
from trackset.synthetic.backends import _SyntheticBackend, frame_times


class SyntheticTracks2d(_SyntheticBackend):
    """CoTracker's role, exact (module docstring)."""

    stage: ClassVar[StageName] = "tracks_2d"
    section: Tracks2dSettings

    def infer(
        self,
        video: VideoRef,
        frames: np.ndarray,
        meta: FramesMeta,
        windows: list[tuple[int, int]],
        queries: list[np.ndarray],
    ) -> Tracks2d:
        scene = self.scene(video)
        num_frames, height, width = frames.shape[:3]
        times = frame_times(meta, num_frames, scene.fps)
        k = scene.intrinsics_for(width, height)
        by_id = scene.body_poses(times)
        body_ids = np.array(sorted(by_id))
        poses = np.stack([by_id[i] for i in body_ids])  # (B, T, 4, 4) body->world
        extrinsics, cameras = scene.extrinsics(times), scene.camera_poses(times)
        rendered: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def render(frame: int) -> tuple[np.ndarray, np.ndarray]:
            if frame not in rendered:
                rendered[frame] = scene.render_depth(float(times[frame]), width, height)
            return rendered[frame]

        tracks = []
        with self.cost.video(num_frames):
            for (start, end), pixels in zip(windows, queries, strict=True):
                depth_s, ids_s = render(start)
                cols, rows = pixels[:, 0], pixels[:, 1]
                hit = depth_s[rows, cols] > 0
                cols, rows = cols[hit], rows[hit]
                cam = geometry.backproject(cols, rows, depth_s[rows, cols].astype(np.float64), k)
                world = geometry.matmul(cam, cameras[start, :3, :3].T) + cameras[start, :3, 3]
                body_index = np.searchsorted(body_ids, ids_s[rows, cols])
                to_body = geometry.invert_rigid(poses[body_index, start])
                local = np.einsum("nij,nj->ni", to_body[:, :3, :3], world) + to_body[:, :3, 3]
                positions, visible = [], np.ones(len(local), dtype=bool)
                for frame in range(start, end):
                    step = poses[body_index, frame]
                    world_k = np.einsum("nij,nj->ni", step[:, :3, :3], local) + step[:, :3, 3]
                    cam_k = geometry.matmul(world_k, extrinsics[frame, :3, :3].T) + extrinsics[frame, :3, 3]
                    z = cam_k[:, 2]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        x = k[0, 0] * cam_k[:, 0] / z + k[0, 1] * cam_k[:, 1] / z + k[0, 2]
                        y = k[1, 1] * cam_k[:, 1] / z + k[1, 2]
                    inside = (z > 0) & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
                    shown = np.zeros(len(local), dtype=bool)
                    col_k = np.clip(np.rint(np.nan_to_num(x)), 0, width - 1).astype(np.int64)
                    row_k = np.clip(np.rint(np.nan_to_num(y)), 0, height - 1).astype(np.int64)
                    shown[inside] = render(frame)[1][row_k[inside], col_k[inside]] == body_ids[body_index[inside]]
                    visible &= shown
                    positions.append(np.stack([x, y], axis=1))
                points = np.stack(positions) if positions else np.zeros((0, len(local), 2))
                keep = visible if self.section.visibility_threshold > 0 else np.isfinite(points).all(axis=(0, 2))
                tracks.append(points[:, keep].astype(np.float32))
        return Tracks2d(
            windows=list(windows),
            tracks=tracks,
            num_frames=num_frames,
            window_length=self.section.window_length,
            stride=self.section.stride,
            grid_size=self.section.grid_size,
            resolution=(height, width),
        )
