"""TAPIP3D (github.com/zbw001/TAPIP3D) as the 3D point tracking backend.

TAPIP3D is a research checkout, not a package: its top-level modules ``models`` and
``utils`` must be importable (the checkout on ``PYTHONPATH``, docs/real-models.md). It is
driven through its own ``utils.inference_utils``: ``load_model(checkpoint)`` and
``inference(model=..., video, depths, intrinsics, extrinsics, query_point, ...)``, which
returns ``coords (T, N, 3)`` in the **world** frame its extrinsics define, and
``visibs (T, N)``.

Each sliding window is tracked on its own with the world frame set to the window's first
camera: TAPIP3D receives ``E_{s+k} · E_s⁻¹`` (world->camera of step k when "world" is
camera s), so the returned positions are already in camera 0 (FORMATS.md). The script
pipeline passed ``E_s⁻¹ · E_{s+k}`` instead, which is not a world->camera transform when
the camera rotates (the composition defect FORMATS.md lists).

Query points are the stage's when it has object masks (sampled from the window's first-frame
mask by :mod:`trackset.geometry.query_points`, the script's ``use_masks``); otherwise they are sampled
here at the window's first frame, among pixels with valid depth, with a seeded generator so
a rerun gives the same points.

A point is kept only if TAPIP3D's visibility (``sigmoid(logit) >= vis_threshold``) holds at
every step of its window, as in the script pipeline; ``tracks_3d.visibility_threshold``
sets the threshold. The default 0 keeps occluded points, which is what the scripts do as
configured (y2r's ``config.yaml``: ``tapip3d.visibility_threshold: 0.0``; 0.9 is only the
default of its ``process_window`` and was configured before y2r commit 6a0a5ef).

TAPIP3D's ``inference`` sets its depth range from the quartiles of the window's valid
(positive) depth values, ``torch.kthvalue(k=int(0.25 n))``, which fails below four of them.
Such a window (depth invalid almost everywhere for ``window_length`` frames, which the
flat-depth rejection lets through when it is under 10 % of the video) gets no tracks, as a
window without valid depth at its first frame gets none: its few query points are dropped,
with a warning naming the video, the window and the reason, and the video's other windows
are kept.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from trackset.adapters import (
    DOCS,
    missing_error,
    missing_file,
    missing_modules,
    release_cuda_memory,
    torch_device,
    unavailable,
)
from trackset.config.settings import Tracks3dSettings
from trackset.domain import VideoRef
from trackset.formats.intermediates import DepthCamera, FramesMeta, Tracks3d
from trackset.geometry.camera import backproject, invert_rigid, window_starts

logger = logging.getLogger(__name__)

STAGE = "tracks_3d"
INSTALL = "a checkout of github.com/zbw001/TAPIP3D on PYTHONPATH"

NUM_ITERS = 6  # TAPIP3D's default number of refinement iterations
SUPPORT_GRID_SIZE = 0  # extra support points per window; 0 as in the script pipeline (its memory/time figures)
MASK_EROSION_PX = 2  # keep queries off mask borders, where depth mixes object and background
MIN_VALID_DEPTHS = 4  # TAPIP3D's inference() takes kthvalue(k=int(0.25 n)) of the window's valid depths


def missing(section: Tracks3dSettings) -> list[str]:
    """Every missing part: TAPIP3D's code and its checkpoint, each naming its install or setting."""
    return missing_modules(("models", "utils.inference_utils"), INSTALL) + missing_file(
        STAGE, "weights_path", section.weights_path, "the TAPIP3D checkpoint tapip3d_final.pth"
    )


def check_available(section: Tracks3dSettings) -> Path:
    """The checkpoint; ModelUnavailableError naming every missing part (:func:`missing`)."""
    reasons = missing(section)
    if reasons or section.weights_path is None:  # an unset weights_path is among the reasons
        raise missing_error({STAGE: reasons})
    return Path(section.weights_path)


