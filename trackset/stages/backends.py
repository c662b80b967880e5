"""The model interface behind each GPU stage, shared by real adapters and synthetic backends.

A backend is constructed cheaply, loads its model in ``load()`` (once per worker process),
turns one video into the stage's in-memory result in ``infer()``, and frees memory in
``unload()``. The stage around it (``trackset/stages/<stage>.py``) does file I/O,
validation and the FORMATS.md conventions, so every backend gets them for free.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from trackset.domain import VideoRef
from trackset.intermediates import DepthCamera, FramesMeta, HandPoses, Tracks3d


class ModelBackend(Protocol):
    """Lifecycle shared by every backend."""

    def load(self) -> None:
        """Load weights onto the worker's device; raises ModelUnavailableError if absent."""

    def unload(self) -> None:
        """Release the model and its device memory."""


class DepthCameraBackend(ModelBackend, Protocol):
    """Per-frame metric depth, intrinsics and world->camera extrinsics (ViPE's role)."""

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta) -> DepthCamera: ...


class Tracks3dBackend(ModelBackend, Protocol):
    """Sliding-window 3D point tracks in each window's camera 0 (TAPIP3D's role)."""

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, depth: DepthCamera) -> Tracks3d: ...


class HandsBackend(ModelBackend, Protocol):
    """Wrist poses and MANO parameters per frame in that frame's camera (WiLoR's role)."""

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, depth: DepthCamera) -> HandPoses: ...
