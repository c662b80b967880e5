"""Person masks stage (the script's ``gsam_human``): ``human_masks/<vid>.npz``, on a GPU.

SAM3 segments ``human_masks.text_prompt`` (``"person."``) on the preprocessed frames,
detecting on ``human_masks.key_frame`` (the middle frame by default, as the script) and
propagating over the video. The masks feed the inpainting (:mod:`trackset.stages.clean_frames`)
and, with ``tracks_2d.subtract_human_masks``, are cut out of the object masks before
CoTracker's queries are placed.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from trackset.domain import StageName, VideoRef
from trackset.formats.intermediates import read_frames
from trackset.stages.config import HumanMasksConfig
from trackset.stages.mask_stage import MaskStage


class HumanMasksStage(MaskStage):
    """Masks of the people in every frame."""

    name: ClassVar[StageName] = "human_masks"
    config: HumanMasksConfig

    def masks_path(self, video_id: str) -> Path:
        return self.work.human_masks(video_id)

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        frames, meta = read_frames(self.work, video.video_id)
        section = self.config.section
        return self.segment(video, frames, meta, section.text_prompt, section.key_frame)
