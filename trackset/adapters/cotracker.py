"""CoTracker3 offline (github.com/facebookresearch/co-tracker) as the 2D tracking backend.

The script pipeline loads it with ``torch.hub.load("facebookresearch/co-tracker",
"cotracker3_offline")`` and tracks each sliding window on its own, queries on the window's
first frame (``process_cotracker.py``). This adapter does the same through CoTracker's public
predictor API: ``CoTrackerPredictor.forward(video (B, T, 3, H, W) float in [0, 255],
queries=(B, N, 3) as (t, x, y) pixels)`` returns ``tracks (B, T, N, 2)`` pixel positions and
``visibility (B, T, N)``. The queries are the stage's grid inside the object mask
(:mod:`trackset.stages.tracks_2d`), all at ``t = 0``; a point is kept when its visibility
is at least ``tracks_2d.visibility_threshold`` at every step (CoTracker3 reports it as a
boolean, so any threshold above 0 means "visible throughout").

Weights: with ``tracks_2d.checkpoint_path`` set, ``cotracker.predictor.CoTrackerPredictor``
(``pip install git+https://github.com/facebookresearch/co-tracker``) loads that offline
checkpoint (``scaled_offline.pth``); otherwise torch.hub loads the model and its checkpoint,
from the hub cache once filled (docs/real-models.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from trackset.adapters import DOCS, missing_file, missing_modules, raise_if_missing, release_cuda_memory, torch_device
from trackset.config.settings import Tracks2dSettings
from trackset.domain import VideoRef
from trackset.formats.intermediates import FramesMeta, Tracks2d

STAGE = "tracks_2d"
HUB_REPO, HUB_MODEL = "facebookresearch/co-tracker", "cotracker3_offline"
INSTALL = "pip install git+https://github.com/facebookresearch/co-tracker"
WINDOW_LEN = 60  # CoTracker3 offline's own window; a 10-frame trackset window fits in one


def hub_checkout() -> Path:
    """Where torch.hub keeps the co-tracker code once downloaded."""
    import torch

    return Path(torch.hub.get_dir()) / "facebookresearch_co-tracker_main"


def missing(section: Tracks2dSettings) -> list[str]:
    """Every missing part: with ``checkpoint_path`` set, the ``cotracker`` package and that
    file; without, the torch.hub cache. Each names its install or setting."""
    if section.checkpoint_path is not None:
        return missing_modules(("cotracker", "cotracker.predictor"), INSTALL) + missing_file(
            STAGE, "checkpoint_path", section.checkpoint_path, "the CoTracker3 offline checkpoint"
        )
    if not hub_checkout().is_dir():
        return [
            f"CoTracker3 from torch.hub, not in the hub cache {hub_checkout()}: load "
            f"torch.hub.load('{HUB_REPO}', '{HUB_MODEL}') once with internet access, or set "
            f"{STAGE}.checkpoint_path (see {DOCS})"
        ]
    return []


def check_available(section: Tracks2dSettings) -> Path | None:
    """The checkpoint (None: torch.hub); ModelUnavailableError naming every missing part
    (:func:`missing`)."""
    raise_if_missing(STAGE, missing(section))
    return None if section.checkpoint_path is None else Path(section.checkpoint_path)


class CoTracker3Backend:
    """Sliding-window 2D tracks of given query pixels, from CoTracker3 offline."""

    def __init__(self, section: Tracks2dSettings) -> None:
        self.section = section
        self._model: Any = None
        self._device = "cpu"

    def load(self) -> None:
        """Load the model once per worker."""
        checkpoint = check_available(self.section)
        if checkpoint is not None:
            predictor = importlib.import_module("cotracker.predictor")
            model = predictor.CoTrackerPredictor(checkpoint=str(checkpoint), offline=True, window_len=WINDOW_LEN)
        else:
            import torch

            model = torch.hub.load(HUB_REPO, HUB_MODEL)
        self._device = torch_device()
        self._model = model.to(self._device)
        self._model.eval()

    def infer(
        self,
        video: VideoRef,
        frames: np.ndarray,
        meta: FramesMeta,
        windows: list[tuple[int, int]],
        queries: list[np.ndarray],
    ) -> Tracks2d:
        """Track each window's queries (pixels of its first frame); keep the visible points."""
        if self._model is None:
            raise RuntimeError("CoTracker3Backend.infer called before load()")
        tracks = [
            self._track_window(frames[start:end], pixels) for (start, end), pixels in zip(windows, queries, strict=True)
        ]
        return Tracks2d(
            windows=list(windows),
            tracks=tracks,
            num_frames=int(frames.shape[0]),
            window_length=self.section.window_length,
            stride=self.section.stride,
            grid_size=self.section.grid_size,
            resolution=(int(frames.shape[1]), int(frames.shape[2])),
        )

    def _track_window(self, frames: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """``(L, N, 2)`` positions of the visible points among ``pixels`` ``(N, 2)``."""
        import torch

        length = frames.shape[0]
        if len(pixels) == 0:
            return np.zeros((length, 0, 2), np.float32)
        # One float copy of the window, which is what CoTracker takes: writable, unlike the
        # memory-mapped video (torch warns on a read-only array), and nothing else is copied.
        clip = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)[None].to(self._device)
        queries = np.concatenate([np.zeros((len(pixels), 1)), np.asarray(pixels, dtype=np.float64)], axis=1)
        query_tensor = torch.from_numpy(queries.astype(np.float32))[None].to(self._device)
        with torch.no_grad():
            positions, visibility = self._model(clip, queries=query_tensor)
        positions = positions[0].float().cpu().numpy().reshape(length, -1, 2)
        seen = visibility[0].float().cpu().numpy().reshape(length, -1)
        keep = (seen >= self.section.visibility_threshold).all(axis=0)
        return positions[:, keep].astype(np.float32)

    def unload(self) -> None:
        self._model = None
        release_cuda_memory()
