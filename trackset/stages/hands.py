"""Hands stage (WiLoR's role): ``hand_poses/<vid>.pt`` per video, on a GPU.

Per hand and frame: validity, the wrist pose in that frame's camera, MANO joint rotations,
21 joints and the hand's shape, NaN where the hand is not valid (FORMATS.md). The stage checks
the backend's shapes and that valid frames are finite, then writes the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import HAND_SIDES, HandPoses, read_depth_camera, read_frames, write_hand_poses
from trackset.stages.backends import HandsBackend
from trackset.stages.config import HandsConfig
from trackset.stages.model_stage import ModelStage


class HandsStage(ModelStage[HandsBackend]):
    """Both hands' poses over a video, in the camera of each frame."""

    name: ClassVar[StageName] = "hands"
    config: HandsConfig

    def outputs(self, video_id: str) -> list[Path]:
        return [self.work.hand_poses(video_id)]

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid = video.video_id
        frames, meta = read_frames(self.work, vid)
        depth = read_depth_camera(self.work.vipe(vid), vid, num_frames=meta.num_frames)
        hands = self.loaded_backend().infer(video, frames, meta, depth)
        path = self.work.hand_poses(vid)
        self.check_result(video, Path(video.source), hands, meta.num_frames)  # names the source
        write_hand_poses(path, hands)
        valid_frames = {f"{side}_valid_frames": int(hands.side(side).valid.sum()) for side in HAND_SIDES}
        return {"frames": meta.num_frames, **valid_frames}

    def check_result(self, video: VideoRef, path: Path, hands: HandPoses, num_frames: int) -> None:
        """Shapes per FORMATS.md, and finite wrist poses wherever a hand is marked valid."""
        if hands.num_frames != num_frames:
            reason = f"backend returned {hands.num_frames} frames; the video has {num_frames}"
            raise BadInputError(video.video_id, self.name, path, reason)
        self.check_shape(video, path, "intrinsics", np.asarray(hands.intrinsics), (3, 3))
        for side in HAND_SIDES:
            hand = hands.side(side)
            for key, shape in (
                ("valid", (num_frames,)),
                ("wrist_pose", (num_frames, 4, 4)),
                ("hand_pose", (num_frames, 15, 3, 3)),
                ("joints_3d", (num_frames, 21, 3)),
                ("betas", (10,)),
            ):
                self.check_shape(video, path, f"{side}_{key}", np.asarray(getattr(hand, key)), shape)
            valid = np.asarray(hand.valid, dtype=bool)
            if not np.isfinite(np.asarray(hand.wrist_pose)[valid]).all():
                reason = f"backend returned a non-finite '{side}_wrist_pose' on a valid frame"
                raise BadInputError(video.video_id, self.name, path, reason)
