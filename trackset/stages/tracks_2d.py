"""2D tracks stage (the script's ``cotracker``): ``tracks_2d/<vid>.pt`` per video, on a GPU.

Runs for ``h5.track_type: 2d``. Each sliding window (``tracks_2d.window_length``, ``stride``)
is tracked on its own from a ``grid_size x grid_size`` grid of queries on its first frame,
kept inside that frame's object mask: with ``subtract_human_masks`` the person masks,
dilated by ``human_mask_dilation_px``, are cut out of it first, then it is eroded by
``mask_erosion_px``, in the order ``process_cotracker.py`` does it. The backend keeps a point
only when it is visible (at least ``visibility_threshold``) at every step of its window.
A clip without a prompt, or a run without object masks, gets the grid over the whole frame.
Positions are pixels of the preprocessed frames; the H5 stage maps them into its crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import Tracks2d, read_masks, read_stage_frames, write_tracks_2d
from trackset.geometry.camera import window_starts
from trackset.geometry.query_points import dilate, erode, grid_pixels
from trackset.stages.backends import Tracks2dBackend
from trackset.stages.config import Tracks2dConfig
from trackset.stages.model_stage import ModelStage


class Tracks2dStage(ModelStage[Tracks2dBackend]):
    """Sliding-window 2D point tracks on a grid inside the object masks."""

    name: ClassVar[StageName] = "tracks_2d"
    config: Tracks2dConfig

    def outputs(self, video_id: str) -> list[Path]:
        return [self.work.tracks_2d(video_id)]

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        section = self.config.section
        frames, meta = read_stage_frames(self.work, vid, self.config.clean)
        num_frames = frames.shape[0]
        starts = window_starts(num_frames, section.window_length, section.stride)
        windows = [(int(s), int(s) + section.window_length) for s in starts]
        allowed = self.allowed_pixels(vid, frames.shape[:3], [start for start, _ in windows])
        queries = [grid_pixels(pixels, section.grid_size) for pixels in allowed]
        tracks = self.loaded_backend().infer(video, frames, meta, windows, queries)
        self.check_result(video, Path(video.source), tracks, windows, queries)
        write_tracks_2d(self.work.tracks_2d(vid), vid, tracks)
        return {
            "frames": num_frames,
            "windows": len(windows),
            "queries": int(sum(len(q) for q in queries)),
            "points": int(sum(points.shape[1] for points in tracks.tracks)),
        }

    def allowed_pixels(self, video_id: str, shape: tuple[int, ...], starts: list[int]) -> list[np.ndarray]:
        """Per window start, the ``(H, W)`` pixels where a query may go (module docstring)."""
        section = self.config.section
        objects = people = None
        if self.config.masked:
            objects = read_masks(self.work.object_masks(video_id), video_id, "object_masks", *shape).masks
        if self.config.subtract:
            people = read_masks(self.work.human_masks(video_id), video_id, "human_masks", *shape).masks
        allowed = []
        for start in starts:
            pixels = np.ones(shape[1:], dtype=bool) if objects is None else objects[start].copy()
            if people is not None:
                pixels &= ~dilate(people[start], section.human_mask_dilation_px)
            allowed.append(erode(pixels, section.mask_erosion_px))
        return allowed

    def check_result(
        self,
        video: VideoRef,
        path: Path,
        tracks: Tracks2d,
        windows: list[tuple[int, int]],
        queries: list[np.ndarray],
    ) -> None:
        """One finite ``(L, N, 2)`` per window asked for, never more points than queries."""
        if tracks.windows != windows or len(tracks.tracks) != len(windows):
            reason = f"backend returned {len(tracks.tracks)} windows {tracks.windows[:3]}..., expected {len(windows)}"
            raise BadInputError(video.video_id, self.name, path, reason)
        length = self.config.section.window_length
        for index, (points, asked) in enumerate(zip(tracks.tracks, queries, strict=True)):
            self.check_shape(video, path, f"tracks[{index}]", points, (length, points.shape[1], 2))
            if points.shape[1] > len(asked) or not np.isfinite(points).all():
                reason = f"tracks[{index}] has {points.shape[1]} points for {len(asked)} queries, or non-finite ones"
                raise BadInputError(video.video_id, self.name, path, reason)
