"""H5 build stage: one ``<vid>.hdf5`` and its statistics partials per video, on CPU.

Completion lives in the dataset directory, not in the work directory: the partials file
holds the H5's fingerprint. A user may delete terabytes of intermediates once the dataset
is built, and a later run must still recognise every finished video.

Inputs written by the script pipeline (an import) are first converted to trackset's
conventions (:func:`trackset.formats.script_conventions.to_trackset_conventions`); which pipeline wrote a file
is part of its content, so the content hash of an import already covers it.

``h5.track_type: 2d`` writes the script's 2D layout from the 2D tracks instead
(:mod:`trackset.formats.h5_layout_2d`). With ``h5.include_text`` the clip's description in
``metadata.csv`` becomes ``root/text``; a clip without one fails with the file and clip
named (fix the row and rerun: that clip alone is rebuilt, since its text is part of its
fingerprint), never a file that silently has no text.

Every file carries its provenance as attributes of its root: trackset's version, each
stage's backend, model and settings, the video's id, content hash and fingerprint
(:mod:`trackset.stages.provenance`); a file built from the script pipeline's intermediates
says so instead of naming stages that did not run here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.clip_metadata import MetadataError, find_row, metadata_path
from trackset.formats.h5_layout import build_arrays, video_moments, write_h5
from trackset.formats.h5_layout_2d import build_arrays_2d, video_moments_2d, write_h5_2d
from trackset.formats.intermediates import (
    FramesMeta,
    read_depth_camera,
    read_frames,
    read_hand_poses,
    read_tracks_2d,
    read_tracks_3d,
)
from trackset.formats.markers import FileStamp, file_damage
from trackset.formats.script_conventions import to_trackset_conventions
from trackset.formats.statistics import Moments, VideoPartials
from trackset.stages.base import Stage
from trackset.stages.config import H5BuildConfig
from trackset.stages.provenance import file_attributes


@dataclass
class H5Content:
    """One video's H5 file before it is written, whichever its track type.

    Attributes:
        write: writes the file atomically, given its path, ``h5.compression``, ``root/text``
            and the root attributes (its provenance).
        moments: the statistics' per-video moments of the values it writes.
        num_frames: ``root/num_frames``.
        query_coords: each window's query points (counted in the record).
        info: what the record says besides frames, windows, tracks per frame and text.
        imported: built from the script pipeline's intermediates (its provenance names them).
    """

    write: Callable[[Path, str, str | None, dict[str, str | int]], None]
    moments: dict[str, Moments]
    num_frames: int
    query_coords: list[np.ndarray]
    info: dict[str, float | int | str] = field(default_factory=dict)
    imported: bool = False


class H5BuildStage(Stage[H5BuildConfig]):
    """Build a video's H5 file and partial moments from its intermediates."""

    name: ClassVar[StageName] = "h5_build"

    def outputs(self, video_id: str) -> list[Path]:
        return [self.dataset.h5(video_id), self.dataset.partials(video_id)]

    def setup(self) -> None:
        """One OpenCV thread per worker: parallelism comes from workers, not from cv2's pool,
        which would oversubscribe the cores when several workers resize at once."""
        cv2.setNumThreads(1)

    def is_done(self, video: VideoRef) -> bool:
        """True when its partials carry the current fingerprint and the H5 the size they
        recorded (and its checksum, with ``run.verify_checksums``).

        The partials are the H5's marker: damaged ones, or an H5 that is not what they
        recorded, are reported and removed (:meth:`~trackset.stages.base.Stage.damaged`).
        """
        h5_path, partials_path = self.outputs(video.video_id)
        try:
            partials = VideoPartials.read(partials_path)
            if partials.fingerprint != self.fingerprint(video):
                return False
            reason = file_damage(h5_path, partials.h5, self.config.verify_checksums)
        except FileNotFoundError:  # no partials or no H5: not built, or its rebuild did not finish
            return False
        except ValueError as exc:
            return self.damaged(video, partials_path, str(exc))
        return True if reason is None else self.damaged(video, partials_path, reason)

    def text(self, video: VideoRef) -> str | None:
        """The clip's ``root/text`` when ``h5.include_text`` is set, else None.

        Raises:
            BadInputError: naming ``metadata.csv`` and the clip, when it is missing, unusable
                or has no description for this clip.
        """
        if not self.config.section.include_text:
            return None
        config = self.config
        path = metadata_path(config.metadata.csv, config.paths.videos_dir)
        try:
            row = find_row(video, path, config.paths.videos_dir, config.metadata.clip_id)
        except FileNotFoundError:
            reason = "h5.include_text is set but there is no such file"
            raise BadInputError(video.video_id, self.name, path, reason) from None
        except MetadataError as exc:
            raise BadInputError(video.video_id, self.name, path, exc.reason) from None
        if row is None or not row.text:
            what = "no row" if row is None else f"an empty 'text' for clip_id {row.clip_id!r}"
            reason = (
                f"{what} for {Path(video.source).name} (metadata.clip_id: {config.metadata.clip_id}); "
                "add its description, or set h5.include_text: false"
            )
            raise BadInputError(video.video_id, self.name, path, reason)
        return row.text

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        # A stale H5 would be read by training but left out of the statistics: drop it (its
        # partials first) before rebuilding, so a failed rebuild leaves nothing that looks done.
        for stale in reversed(self.outputs(vid)):
            stale.unlink(missing_ok=True)
        text = self.text(video)
        frames, meta = read_frames(self.work, vid)
        build = self.content_2d if self.config.section.track_type == "2d" else self.content_3d
        content = build(vid, frames, meta)
        h5_path, _ = self.outputs(vid)
        attributes = file_attributes(self.config.provenance, video, self.fingerprint(video), content.imported)
        content.write(h5_path, self.config.section.compression, text, attributes)
        self.write_partials(video, content.moments, FileStamp.of(h5_path))
        windows = len(content.query_coords)
        points = sum(q.shape[0] for q in content.query_coords)
        return {
            "frames": content.num_frames,
            "windows": windows,
            "tracks_per_frame": round(points / max(windows, 1), 1),
            **content.info,
            "text": int(text is not None),
        }

    def content_3d(self, vid: str, frames: np.ndarray, meta: FramesMeta) -> H5Content:
        """The 3D layout from the frames, depth and camera, 3D tracks and hands."""
        depth = read_depth_camera(self.work.vipe(vid), vid, num_frames=meta.num_frames, depth_dtype=None)
        tracks = read_tracks_3d(self.work.tracks_3d(vid), vid, meta.num_frames)
        hands_path = self.work.hand_poses(vid)
        hands = read_hand_poses(hands_path, vid, meta.num_frames) if hands_path.is_file() else None
        conventions = tracks.conventions
        tracks, hands = to_trackset_conventions(vid, tracks, hands, depth.extrinsics, self.work.tracks_3d(vid))
        arrays = build_arrays(vid, frames, depth, tracks, hands, self.config.section, self.config.window_length)
        info: dict[str, float | int | str] = {
            "hands": int(hands is not None),
            "hand_windows_out_of_image": arrays.hand_windows_out_of_image,
            "input_conventions": conventions,
        }
        return H5Content(
            lambda path, compression, text, attributes: write_h5(path, arrays, compression, text, attributes),
            video_moments(arrays),
            arrays.num_frames,
            arrays.query_coords,
            info,
            imported=conventions == "script",
        )

    def content_2d(self, vid: str, frames: np.ndarray, meta: FramesMeta) -> H5Content:
        """The 2D layout from the frames and the 2D tracks."""
        tracks = read_tracks_2d(self.work.tracks_2d(vid), vid, meta.num_frames)
        arrays = build_arrays_2d(frames, tracks, self.config.section, self.config.window_length)
        return H5Content(
            lambda path, compression, text, attributes: write_h5_2d(path, arrays, compression, text, attributes),
            video_moments_2d(arrays),
            arrays.num_frames,
            arrays.query_coords,
        )

    def write_partials(self, video: VideoRef, moments: dict[str, Moments], h5: FileStamp) -> None:
        """Write the partials last: their fingerprint and the H5's stamp mark the video complete."""
        h5_path, partials_path = self.outputs(video.video_id)
        partials = VideoPartials(video_id=video.video_id, fingerprint=self.fingerprint(video), **moments, h5=h5)
        try:
            partials.write(partials_path)
        except BaseException:
            # Without its partials the H5 would be read by training but left out of the
            # statistics (a full disk, say): take it back, so the video is simply not done.
            h5_path.unlink(missing_ok=True)
            raise

    def mark_done(self, video: VideoRef) -> None:
        """Nothing to add: the partials file written by :meth:`process` is the marker."""
