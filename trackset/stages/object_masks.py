"""Object masks stage (the script's ``gsam``, ``detection_model: sam3``): ``object_masks/<vid>.npz``.

Each clip's prompt is ``object_masks.text_prompt`` when set, else its ``noun`` in
``metadata.csv`` followed by ``"."`` (SAM3's prompt form, as ``process_gsam.py`` builds it;
:mod:`trackset.formats.clip_metadata` says how a row names a video). SAM3 detects on
``object_masks.key_frame`` (the middle frame is tried when nothing is found there) and
propagates over the video; the union of the objects is stored per frame. The masks are
taken on the inpainted frames when human removal is on, so a hand in front of an object
does not cut it.

A clip without a prompt gets a masks file without masks (``unprompted`` in its record),
written by the flow without a GPU task (:meth:`ObjectMasksStage.needs_gpu`), and is
tracked with queries from the whole frame, which is what the script pipeline does with a
clip it has no noun for (its ``gsam`` skips it and TAPIP3D, finding no mask file, samples
a grid over the frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.clip_metadata import MetadataError, find_row, metadata_path
from trackset.formats.intermediates import read_stage_frames
from trackset.stages.config import ObjectMasksConfig
from trackset.stages.mask_stage import MaskStage


def noun_prompt(noun: str) -> str:
    """SAM3's prompt for a noun: the noun and a full stop (``process_gsam.py``).

    Examples:
        >>> noun_prompt("red block"), noun_prompt("mug.")
        ('red block.', 'mug.')
    """
    return noun if noun.endswith(".") else f"{noun}."


class ObjectMasksStage(MaskStage):
    """Masks of the objects each clip's prompt names, in every frame."""

    name: ClassVar[StageName] = "object_masks"
    config: ObjectMasksConfig

    def masks_path(self, video_id: str) -> Path:
        return self.work.object_masks(video_id)

    def prompt(self, video: VideoRef) -> str | None:
        """The clip's prompt, or None when it has none (module docstring).

        Raises:
            BadInputError: ``metadata.csv`` exists but cannot be read (names the file).
        """
        config = self.config
        if config.section.text_prompt is not None:
            return config.section.text_prompt
        path = metadata_path(config.metadata.csv, config.paths.videos_dir)
        try:
            row = find_row(video, path, config.paths.videos_dir, config.metadata.clip_id)
        except FileNotFoundError:
            return None
        except MetadataError as exc:
            raise BadInputError(video.video_id, self.name, path, exc.reason) from None
        return noun_prompt(row.noun) if row is not None and row.noun else None

    def needs_gpu(self, video: VideoRef) -> bool:
        """Only a clip with a prompt needs SAM3; an unreadable ``metadata.csv`` goes to its task,
        which fails the video naming the file, as it does for a prompted clip."""
        try:
            return self.prompt(video) is not None
        except BadInputError:
            return True

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        frames, meta = read_stage_frames(self.work, video.video_id, self.config.clean)
        return self.segment(video, frames, meta, self.prompt(video), self.config.section.key_frame)
