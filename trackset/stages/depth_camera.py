"""Depth and camera stage (ViPE's role): ``vipe/<vid>.npz`` per video, on a GPU.

Whatever the backend, the stage validates its output and applies the FORMATS.md rules
itself, so a real and a synthetic backend are judged alike.

The flat-frame rule: a frame is *flat* when the standard deviation of its valid depth
pixels (finite and > 0) is below ``depth_camera.flat_std_m``; a video with more than
``depth_camera.max_flat_fraction`` flat frames, or with no valid depth at all, is rejected
with :class:`~trackset.errors.UnusableVideoError` (typed, never retried). Invalid pixels are
left out of the deviation because they are "no measurement", not "0 m away": counting them
would make a half-empty depth map look richly structured.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError, UnusableVideoError
from trackset.formats.intermediates import DepthCamera, read_frames, write_depth_camera
from trackset.stages.backends import DepthCameraBackend
from trackset.stages.config import DepthCameraConfig
from trackset.stages.model_stage import ModelStage


def frame_depth_std(depths: np.ndarray) -> np.ndarray:
    """``(T,)`` standard deviation of each frame's valid depth pixels; NaN without any.

    One frame at a time: a float64 copy of a whole video's depth would be ~0.3 GB.

    Examples:
        >>> d = np.zeros((2, 2, 2), np.float32); d[0] = [[1.0, 3.0], [1.0, 3.0]]
        >>> frame_depth_std(d).tolist()
        [1.0, nan]
    """
    out = np.full(depths.shape[0], np.nan)
    for index, frame in enumerate(depths):
        values = frame[np.isfinite(frame) & (frame > 0)]
        if values.size:
            out[index] = values.std(dtype=np.float64)
    return out


def flat_frame_fraction(depths: np.ndarray, flat_std_m: float) -> float:
    """Fraction of frames that are flat (valid-depth std below ``flat_std_m``, or no valid depth).

    Examples:
        >>> d = np.ones((4, 2, 2), np.float32); d[0, 0] = 2.0
        >>> flat_frame_fraction(d, 0.1)
        0.75
    """
    std = frame_depth_std(depths)
    flat = ~(std >= flat_std_m)  # NaN (no valid pixel) compares False: counts as flat
    return float(flat.mean()) if flat.size else 0.0


class DepthCameraStage(ModelStage[DepthCameraBackend]):
    """Per-frame metric depth, intrinsics and world->camera extrinsics of a video."""

    name: ClassVar[StageName] = "depth_camera"
    # ViPE: ~13 GB to load plus 1-4 GB per video (FORMATS.md); replaced by profiling.
    config: DepthCameraConfig

    def outputs(self, video_id: str) -> list[Path]:
        return [self.work.vipe(video_id)]

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        frames, meta = read_frames(self.work, vid)
        result = self.loaded_backend().infer(video, frames, meta)
        path = self.work.vipe(vid)
        # A bad backend result is about the source video: name it, not the output never written.
        self.check_result(video, Path(video.source), result, frames.shape[:3])
        fraction = self.check_usable(video, result.depths)
        write_depth_camera(path, result)
        return {"frames": result.num_frames, "flat_fraction": round(fraction, 4)}

    def check_result(self, video: VideoRef, path: Path, result: DepthCamera, frames_shape: tuple[int, ...]) -> None:
        """Shapes match the frames and the cameras are finite."""
        num_frames = frames_shape[0]
        self.check_shape(video, path, "depths", result.depths, tuple(frames_shape))
        self.check_shape(video, path, "intrinsics", result.intrinsics, (num_frames, 3, 3))
        self.check_shape(video, path, "extrinsics", result.extrinsics, (num_frames, 4, 4))
        for key in ("intrinsics", "extrinsics"):
            if not np.isfinite(getattr(result, key)).all():
                raise BadInputError(video.video_id, self.name, path, f"backend returned non-finite '{key}'")

    def check_usable(self, video: VideoRef, depths: np.ndarray) -> float:
        """Apply the flat-frame rule; return the flat fraction of a usable video."""
        section = self.config.section
        if not (np.isfinite(depths) & (depths > 0)).any():
            raise UnusableVideoError(video.video_id, self.name, video.source, "no valid depth (all zero or non-finite)")
        fraction = flat_frame_fraction(depths, section.flat_std_m)
        if fraction > section.max_flat_fraction:
            reason = (
                f"{fraction:.1%} of frames are flat (depth std < {section.flat_std_m} m), "
                f"more than the allowed {section.max_flat_fraction:.1%}"
            )
            raise UnusableVideoError(video.video_id, self.name, video.source, reason)
        return fraction
