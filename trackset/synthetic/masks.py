"""Synthetic stand-ins for SAM3: the scene's exact masks of what a prompt names.

The scene renders a per-pixel object id with every frame (:meth:`SceneSpec.render_depth`),
so the masks are exact: the visible pixels of the bodies the prompt stands for, at the
frames' source times and size. The script pipeline prompts its ``gsam`` stage with the
manipulated object (``text_prompt: 'red t-shaped block.'``, or the clip's noun) and its
``gsam_human`` stage with ``"person."``; in a synthetic scene those are the moving boxes
and the two hands, whatever the words, since each scene holds one kind of each.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.formats.intermediates import FramesMeta
from trackset.synthetic.backends import _SyntheticBackend, frame_times
from trackset.synthetic.scene import HAND_IDS, SceneSpec


def object_ids(scene: SceneSpec) -> list[int]:
    """Ids of the manipulated objects: the moving boxes, ``1..n``.

    Examples:
        >>> object_ids(SceneSpec.from_seed(0))[:1]
        [1]
    """
    return list(range(1, len(scene.objects) + 1))


def person_ids(scene: SceneSpec) -> list[int]:
    """Ids of the scene's "person": its hands."""
    return [HAND_IDS[hand.side] for hand in scene.hands]


class _SyntheticMasks(_SyntheticBackend):
    """Masks of the bodies :meth:`ids` names, one rendered frame at a time."""

    def ids(self, scene: SceneSpec) -> list[int]:
        raise NotImplementedError

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, prompt: str, key_frame: int) -> np.ndarray:
        """``(T, H, W)`` bool: where frame t shows one of the bodies (``prompt`` and
        ``key_frame`` choose nothing here: see the module docstring)."""
        scene = self.scene(video)
        num_frames, height, width = frames.shape[:3]
        times = frame_times(meta, num_frames, scene.fps)
        ids = self.ids(scene)
        with self.cost.video(num_frames):
            masks = np.zeros((num_frames, height, width), dtype=bool)
            for index, time in enumerate(times):
                masks[index] = np.isin(scene.render_depth(float(time), width, height)[1], ids)
        return masks


class SyntheticObjectMasks(_SyntheticMasks):
    """SAM3 with the clip's object prompt: the moving boxes."""

    stage: ClassVar[StageName] = "object_masks"

    def ids(self, scene: SceneSpec) -> list[int]:
        return object_ids(scene)


class SyntheticHumanMasks(_SyntheticMasks):
    """SAM3 with ``"person."``: the hands."""

    stage: ClassVar[StageName] = "human_masks"

    def ids(self, scene: SceneSpec) -> list[int]:
        return person_ids(scene)
