"""What the two SAM3 stages share: masks of what a text prompt names, written per video.

:class:`~trackset.stages.human_masks.HumanMasksStage` (the script's ``gsam_human``) and
:class:`~trackset.stages.object_masks.ObjectMasksStage` (its ``gsam``) differ only in their
frames, their prompt and where the masks go; the backend is the same model, given a
prompt and a key frame (``-1``: the middle frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trackset.domain import VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import FramesMeta, VideoMasks, write_masks
from trackset.stages.backends import MasksBackend
from trackset.stages.model_stage import ModelStage


class MaskStage(ModelStage[MasksBackend]):
    """A GPU stage that writes ``(T, H, W)`` masks of a prompt (see the module docstring)."""

    def masks_path(self, video_id: str) -> Path:
        """Where this stage's masks of a video go."""
        raise NotImplementedError

    def outputs(self, video_id: str) -> list[Path]:
        return [self.masks_path(video_id)]

    def segment(
        self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, prompt: str | None, key_frame: int
    ) -> dict[str, float | int | str]:
        """Run the backend on ``frames`` with ``prompt`` (none: write a file without masks)."""
        num_frames, height, width = frames.shape[:3]
        if prompt is None:
            write_masks(self.masks_path(video.video_id), VideoMasks(None, "", key_frame), height, width)
            return {"frames": num_frames, "unprompted": 1}
        masks = np.asarray(self.loaded_backend().infer(video, frames, meta, prompt, key_frame))
        source = Path(video.source)  # a bad backend result is about the source video
        self.check_shape(video, source, "masks", masks, (num_frames, height, width))
        if masks.dtype != np.bool_:
            raise BadInputError(video.video_id, self.name, source, f"backend returned masks of dtype {masks.dtype}")
        write_masks(self.masks_path(video.video_id), VideoMasks(masks, prompt, key_frame), height, width)
        return {
            "frames": num_frames,
            "unprompted": 0,
            "mask_fraction": round(float(masks.mean()), 4),
            "frames_without_mask": int((~masks.any(axis=(1, 2))).sum()),
        }
