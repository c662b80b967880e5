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
from trackset.formats.intermediates import DepthCamera, FramesMeta, HandPoses, Tracks2d, Tracks3d


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
    """Sliding-window 3D point tracks in each window's camera 0 (TAPIP3D's role).

    ``queries``, when given, holds per window (in ``window_starts`` order) the ``(N, 2)``
    ``(u, v)`` pixels of its first frame to track (sampled from the object masks by the
    stage, :mod:`trackset.geometry.query_points`); without it the backend samples its own.
    """

    def infer(
        self,
        video: VideoRef,
        frames: np.ndarray,
        meta: FramesMeta,
        depth: DepthCamera,
        queries: list[np.ndarray] | None = None,
    ) -> Tracks3d: ...


class MasksBackend(ModelBackend, Protocol):
    """``(T, H, W)`` bool masks of everything ``prompt`` names, detected on ``key_frame``
    (``-1``: the middle frame) and propagated over the video (SAM3's role)."""

    def infer(
        self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, prompt: str, key_frame: int
    ) -> np.ndarray: ...


class CleanFramesBackend(ModelBackend, Protocol):
    """The ``(T, H, W, 3)`` uint8 frames with what ``masks`` (T, H, W) covers inpainted
    (DiffuEraser's role)."""

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, masks: np.ndarray) -> np.ndarray: ...


class Tracks2dBackend(ModelBackend, Protocol):
    """2D tracks of each window's query pixels (CoTracker's role): ``windows[w]`` is
    ``(start, end)``, ``queries[w]`` the ``(N, 2)`` ``(u, v)`` pixels of frame ``start``;
    the result keeps the points visible at every step of their window."""

    def infer(
        self,
        video: VideoRef,
        frames: np.ndarray,
        meta: FramesMeta,
        windows: list[tuple[int, int]],
        queries: list[np.ndarray],
    ) -> Tracks2d: ...


class HandsBackend(ModelBackend, Protocol):
    """Wrist poses and MANO parameters per frame in that frame's camera (WiLoR's role)."""

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, depth: DepthCamera) -> HandPoses: ...
