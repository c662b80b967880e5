"""SAM3 (github.com/facebookresearch/sam3) as the backend of both mask stages.

The script pipeline's ``gsam`` and ``gsam_human`` stages use ``detection_model: sam3``:
``sam3.model_builder.build_sam3_video_predictor()`` and a text prompt on a key frame,
propagated over the video (``process_gsam.py``). This adapter drives SAM3's public video
predictor API the way its README and example notebook do:

- ``handle_request({"type": "start_session", "resource_path": <dir of PNG frames>})``
  returns a ``session_id``; the frames are PNGs named by index, lossless, as the script's
  frame folders (SAM3's ``load_video_frames_from_image_folder`` reads any of
  ``.jpg .jpeg .png .bmp .tiff .webp`` and orders them by the number in the name);
- ``handle_request({"type": "add_prompt", "session_id", "frame_index", "text"})`` detects
  what the prompt names on that frame; its ``outputs`` hold ``out_obj_ids`` and
  ``out_binary_masks`` (``(N, H, W)`` bool);
- ``handle_stream_request({"type": "propagate_in_video", "session_id",
  "propagation_direction": "both"})`` yields ``{"frame_index", "outputs"}`` for every frame,
  forward then backward from the prompt;
- ``handle_request({"type": "close_session", "session_id"})`` frees it.

SAM3 is given the prompt without its trailing full stops, as the script's ``sam3_video``
(y2r ``thirdparty/sam2/grounded_sam2.py``) sends it: ``text_prompt.rstrip('.')``. The full
stop belongs to the Grounding DINO form the prompts are written in (``"person."``, the
clip's noun plus ``"."``), which is what the stages store and print; only the request
changes.

The union of the objects' masks is each frame's mask. As in the script, when nothing is
found on the key frame the middle frame is tried (``reset_session`` first); a video where
SAM3 finds nothing gets empty masks. ``key_frame`` -1 is the middle frame.

Weights: ``checkpoint_path`` (``object_masks`` / ``human_masks`` section), when set, is
passed to the builder; otherwise SAM3 downloads its checkpoint from the Hugging Face hub
(``facebook/sam3``, access must be granted there).
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from trackset.adapters import missing_file, missing_modules, raise_if_missing, release_cuda_memory, torch_device
from trackset.config.settings import HumanMasksSettings, ObjectMasksSettings
from trackset.domain import VideoRef
from trackset.formats.intermediates import FramesMeta

INSTALL = "pip install sam3, from PyPI; 0.1.4 needs numpy<2.4 and torchvision"
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless at any level; 1 is the quickest that still compresses


def _stage_of(section: ObjectMasksSettings | HumanMasksSettings) -> str:
    return "human_masks" if isinstance(section, HumanMasksSettings) else "object_masks"


def missing(section: ObjectMasksSettings | HumanMasksSettings) -> list[str]:
    """Every missing part: the ``sam3`` package and, when ``checkpoint_path`` is set, that file."""
    stage = _stage_of(section)
    reasons = missing_modules(("sam3", "sam3.model_builder"), INSTALL)
    if section.checkpoint_path is not None:
        reasons += missing_file(stage, "checkpoint_path", section.checkpoint_path, "the SAM3 checkpoint sam3.pt")
    return reasons


def check_available(section: ObjectMasksSettings | HumanMasksSettings) -> Path | None:
    """The checkpoint (None: SAM3's own download); ModelUnavailableError naming every missing
    part (:func:`missing`)."""
    raise_if_missing(_stage_of(section), missing(section))
    return None if section.checkpoint_path is None else Path(section.checkpoint_path)


def key_frame_index(key_frame: int, num_frames: int) -> int:
    """The frame SAM3 is prompted on: ``key_frame``, with -1 the middle frame (as the script).

    Examples:
        >>> key_frame_index(-1, 10), key_frame_index(0, 10), key_frame_index(25, 10)
        (5, 0, 9)
    """
    if key_frame < 0:
        return num_frames // 2
    return min(key_frame, num_frames - 1)


def sam3_text(prompt: str) -> str:
    """The text SAM3 is prompted with: ``prompt`` without trailing full stops (module docstring).

    Examples:
        >>> sam3_text("red block."), sam3_text("person"), sam3_text("a b..")
        ('red block', 'person', 'a b')
    """
    return prompt.rstrip(".")


def _union(outputs: Any, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool: every object of one frame's ``outputs`` together."""
    masks = outputs.get("out_binary_masks") if outputs else None
    if masks is None or len(masks) == 0:
        return np.zeros((height, width), dtype=bool)
    array = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
    return np.asarray(np.asarray(array, dtype=bool).reshape(-1, height, width).any(axis=0), dtype=bool)


def _found(response: Any) -> bool:
    outputs = response.get("outputs") or {}
    return len(outputs.get("out_obj_ids", [])) > 0


class SAM3Backend:
    """Masks of a text prompt over a video, from SAM3's video predictor."""

    def __init__(self, section: ObjectMasksSettings | HumanMasksSettings) -> None:
        self.section = section
        self._predictor: Any = None

    def load(self) -> None:
        """Build the video predictor once per worker (on this worker's one GPU)."""
        checkpoint = check_available(self.section)
        builder = importlib.import_module("sam3.model_builder")
        # The worker sees one GPU (CUDA_VISIBLE_DEVICES), which is device 0 to it.
        kwargs: dict[str, Any] = {"gpus_to_use": [0]} if torch_device() == "cuda" else {}
        if checkpoint is not None:
            kwargs["checkpoint_path"] = str(checkpoint)
        self._predictor = builder.build_sam3_video_predictor(**kwargs)

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, prompt: str, key_frame: int) -> np.ndarray:
        """``(T, H, W)`` bool masks of everything ``prompt`` names (module docstring)."""
        if self._predictor is None:
            raise RuntimeError("SAM3Backend.infer called before load()")
        num_frames, height, width = frames.shape[:3]
        first = key_frame_index(key_frame, num_frames)
        text = sam3_text(prompt)
        masks = np.zeros((num_frames, height, width), dtype=bool)
        with tempfile.TemporaryDirectory(prefix=f"sam3-{video.video_id}-") as folder:
            for index, frame in enumerate(frames):
                bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
                if not cv2.imwrite(str(Path(folder) / f"{index:05d}.png"), bgr, PNG_FAST):
                    raise OSError(f"could not write frame {index} of video {video.video_id} to {folder}")
            request = self._predictor.handle_request
            session = request({"type": "start_session", "resource_path": folder})["session_id"]
            try:
                response = request({"type": "add_prompt", "session_id": session, "frame_index": first, "text": text})
                middle = key_frame_index(-1, num_frames)
                if not _found(response) and first != middle:
                    request({"type": "reset_session", "session_id": session})
                    response = request(
                        {"type": "add_prompt", "session_id": session, "frame_index": middle, "text": text}
                    )
                if not _found(response):
                    return masks
                stream = self._predictor.handle_stream_request(
                    {"type": "propagate_in_video", "session_id": session, "propagation_direction": "both"}
                )
                for item in stream:
                    index = int(item["frame_index"])
                    if 0 <= index < num_frames:
                        masks[index] |= _union(item.get("outputs"), height, width)
            finally:
                request({"type": "close_session", "session_id": session})
        return masks

    def unload(self) -> None:
        if self._predictor is not None and hasattr(self._predictor, "shutdown"):
            self._predictor.shutdown()
        self._predictor = None
        release_cuda_memory()
