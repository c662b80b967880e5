"""Synthetic stand-in for DiffuEraser: the scene rendered without its person, where masked.

Like DiffuEraser, the person masks are first dilated (``clean_frames.mask_dilation_iter``
iterations of a 3x3 kernel, i.e. that many pixels); inside the dilated masks a frame takes
the pixels of the same scene rendered at the same time without its hands, which is exactly
what a perfect inpainting would show, and outside them it keeps the decoded frame.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np

from trackset.config.settings import CleanFramesSettings
from trackset.domain import StageName, VideoRef
from trackset.formats.intermediates import FramesMeta
from trackset.geometry.query_points import dilate
from trackset.synthetic.backends import _SyntheticBackend, frame_times


class SyntheticCleanFrames(_SyntheticBackend):
    """DiffuEraser's role, exact (module docstring)."""

    stage: ClassVar[StageName] = "clean_frames"
    section: CleanFramesSettings

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, masks: np.ndarray) -> np.ndarray:
        scene = self.scene(video)
        without_person = replace(scene, hands=())
        num_frames, height, width = frames.shape[:3]
        times = frame_times(meta, num_frames, scene.fps)
        clean = np.array(frames, dtype=np.uint8, copy=True)
        with self.cost.video(num_frames):
            for index, time in enumerate(times):
                region = dilate(masks[index], self.section.mask_dilation_iter)
                if region.any():
                    clean[index][region] = without_person.render(float(time), width, height)[0][region]
        return clean
