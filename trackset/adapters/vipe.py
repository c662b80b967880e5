"""NVIDIA ViPE (github.com/nv-tlabs/vipe, ``pip install nvidia-vipe``) as the depth & camera backend.

Driven as ViPE's own CLI drives it (``vipe/cli/main.py``): a typed Hydra config from
``vipe.config.parse_typed_config``, ``vipe.make_pipeline(config.pipeline)``, and
``pipeline.run(stream)`` with ``return_output_streams`` set, so the per-frame results come
back in memory instead of as files. The frames go in from memory too: a small
``VideoStream`` over the preprocessed array replaces ViPE's frame-directory reader.

What comes back per frame (``vipe.streams.base.VideoFrame``): ``pose`` is an SE3
camera->world (OpenCV axes), ``intrinsics`` is ``[fx, fy, cx, cy, ...]`` and
``metric_depth`` is ``(H, W)`` metres. FORMATS.md wants world->camera, so poses are inverted
here (exactly, as rigid transforms).

Weights: ViPE downloads its priors on first use through ``torch.hub`` and the Hugging Face
hub. ``depth_camera.weights_dir``, when set, becomes the cache root of both
(``<dir>/torch`` and ``<dir>/huggingface``), so a machine without internet can use a
directory filled once elsewhere (docs/real-models.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trackset.adapters import DOCS, release_cuda_memory, require_modules, torch_device, unavailable
from trackset.config.settings import DepthCameraSettings
from trackset.domain import VideoRef
from trackset.errors import UnusableVideoError
from trackset.formats.intermediates import DepthCamera, FramesMeta
from trackset.geometry.camera import invert_rigid

STAGE = "depth_camera"

# The script pipeline's preset: MoGe keyframe depth aligned with Video Depth Anything.
VIPE_PIPELINE = "lyra"


def check_available(section: DepthCameraSettings) -> None:
    """Raise ModelUnavailableError (one line) when ViPE or its weights directory is missing."""
    require_modules(STAGE, ("vipe",), "pip install nvidia-vipe")
    weights_dir = section.weights_dir
    if weights_dir is not None and not Path(weights_dir).is_dir():
        raise unavailable(
            STAGE,
            f"its weights cache at depth_camera.weights_dir = {weights_dir}, which is not a directory (see {DOCS})",
        )


def intrinsics_matrix(vector: np.ndarray) -> np.ndarray:
    """ViPE's pinhole ``[fx, fy, cx, cy, (distortion...)]`` as a 3x3 matrix.

    Examples:
        >>> intrinsics_matrix(np.array([500.0, 510.0, 256.0, 192.0])).tolist()
        [[500.0, 0.0, 256.0], [0.0, 510.0, 192.0], [0.0, 0.0, 1.0]]
    """
    fx, fy, cx, cy = (float(x) for x in np.asarray(vector, dtype=np.float64)[:4])
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _array_stream_type(streams: Any) -> type:
    """A ``vipe.streams.base.VideoStream`` over an in-memory ``(T, H, W, 3)`` uint8 array.

    Built on first load because its base class lives in the optional ``vipe`` package.
    """
    import torch

    class ArrayStream(streams.VideoStream):
        """Preprocessed frames as ViPE frames: RGB float in [0, 1], on the GPU when there is one."""

        def __init__(self, frames: np.ndarray, fps: float, name: str) -> None:
            super().__init__()
            self._frames, self._fps, self._name = frames, fps, name
            self._device = torch.device(torch_device())

        def frame_size(self) -> tuple[int, int]:
            return int(self._frames.shape[1]), int(self._frames.shape[2])

        def fps(self) -> float:
            return self._fps

        def name(self) -> str:
            return self._name

        def __len__(self) -> int:
            return int(self._frames.shape[0])

        def __iter__(self) -> Iterator[Any]:
            for index, image in enumerate(self._frames):
                rgb = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).to(self._device)
                yield streams.VideoFrame(raw_frame_idx=index, rgb=rgb)

    return ArrayStream


class ViPEBackend:
    """Depth, intrinsics and world->camera extrinsics per frame, from ViPE."""

    def __init__(self, section: DepthCameraSettings) -> None:
        self.section = section
        self._pipeline: Any = None
        self._streams: Any = None
        self._stream_type: type | None = None
        self._scratch: Path | None = None

    def load(self) -> None:
        """Build the ViPE pipeline once per worker (ViPE then loads its priors on first run)."""
        check_available(self.section)
        weights_dir = self.section.weights_dir
        if weights_dir is not None:
            _use_cache_root(Path(weights_dir))
        from vipe import make_pipeline
        from vipe.config import parse_typed_config
        from vipe.streams import base as streams

        # ViPE creates its output folders even when it saves nothing; keep them out of sight.
        self._scratch = Path(tempfile.mkdtemp(prefix="trackset-vipe-"))
        config = parse_typed_config(
            "default",
            hydra_args=[
                f"pipeline={VIPE_PIPELINE}",
                f"pipeline.output.path={self._scratch}",
                "pipeline.output.save_artifacts=false",
                "pipeline.output.save_viz=false",
            ],
        )
        self._pipeline = make_pipeline(config.pipeline)
        self._pipeline.return_output_streams = True
        self._streams = streams
        self._stream_type = _array_stream_type(streams)

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta) -> DepthCamera:
        if self._pipeline is None or self._stream_type is None:
            raise RuntimeError("ViPEBackend.infer called before load()")
        stream = self._streams.ProcessedVideoStream(self._stream_type(frames, meta.fps, video.video_id), []).cache(
            desc="Reading frames"
        )
        output = self._pipeline.run(stream).output_streams[0]
        poses, intrinsics, depths = [], [], []
        for frame in output:  # one pass: each access of a cached ViPE frame copies it to the GPU
            poses.append(frame.pose.matrix().detach().cpu().numpy())
            intrinsics.append(intrinsics_matrix(frame.intrinsics.detach().cpu().numpy()))
            depths.append(frame.metric_depth.detach().float().cpu().numpy())
        if len(depths) != frames.shape[0]:
            raise UnusableVideoError(
                video.video_id, STAGE, meta.source or None, f"ViPE returned {len(depths)} of {frames.shape[0]} frames"
            )
        return DepthCamera(
            depths=np.stack(depths).astype(np.float32),
            intrinsics=np.stack(intrinsics),
            extrinsics=invert_rigid(np.stack(poses).astype(np.float64)),
        )

    def unload(self) -> None:
        self._pipeline = None
        self._stream_type = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        release_cuda_memory()


def _use_cache_root(root: Path) -> None:
    """Point torch.hub and the Hugging Face hub at ``root`` before ViPE imports them."""
    import torch

    torch.hub.set_dir(str(root / "torch"))
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["HF_HOME"] = str(root / "huggingface")
