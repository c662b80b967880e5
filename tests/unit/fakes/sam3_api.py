"""Fake of SAM3's video predictor (github.com/facebookresearch/sam3 @ 99d02f2; y2r pins 5eb25fb, same API).

Stands for ``sam3/model_builder.py: build_sam3_video_predictor(*model_args, gpus_to_use=None,
**model_kwargs)`` and the ``Sam3VideoPredictorMultiGPU`` it returns
(``sam3/model/sam3_video_predictor.py``), whose constructor keywords are
``Sam3VideoPredictor.__init__``'s (an unknown one is a ``TypeError``):

- ``handle_request(request)``: ``start_session`` with ``resource_path`` read as
  ``sam3/model/io_utils.py: load_video_frames_from_image_folder`` reads a folder (files whose
  extension is in ``IMAGE_EXTS``, sorted by their integer stem, opened with PIL as RGB; none:
  ``RuntimeError``; neither a folder nor a video: ``NotImplementedError``), the session id
  assigned by the multi-GPU wrapper; ``add_prompt`` with ``session_id``, ``frame_index`` and
  ``text``; ``reset_session``; ``close_session`` (idempotent); anything else ``RuntimeError``.
- ``handle_stream_request({"type": "propagate_in_video", "session_id",
  "propagation_direction"})`` (default ``"both"``, others refused with ``ValueError``) yields
  ``{"frame_index", "outputs"}`` forward from the prompted frame, then backward.
- ``outputs`` as ``Sam3VideoInference._postprocess_output`` makes them: numpy ``out_obj_ids``
  int64, ``out_probs`` float32, ``out_boxes_xywh`` float32 normalised by the frame size,
  ``out_binary_masks (N, H, W)`` bool at the frames' resolution, ``frame_stats``.

Detection is by the exact text: an object is found only when ``text`` is one of the phrases
the test names, so the prompt string SAM3 receives is checked, not just its meaning. The
scene: two rectangles that move right by one pixel a frame, present only from frame
``appears_at`` on (a detection on an earlier frame finds nothing, which exercises the
adapter's retry on the middle frame).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

IMAGE_EXTS = [".jpg", ".jpeg", ".png", ".bmp", ".tiff", ".webp"]  # sam3/model/io_utils.py
PREDICTOR_KWARGS = {  # Sam3VideoPredictor.__init__
    "checkpoint_path",
    "bpe_path",
    "has_presence_token",
    "geo_encoder_use_img_cross_attn",
    "strict_state_dict_loading",
    "async_loading_frames",
    "video_loader_type",
    "apply_temporal_disambiguation",
}


def object_masks(frame: int, height: int, width: int) -> np.ndarray:
    """``(2, H, W)`` the two objects of ``frame``: rows 2-5 and 8-11, moving right."""
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, 2:6, 3 + frame : 9 + frame] = True
    masks[1, 8:12, 1 + frame : 4 + frame] = True
    return masks


def load_image_folder(path: str) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: the frames as SAM3's image-folder loader finds and orders them."""
    assert isinstance(path, str)
    if not os.path.isdir(path):
        raise NotImplementedError("Only video files and image folders are supported")
    names = [p for p in os.listdir(path) if os.path.splitext(p)[-1].lower() in IMAGE_EXTS]
    try:
        names.sort(key=lambda p: int(os.path.splitext(p)[0]))
    except ValueError:
        names.sort()
    if not names:
        raise RuntimeError(f"no images found in {path}")
    return np.stack([np.asarray(Image.open(os.path.join(path, n)).convert("RGB")) for n in names])


