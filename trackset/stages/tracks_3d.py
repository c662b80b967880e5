"""3D tracks stage (TAPIP3D's role): ``tracks_3d/<vid>.pt`` per video, on a GPU.

The backend gives, per sliding window, the 3D positions of its query points at every step
in the window's camera 0. The camera motion written beside them (``window_poses``) is never
taken from the backend: the stage computes it from the depth stage's extrinsics with the
FORMATS.md convention, ``E_s @ inv(E_{s+k})``, so every backend gets the same, correct
composition (the script pipeline's ``inv(E_s) @ E_{s+k}`` is a known defect).

With object masks (``object_masks.enabled``) the stage picks each window's queries itself,
from the eroded mask of the window's first frame (:mod:`trackset.geometry.query_points`, the
script's ``use_masks``), and the backend tracks those pixels; a clip without a prompt, or
a run without masks, leaves the choice to the backend (valid depth over the whole frame).
The frames are the inpainted ones when human removal is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import (
    DepthCamera,
    Tracks3d,
    read_depth_camera,
    read_masks,
    read_stage_frames,
    write_tracks_3d,
)
from trackset.geometry.camera import window_relative_poses, window_starts
from trackset.geometry.query_points import mask_query_pixels
from trackset.stages.backends import Tracks3dBackend
from trackset.stages.config import Tracks3dConfig
from trackset.stages.model_stage import ModelStage


class Tracks3dStage(ModelStage[Tracks3dBackend]):
    """Sliding-window 3D point tracks and the camera motion of each window."""

    name: ClassVar[StageName] = "tracks_3d"
    config: Tracks3dConfig

    def outputs(self, video_id: str) -> list[Path]:
        return [self.work.tracks_3d(video_id)]

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        frames, meta = read_stage_frames(self.work, vid, self.config.clean)
        depth = read_depth_camera(self.work.vipe(vid), vid, num_frames=meta.num_frames)
        queries = self.mask_queries(vid, depth, frames.shape[:3]) if self.config.masked else None
        tracks = self.loaded_backend().infer(video, frames, meta, depth, queries)
        path = self.work.tracks_3d(vid)
        self.check_result(video, Path(video.source), tracks, meta.num_frames)  # names the source
        length = self.config.section.window_length
        starts = np.array([start for start, _ in tracks.windows], dtype=np.int64)
        poses = window_relative_poses(depth.extrinsics, starts, length)
        write_tracks_3d(path, vid, tracks, list(poses))
        info: dict[str, float | int | str] = {
            "frames": meta.num_frames,
            "windows": len(tracks.windows),
            "points": int(sum(points.shape[1] for points in tracks.tracks)),
        }
        if self.config.masked:  # a clip without a prompt is tracked unmasked: count it
            info["unmasked"] = int(queries is None)
            info["windows_without_queries"] = 0 if queries is None else sum(len(q) == 0 for q in queries)
        return info

    def mask_queries(self, video_id: str, depth: DepthCamera, shape: tuple[int, ...]) -> list[np.ndarray] | None:
        """Each window's query pixels from its first frame's object mask; None for a clip
        without a prompt (the backend then samples the whole frame)."""
        section = self.config.section
        num_frames, height, width = shape
        objects = read_masks(self.work.object_masks(video_id), video_id, "object_masks", num_frames, height, width)
        if objects.masks is None:
            return None
        valid = np.isfinite(depth.depths) & (depth.depths > 0)
        return [
            mask_query_pixels(
                objects.masks[start],
                valid[start],
                erosion_px=section.mask_erosion_px,
                method=section.sampling_method,
                count=section.points_per_window,
                grid_size=section.grid_size,
                min_mask_percent=section.min_mask_percent,
                seed=int(start),
            )
            for start in window_starts(num_frames, section.window_length, section.stride)
        ]

    def check_result(self, video: VideoRef, path: Path, tracks: Tracks3d, num_frames: int) -> None:
        """Every window is a full window of the configured length with finite points."""
        length = self.config.section.window_length
        if tracks.num_frames != num_frames or len(tracks.windows) != len(tracks.tracks):
            reason = (
                f"backend returned {len(tracks.tracks)} track windows for {len(tracks.windows)} ranges "
                f"over {tracks.num_frames} frames; the video has {num_frames}"
            )
            raise BadInputError(video.video_id, self.name, path, reason)
        for index, ((start, end), points) in enumerate(zip(tracks.windows, tracks.tracks, strict=True)):
            if end - start != length or not 0 <= start < end <= num_frames:
                reason = f"window {index} = ({start}, {end}) is not a full window of {length} frames"
                raise BadInputError(video.video_id, self.name, path, reason)
            self.check_shape(video, path, f"tracks[{index}]", points, (length, points.shape[1], 3))
            if not np.isfinite(points).all():
                raise BadInputError(video.video_id, self.name, path, f"backend returned non-finite tracks[{index}]")
        self.check_shape(video, path, "intrinsics", np.asarray(tracks.intrinsics), (3, 3))