def sample_query_pixels(depth: np.ndarray, count: int, seed: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Up to ``count`` distinct pixels ``(u, v)`` with valid depth (and inside ``mask``).

    Args:
        depth: ``(H, W)`` metres of the window's first frame; 0 or non-finite is invalid.
        count: how many points at most.
        seed: seeds the choice, so a window always gets the same points.
        mask: optional ``(H, W)`` object mask, eroded by ``MASK_EROSION_PX`` first.

    Returns:
        ``(N, 2)`` int64 ``(u, v)``, in row-major order, ``N = min(count, candidates)``.

    Examples:
        >>> depth = np.zeros((4, 5)); depth[1, 2] = depth[3, 4] = 1.0
        >>> sample_query_pixels(depth, 10, seed=0).tolist()
        [[2, 1], [4, 3]]
    """
    candidates = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        kernel = np.ones((2 * MASK_EROSION_PX + 1,) * 2, np.uint8)
        candidates &= cv2.erode((np.asarray(mask) > 0.5).astype(np.uint8), kernel) > 0
    flat = np.flatnonzero(candidates)
    chosen = np.sort(np.random.default_rng(seed).choice(flat, size=min(count, flat.size), replace=False))
    v, u = np.divmod(chosen, depth.shape[1])
    return np.stack([u, v], axis=1).astype(np.int64)


def window_world_to_camera(extrinsics: np.ndarray, start: int, length: int) -> np.ndarray:
    """``E_{s+k} · E_s⁻¹`` for k < length: world->camera of each step with camera s as world.

    Examples:
        >>> E = np.stack([np.eye(4)] * 3); E[:, 0, 3] = [0.0, -0.5, -1.0]  # camera moves +x
        >>> window_world_to_camera(E, 1, 2)[:, 0, 3].tolist()
        [0.0, -0.5]
    """
    extrinsics = np.asarray(extrinsics, dtype=np.float64)
    return extrinsics[start : start + length] @ invert_rigid(extrinsics[start])


class TAPIP3DBackend:
    """Sliding-window 3D tracks in each window's first camera, from TAPIP3D."""

    def __init__(self, section: Tracks3dSettings) -> None:
        self.section = section
        self._model: Any = None
        self._inference: Any = None
        self._device = "cpu"

    def load(self) -> None:
        """Load the checkpoint once per worker."""
        checkpoint = check_available(self.section)
        inference_utils = importlib.import_module("utils.inference_utils")
        if not all(hasattr(inference_utils, name) for name in ("load_model", "inference")):
            raise unavailable(
                STAGE,
                f"TAPIP3D's 'utils.inference_utils', but another 'utils' module comes first on sys.path "
                f"({getattr(inference_utils, '__file__', '?')}; see {DOCS})",
            )
        self._device = torch_device()
        model = inference_utils.load_model(str(checkpoint))
        model.to(self._device)
        model.eval()
        self._model, self._inference = model, inference_utils.inference

    def infer(
        self,
        video: VideoRef,
        frames: np.ndarray,
        meta: FramesMeta,
        depth: DepthCamera,
        queries: list[np.ndarray] | None = None,
        masks: np.ndarray | None = None,
    ) -> Tracks3d:
        """Track each full window from ``queries`` (per window, ``(N, 2)`` pixels ``(u, v)``
        of its first frame) when given, else from pixels sampled with valid depth, inside
        ``masks`` (T, H, W) when given.

        Points TAPIP3D reports invisible at any step (below ``tracks_3d.visibility_threshold``)
        are dropped from that window.
        """
        if self._model is None:
            raise RuntimeError("TAPIP3DBackend.infer called before load()")
        section = self.section
        length, num_frames = section.window_length, frames.shape[0]
        starts = window_starts(num_frames, length, section.stride)
        depths = np.where(np.isfinite(depth.depths), depth.depths, 0.0).astype(np.float32)
        tracks = []
        for index, start in enumerate(starts):
            window = slice(int(start), int(start) + length)
            pixels = (
                queries[index]
                if queries is not None
                else sample_query_pixels(
                    depths[start], section.points_per_window, int(start), None if masks is None else masks[start]
                )
            )
            valid = int(np.count_nonzero(depths[window] > 0))
            if len(pixels) and valid < MIN_VALID_DEPTHS:
                logger.warning(
                    "%s: video %s (%s), window (%d, %d): %d valid depth value(s) in depth_camera's "
                    "vipe/%s.npz over the window; TAPIP3D needs at least %d, so the window's %d query "
                    "point(s) are dropped",
                    STAGE,
                    video.video_id,
                    video.source,
                    window.start,
                    window.stop,
                    valid,
                    video.video_id,
                    MIN_VALID_DEPTHS,
                    len(pixels),
                )
                pixels = pixels[:0]
            tracks.append(
                self._track_window(
                    frames[window],
                    depths[window],
                    depth.intrinsics[window],
                    window_world_to_camera(depth.extrinsics, int(start), length),
                    pixels,
                )
            )
        return Tracks3d(
            windows=[(int(s), int(s) + length) for s in starts],
            tracks=tracks,
            intrinsics=np.asarray(depth.intrinsics[0], dtype=np.float64),
            num_frames=num_frames,
            window_length=length,
            stride=section.stride,
            grid_size=0,  # queries are sampled, not a grid
            resolution=(int(frames.shape[1]), int(frames.shape[2])),
        )

    def _track_window(
        self,
        frames: np.ndarray,
        depths: np.ndarray,
        intrinsics: np.ndarray,
        world_to_camera: np.ndarray,
        pixels: np.ndarray,
    ) -> np.ndarray:
        """``(L, N, 3)`` positions in the window's first camera of the points at ``pixels``."""
        import torch

        length = frames.shape[0]
        if pixels.shape[0] == 0:
            return np.zeros((length, 0, 3), np.float32)
        u, v = pixels[:, 0], pixels[:, 1]
        # World = camera 0, so a query's world position is its camera-0 back-projection.
        xyz = backproject(u.astype(np.float64), v.astype(np.float64), depths[0][v, u], intrinsics[0])
        queries = np.concatenate([np.zeros((len(xyz), 1)), xyz], axis=1)

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self._device)

        with torch.autocast(self._device, dtype=torch.bfloat16, enabled=self._device == "cuda"):
            coords, visible = self._inference(
                model=self._model,
                video=tensor(frames).permute(0, 3, 1, 2) / 255.0,
                depths=tensor(depths),
                intrinsics=tensor(intrinsics),
                extrinsics=tensor(world_to_camera),
                query_point=tensor(queries),
                num_iters=NUM_ITERS,
                grid_size=SUPPORT_GRID_SIZE,
                bidrectional=False,  # (sic) TAPIP3D's spelling; queries are at t=0, so forward only
                vis_threshold=self.section.visibility_threshold,
            )
        # TAPIP3D squeezes its outputs, which also drops N when there is a single point.
        coords = coords.float().cpu().numpy().reshape(length, -1, 3)
        visible = visible.cpu().numpy().reshape(length, -1).all(axis=0)
        return coords[:, visible]

    def unload(self) -> None:
        self._model = None
        self._inference = None
        release_cuda_memory()
