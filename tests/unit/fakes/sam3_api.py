"""Fake of SAM3's video predictor API (github.com/facebookresearch/sam3, ``sam3.model_builder``).

Mirrors ``build_sam3_video_predictor(*, gpus_to_use=None, checkpoint_path=None, ...)`` and the
predictor's ``handle_request(request)`` (``start_session`` with ``resource_path`` a folder of
JPEG frames, ``add_prompt`` with ``session_id``, ``frame_index`` and ``text``, ``reset_session``,
``close_session``) and ``handle_stream_request({"type": "propagate_in_video", ...})``, which
yields ``{"frame_index", "outputs"}`` forward from the prompted frame, then backward, as SAM3's
``propagate_in_video`` with ``propagation_direction="both"`` does. ``outputs`` hold
``out_obj_ids``, ``out_probs``, ``out_boxes_xywh`` and ``out_binary_masks (N, H, W)`` bool.

The scene: for a known prompt, two objects (rectangles that move right by one pixel a
frame), present only from frame ``appears_at`` on; detection on an earlier frame finds
nothing, which exercises the adapter's retry on the middle frame.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest


def object_masks(frame: int, height: int, width: int) -> np.ndarray:
    """``(2, H, W)`` the two objects of ``frame``: rows 2-5 and 8-11, moving right."""
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, 2:6, 3 + frame : 9 + frame] = True
    masks[1, 8:12, 1 + frame : 4 + frame] = True
    return masks


@dataclass
class Predictor:
    kwargs: dict[str, Any]
    prompts: set[str]
    appears_at: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    shut_down: bool = False

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(dict(request))
        kind = request["type"]
        if kind == "start_session":
            files = sorted(Path(request["resource_path"]).glob("*.jpg"))
            first = cv2.imread(str(files[0]))
            session = f"s{len(self.sessions)}"
            self.sessions[session] = {"frames": files, "shape": first.shape[:2], "prompt": None}
            return {"session_id": session}
        session = self.sessions[request["session_id"]]
        if kind == "add_prompt":
            frame = request["frame_index"]
            found = request["text"] in self.prompts and frame >= self.appears_at
            session["prompt"] = (frame, request["text"]) if found else None
            return {"frame_index": frame, "outputs": self._outputs(session, frame) if found else self._empty(session)}
        if kind == "reset_session":
            session["prompt"] = None
            return {"is_success": True}
        if kind == "close_session":
            self.sessions.pop(request["session_id"])
            return {"is_success": True}
        raise RuntimeError(f"invalid request type: {kind}")

    def handle_stream_request(self, request: dict[str, Any]):
        assert request["type"] == "propagate_in_video"
        session = self.sessions[request["session_id"]]
        start, _ = session["prompt"]
        count = len(session["frames"])
        for frame in [*range(start, count), *range(start, -1, -1)]:
            yield {"frame_index": frame, "outputs": self._outputs(session, frame)}

    def _outputs(self, session: dict[str, Any], frame: int) -> dict[str, Any]:
        height, width = session["shape"]
        masks = object_masks(frame, height, width)
        return {
            "out_obj_ids": np.array([0, 1]),
            "out_probs": np.array([0.9, 0.8]),
            "out_boxes_xywh": np.zeros((2, 4)),
            "out_binary_masks": masks,
        }

    def _empty(self, session: dict[str, Any]) -> dict[str, Any]:
        height, width = session["shape"]
        return {"out_obj_ids": np.zeros(0, int), "out_binary_masks": np.zeros((0, height, width), bool)}

    def shutdown(self) -> None:
        self.shut_down = True


def install(monkeypatch: pytest.MonkeyPatch, prompts: set[str], appears_at: int = 0) -> list[Predictor]:
    """Install fake ``sam3`` and ``sam3.model_builder``; returns the predictors built."""
    built: list[Predictor] = []
    package = types.ModuleType("sam3")
    package.__spec__ = importlib.machinery.ModuleSpec("sam3", None, is_package=True)
    package.__path__ = []
    builder = types.ModuleType("sam3.model_builder")
    builder.__spec__ = importlib.machinery.ModuleSpec("sam3.model_builder", None)

    def build_sam3_video_predictor(*args: Any, gpus_to_use: list[int] | None = None, **kwargs: Any) -> Predictor:
        predictor = Predictor({"gpus_to_use": gpus_to_use, **kwargs}, prompts, appears_at)
        built.append(predictor)
        return predictor

    builder.build_sam3_video_predictor = build_sam3_video_predictor
    package.model_builder = builder
    monkeypatch.setitem(sys.modules, "sam3", package)
    monkeypatch.setitem(sys.modules, "sam3.model_builder", builder)
    return built