@dataclass
class Predictor:
    kwargs: dict[str, Any]
    phrases: set[str]
    appears_at: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: list[np.ndarray] = field(default_factory=list)
    shut_down: bool = False

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.shut_down:
            raise RuntimeError("cannot handle request after the predictor has shutdown")
        if request["type"] == "start_session" and request.get("session_id") is None:
            request["session_id"] = str(uuid.uuid4())  # Sam3VideoPredictorMultiGPU.handle_request
        self.requests.append(dict(request))
        kind = request["type"]
        if kind == "start_session":
            frames = load_image_folder(request["resource_path"])
            self.loaded.append(frames)
            self.sessions[request["session_id"]] = {"frames": frames, "prompt": None}
            return {"session_id": request["session_id"]}
        if kind == "close_session":
            self.sessions.pop(request["session_id"], None)
            return {"is_success": True}
        if kind not in ("add_prompt", "reset_session"):
            raise RuntimeError(f"invalid request type: {kind}")
        session = self._session(request["session_id"])
        if kind == "reset_session":
            session["prompt"] = None
            return {"is_success": True}
        frame = request["frame_index"]
        found = request.get("text") in self.phrases and frame >= self.appears_at
        session["prompt"] = frame if found else None
        return {"frame_index": frame, "outputs": self._outputs(session, frame, found)}

    def handle_stream_request(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if request["type"] != "propagate_in_video":
            raise RuntimeError(f"invalid request type: {request['type']}")
        direction = request.get("propagation_direction", "both")
        if direction not in ("both", "forward", "backward"):
            raise ValueError(f"invalid propagation direction: {direction}")
        self.requests.append(dict(request))
        session = self._session(request["session_id"])
        start, count = session["prompt"], len(session["frames"])
        frames = [*range(start, count)] if direction in ("both", "forward") else []
        frames += [*range(start, -1, -1)] if direction in ("both", "backward") else []
        for frame in frames:
            yield {"frame_index": frame, "outputs": self._outputs(session, frame, start is not None)}

    def _session(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise RuntimeError(f"Cannot find session {session_id}; it might have expired")
        return self.sessions[session_id]

    def _outputs(self, session: dict[str, Any], frame: int, found: bool) -> dict[str, Any]:
        height, width = session["frames"].shape[1:3]
        masks = object_masks(frame, height, width) if found else np.zeros((0, height, width), bool)
        boxes = np.array(
            [
                [xs.min() / width, ys.min() / height, (np.ptp(xs) + 1) / width, (np.ptp(ys) + 1) / height]
                for ys, xs in (np.nonzero(m) for m in masks)
            ],
            dtype=np.float32,
        ).reshape(-1, 4)
        return {
            "out_obj_ids": np.arange(len(masks), dtype=np.int64),
            "out_probs": np.full(len(masks), 0.9, np.float32),
            "out_boxes_xywh": boxes,
            "out_binary_masks": masks,
            "frame_stats": None,
        }

    def shutdown(self) -> None:
        self.shut_down = True
        self.sessions.clear()


def install(monkeypatch: pytest.MonkeyPatch, phrases: set[str], appears_at: int = 0) -> list[Predictor]:
    """Install fake ``sam3`` and ``sam3.model_builder`` finding ``phrases``; returns the predictors built."""
    built: list[Predictor] = []
    package = types.ModuleType("sam3")
    package.__spec__ = importlib.machinery.ModuleSpec("sam3", None, is_package=True)
    package.__path__ = []
    builder = types.ModuleType("sam3.model_builder")
    builder.__spec__ = importlib.machinery.ModuleSpec("sam3.model_builder", None)

    def build_sam3_video_predictor(*model_args: Any, gpus_to_use: list[int] | None = None, **model_kwargs: Any):
        unknown = set(model_kwargs) - PREDICTOR_KWARGS
        if model_args or unknown:
            raise TypeError(f"Sam3VideoPredictor.__init__() got unexpected arguments {model_args} {sorted(unknown)}")
        predictor = Predictor({"gpus_to_use": gpus_to_use, **model_kwargs}, phrases, appears_at)
        built.append(predictor)
        return predictor

    builder.build_sam3_video_predictor = build_sam3_video_predictor
    package.model_builder = builder
    monkeypatch.setitem(sys.modules, "sam3", package)
    monkeypatch.setitem(sys.modules, "sam3.model_builder", builder)
    return built
