"""NVIDIA ViPE (github.com/nv-tlabs/vipe, ``pip install nvidia-vipe``) as the depth & camera backend.

Two ViPEs are in use, with different configuration APIs, and this adapter drives either:

- **upstream** (nvidia-vipe 1.0 and later): a typed config from
  ``vipe.config.parse_typed_config`` (``vipe/config/parse.py``), ``vipe.make_pipeline(config.pipeline)``,
  as ViPE's own CLI does (``vipe/cli/main.py``);
- **y2r's vendored copy** (hgupt3/y2r ``thirdparty/vipe``, ViPE 0.1.1 with local changes; the
  script pipeline's ``process_vipe.py``): no ``vipe.config`` package, so the config is composed
  with Hydra from ``vipe.get_config_path()``; its pipeline config adds a field-of-view clamp
  (``init.fov_min_degrees`` / ``init.fov_max_degrees``: GeoCalib's estimate is clamped into that
  range, ``GeoCalibIntrinsicsProcessor``) that its SLAM also honours when optimising intrinsics
  (``slam.fov_*_degrees``, read with ``config.get``), and ``vipe.model_cache.VipeModelCache``,
  which loads the priors once per worker instead of once per video.

``depth_camera.fov_min_deg`` / ``fov_max_deg`` (the script's 60 and 90) go to a ViPE whose pipeline
config declares ``init.fov_min_degrees``, to ``init`` and ``slam`` as the script passes them.
Upstream ViPE has no such keys (its typed config forbids unknown ones): the clamp is not applied
and ``load()`` says so in one warning line. Which ViPE is installed is logged at load.

Either way ``pipeline.run(stream)`` runs with ``return_output_streams`` set, so the per-frame
results come back in memory instead of as files, and the frames go in from memory too: a small
``VideoStream`` over the preprocessed array replaces ViPE's frame-directory reader.

What comes back per frame (``vipe.streams.base.VideoFrame``, the same in both): ``pose`` is an
SE3 camera->world (OpenCV axes), ``intrinsics`` is ``[fx, fy, cx, cy, ...]`` and
``metric_depth`` is ``(H, W)`` metres. FORMATS.md wants world->camera, so poses are inverted
here (exactly, as rigid transforms).

Weights: ViPE downloads its priors on first use through ``torch.hub`` and the Hugging Face
hub. ``depth_camera.weights_dir``, when set, becomes the cache root of both
(``<dir>/torch`` and ``<dir>/huggingface``), so a machine without internet can use a
directory filled once elsewhere (docs/real-models.md).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trackset.adapters import (
    DOCS,
    missing_modules,
    module_available,
    raise_if_missing,
    release_cuda_memory,
    torch_device,
)
from trackset.config.settings import DepthCameraSettings
from trackset.domain import VideoRef
from trackset.errors import UnusableVideoError
from trackset.formats.intermediates import DepthCamera, FramesMeta
from trackset.geometry.camera import invert_rigid

logger = logging.getLogger(__name__)

STAGE = "depth_camera"
# ViPE compiles CUDA code against the installed torch; an isolated build would pick another torch.
INSTALL = "pip install --no-build-isolation nvidia-vipe"

# The script pipeline's preset: MoGe keyframe depth aligned with Video Depth Anything.
VIPE_PIPELINE = "lyra"


def missing(section: DepthCameraSettings) -> list[str]:
    """Every missing part: the ``vipe`` package and, when ``weights_dir`` is set, that directory."""
    reasons = missing_modules(("vipe",), INSTALL)
    weights_dir = section.weights_dir
    if weights_dir is not None and not Path(weights_dir).is_dir():
        reasons.append(
            f"its weights cache at {STAGE}.weights_dir = {weights_dir}, which is not a directory (see {DOCS})"
        )
    return reasons


def check_available(section: DepthCameraSettings) -> None:
    """Raise ModelUnavailableError naming every missing part (:func:`missing`)."""
    raise_if_missing(STAGE, missing(section))


def declares_fov_clamp(config_dir: Path) -> bool:
    """Whether a ViPE's ``pipeline/default.yaml`` under ``config_dir`` has the field-of-view clamp
    (``init.fov_min_degrees`` and ``init.fov_max_degrees``: y2r's vendored copy)."""
    try:
        config = yaml.safe_load((Path(config_dir) / "pipeline" / "default.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    init = config.get("init") if isinstance(config, dict) else None
    return isinstance(init, dict) and {"fov_min_degrees", "fov_max_degrees"} <= init.keys()


def fov_overrides(section: DepthCameraSettings, slam: bool) -> list[str]:
    """The script's Hydra overrides for the clamp (``process_vipe.py``, ``create_vipe_pipeline``):
    GeoCalib's estimate clamped (``init``) and, with ``slam``, SLAM's intrinsics kept in range.

    Examples:
        >>> fov_overrides(DepthCameraSettings(fov_min_deg=60, fov_max_deg=None), slam=True)
        ['pipeline.init.fov_min_degrees=60.0', '++pipeline.slam.fov_min_degrees=60.0']
    """
    out = []
    for bound, value in (("min", section.fov_min_deg), ("max", section.fov_max_deg)):
        if value is not None:
            out.append(f"pipeline.init.fov_{bound}_degrees={value}")
            if slam:
                out.append(f"++pipeline.slam.fov_{bound}_degrees={value}")
    return out


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
        """Build the ViPE pipeline once per worker, through the installed ViPE's own config API
        (module docstring); log which ViPE it is and whether it takes the field-of-view clamp."""
        check_available(self.section)
        weights_dir = self.section.weights_dir
        if weights_dir is not None:
            _use_cache_root(Path(weights_dir))
        vipe = importlib.import_module("vipe")
        from vipe.streams import base as streams

        # ViPE creates its output folders even when it saves nothing; keep them out of sight.
        self._scratch = Path(tempfile.mkdtemp(prefix="trackset-vipe-"))
        overrides = [
            f"pipeline={VIPE_PIPELINE}",
            f"pipeline.output.path={self._scratch}",
            "pipeline.output.save_artifacts=false",
            "pipeline.output.save_viz=false",
        ]
        typed = module_available("vipe.config")  # nvidia-vipe >= 1.0; y2r's copy composes with Hydra
        clamp = declares_fov_clamp(vipe.get_config_path())
        wanted = self.section.fov_min_deg is not None or self.section.fov_max_deg is not None
        where = Path(getattr(vipe, "__file__", "?")).parent
        kind = "y2r's vendored ViPE (field-of-view clamp)" if clamp else "upstream ViPE"
        logger.info("%s: ViPE %s at %s: %s", STAGE, getattr(vipe, "__version__", "?"), where, kind)
        if wanted and clamp:
            overrides += fov_overrides(self.section, slam=not typed)
        elif wanted:
            logger.warning(
                "%s: the installed ViPE (%s) has no field-of-view clamp; depth_camera.fov_min_deg = %s and "
                "fov_max_deg = %s are not applied (y2r's vendored ViPE applies them; null both to silence this)",
                STAGE,
                where,
                self.section.fov_min_deg,
                self.section.fov_max_deg,
            )
        self._pipeline = _typed_pipeline(vipe, overrides) if typed else _hydra_pipeline(vipe, overrides)
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


def _typed_pipeline(vipe: Any, overrides: list[str]) -> Any:
    """Upstream ViPE: typed config, ``make_pipeline(config.pipeline)`` (``vipe/cli/main.py``)."""
    from vipe.config import parse_typed_config

    return vipe.make_pipeline(parse_typed_config("default", hydra_args=overrides).pipeline)


def _hydra_pipeline(vipe: Any, overrides: list[str]) -> Any:
    """ViPE without ``vipe.config`` (y2r's copy): the config composed with Hydra from ViPE's own
    config folder, and the priors loaded once into ``VipeModelCache`` where there is one, as
    the script's ``create_vipe_pipeline`` does."""
    import torch

    hydra = importlib.import_module("hydra")  # a ViPE dependency, not trackset's
    with hydra.initialize_config_dir(config_dir=str(vipe.get_config_path()), version_base=None):
        config = hydra.compose("default", overrides=overrides)
    pipeline = config.pipeline
    if module_available("vipe.model_cache") and "model_cache" in inspect.signature(vipe.make_pipeline).parameters:
        from vipe.model_cache import VipeModelCache

        cache = VipeModelCache.create(
            slam_cfg=pipeline.slam, init_cfg=pipeline.init, post_cfg=pipeline.post, device=torch.device(torch_device())
        )
        return vipe.make_pipeline(pipeline, model_cache=cache)
    return vipe.make_pipeline(pipeline)


def _use_cache_root(root: Path) -> None:
    """Point torch.hub and the Hugging Face hub at ``root`` before ViPE imports them."""
    import torch

    torch.hub.set_dir(str(root / "torch"))
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["HF_HOME"] = str(root / "huggingface")
