"""Human removal stage (the script's ``diffueraser``): ``clean_frames/<vid>/frames.npy``, on a GPU.

The people that :mod:`trackset.stages.human_masks` found are inpainted (DiffuEraser with
ProPainter's prior, masks dilated by ``clean_frames.mask_dilation_iter``), so the object
masks and the point trackers see the scene without the person in front of it. Hands and
depth keep reading the original frames, as in the script pipeline (WiLoR needs the hands;
ViPE reads ``frames/``). The H5's ``root/video`` stays the original frames too, like the
script's ``create_h5_dataset`` (``input_images_dir: frames``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import read_frames, read_masks, write_clean_frames
from trackset.stages.backends import CleanFramesBackend
from trackset.stages.config import CleanFramesConfig
from trackset.stages.model_stage import ModelStage


class CleanFramesStage(ModelStage[CleanFramesBackend]):
    """The frames of a video with its people inpainted."""

    name: ClassVar[StageName] = "clean_frames"
    config: CleanFramesConfig

    def outputs(self, video_id: str) -> list[Path]:
        return [self.work.clean_frames_npy(video_id)]

    def intermediate_paths(self, video_id: str) -> list[Path]:
        return [self.work.clean_frames_dir(video_id)]

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        frames, meta = read_frames(self.work, vid)
        num_frames, height, width = frames.shape[:3]
        people = read_masks(self.work.human_masks(vid), vid, "human_masks", num_frames, height, width)
        if people.masks is None:
            raise BadInputError(vid, self.name, self.work.human_masks(vid), "the person masks file holds no masks")
        clean = np.asarray(self.loaded_backend().infer(video, np.asarray(frames), meta, people.masks))
        source = Path(video.source)
        self.check_shape(video, source, "frames", clean, tuple(frames.shape))
        if clean.dtype != np.uint8:
            raise BadInputError(vid, self.name, source, f"backend returned frames of dtype {clean.dtype}, not uint8")
        write_clean_frames(self.work, vid, clean)
        return {"frames": num_frames, "person_fraction": round(float(people.masks.mean()), 4)}
