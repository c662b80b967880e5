"""H5 build stage: one ``<vid>.hdf5`` and its statistics partials per video, on CPU.

Completion lives in the dataset directory, not in the work directory: the partials file
holds the H5's fingerprint. A user may delete terabytes of intermediates once the dataset
is built, and a later run must still recognise every finished video.

Inputs written by the script pipeline (an import) are first converted to trackset's
conventions (:func:`trackset.importer.to_trackset_conventions`); which pipeline wrote a file
is part of its content, so the content hash of an import already covers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import cv2

from trackset.domain import StageName, VideoRef
from trackset.h5_layout import build_arrays, video_moments, write_h5
from trackset.importer import to_trackset_conventions
from trackset.intermediates import read_depth_camera, read_frames, read_hand_poses, read_tracks_3d
from trackset.stages.base import Stage
from trackset.stages.config import H5BuildConfig
from trackset.statistics import VideoPartials


class H5BuildStage(Stage[H5BuildConfig]):
    """Build a video's H5 file and partial moments from its intermediates."""

    name: ClassVar[StageName] = "h5_build"

    def outputs(self, video_id: str) -> list[Path]:
        return [self.dataset.h5(video_id), self.dataset.partials(video_id)]

    def setup(self) -> None:
        """One OpenCV thread per worker: parallelism comes from workers, not from cv2's pool,
        which would oversubscribe the cores when several workers resize at once."""
        cv2.setNumThreads(1)

    def fingerprint(self, video: VideoRef) -> str:
        return self.config.fingerprint(video.content_hash)

    def is_done(self, video: VideoRef) -> bool:
        """True when the H5 exists and its partials carry the current fingerprint."""
        h5_path, partials_path = self.outputs(video.video_id)
        if not h5_path.is_file() or not partials_path.is_file():
            return False
        try:
            return VideoPartials.read(partials_path).fingerprint == self.fingerprint(video)
        except ValueError:
            return False

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        # A stale H5 would be read by training but left out of the statistics: drop it (its
        # partials first) before rebuilding, so a failed rebuild leaves nothing that looks done.
        for stale in reversed(self.outputs(vid)):
            stale.unlink(missing_ok=True)
        frames, meta = read_frames(self.work, vid)
        depth = read_depth_camera(self.work.vipe(vid), vid, num_frames=meta.num_frames, depth_dtype=None)
        tracks = read_tracks_3d(self.work.tracks_3d(vid), vid, meta.num_frames)
        hands_path = self.work.hand_poses(vid)
        hands = read_hand_poses(hands_path, vid, meta.num_frames) if hands_path.is_file() else None
        conventions = tracks.conventions
        tracks, hands = to_trackset_conventions(vid, tracks, hands, depth.extrinsics, self.work.tracks_3d(vid))
        arrays = build_arrays(vid, frames, depth, tracks, hands, self.config.section, self.config.window_length)
        moments = video_moments(arrays)
        h5_path, partials_path = self.outputs(vid)
        write_h5(h5_path, arrays, self.config.section.compression)
        # Partials are written last: their fingerprint is what marks the video complete.
        try:
            VideoPartials(video_id=vid, fingerprint=self.fingerprint(video), **moments).write(partials_path)
        except BaseException:
            # Without its partials the H5 would be read by training but left out of the
            # statistics (a full disk, say): take it back, so the video is simply not done.
            h5_path.unlink(missing_ok=True)
            raise
        points = sum(q.shape[0] for q in arrays.query_coords)
        return {
            "frames": arrays.num_frames,
            "windows": len(arrays.starts),
            "tracks_per_frame": round(points / max(len(arrays.starts), 1), 1),
            "hands": int(hands is not None),
            "hand_windows_out_of_image": arrays.hand_windows_out_of_image,
            "input_conventions": conventions,
        }

    def mark_done(self, video: VideoRef) -> None:
        """Nothing to add: the partials file written by :meth:`process` is the marker."""
