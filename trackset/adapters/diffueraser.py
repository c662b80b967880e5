"""DiffuEraser (github.com/lixiaowen-xw/DiffuEraser) as the human removal backend.

Driven as its ``run_diffueraser.py`` drives it, and as the script pipeline's
``process_diffueraser.py`` does: ProPainter makes a prior, DiffuEraser inpaints with it.

- ``Propainter(model_dir, device=...)`` and ``DiffuEraser(device, base_model_path, vae_path,
  diffueraser_path, ckpt="2-Step")`` are built once per worker;
- per video, ``propainter.forward(video_mp4, mask_mp4, priori_mp4, video_length=seconds,
  ref_stride, neighbor_length, subvideo_length, mask_dilation)`` then
  ``diffueraser.forward(video_mp4, mask_mp4, priori_mp4, output_mp4, max_img_size,
  video_length, mask_dilation_iter, guidance_scale=None)``.

Both read and write MP4 files only (DiffuEraser's README), at one frame rate, so the frames
and masks go out as lossless MP4s (H.264 in RGB, ``libx264rgb`` at ``qp 0``: they decode to
the very pixels, and a mask video must come back exactly 0 and 255, since DiffuEraser takes
every non-zero pixel as masked) and the
result comes back through PyAV, resized to the frames' size if DiffuEraser rounded it to a
multiple of 8. DiffuEraser needs at least 22 frames; a shorter video fails with that reason.

Its checkout is not a package: ``clean_frames.checkout_dir`` goes on ``sys.path`` (its
modules are ``diffueraser``, ``propainter`` and ``libs``) and holds ``weights/``, and the
models are built with it as the working directory, because DiffuEraser loads its PCM
weights from the relative path ``weights/PCM_Weights``.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from trackset.adapters import DOCS, release_cuda_memory, require_modules, torch_device, unavailable
from trackset.config.settings import CleanFramesSettings
from trackset.domain import VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import FramesMeta

STAGE = "clean_frames"
INSTALL = "a checkout of github.com/lixiaowen-xw/DiffuEraser at clean_frames.checkout_dir"
CKPT = "2-Step"  # the script pipeline's PCM schedule
MIN_FRAMES = 22  # DiffuEraser refuses shorter videos
WEIGHTS = ("stable-diffusion-v1-5", "sd-vae-ft-mse", "diffuEraser", "propainter", "PCM_Weights")
LOSSLESS = {"qp": "0", "preset": "veryfast"}  # libx264rgb at qp 0 is lossless


def check_available(section: CleanFramesSettings) -> Path:
    """The checkout; ModelUnavailableError (one line) when it, its code or a weights folder is missing."""
    checkout = section.checkout_dir
    if checkout is None:
        raise unavailable(STAGE, f"the DiffuEraser checkout: set {STAGE}.checkout_dir (see {DOCS})")
    checkout = Path(checkout)
    if not (checkout / "diffueraser" / "diffueraser.py").is_file():
        raise unavailable(STAGE, f"the DiffuEraser code at {STAGE}.checkout_dir = {checkout} (see {DOCS})")
    for name in WEIGHTS:
        if not (checkout / "weights" / name).is_dir():
            raise unavailable(STAGE, f"weights/{name} under {STAGE}.checkout_dir = {checkout} (see {DOCS})")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    require_modules(STAGE, ("diffueraser.diffueraser", "propainter.inference"), INSTALL)
    return checkout


def write_lossless_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """``(T, H, W, 3)`` uint8 RGB as an MP4 that decodes back to the same pixels (H.264 RGB, qp 0)."""
    rate = Fraction(fps).limit_denominator(1_000_000)
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream("libx264rgb", rate=rate)
        if not isinstance(stream, av.VideoStream):  # pragma: no cover - libx264rgb is a video codec
            raise TypeError("libx264rgb is not a video codec here")
        stream.width, stream.height, stream.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), "rgb24"
        stream.options = dict(LOSSLESS)
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = index
            output.mux(stream.encode(picture))
        output.mux(stream.encode(None))


def read_mp4(path: Path, count: int, height: int, width: int) -> np.ndarray:
    """The first ``count`` frames of an MP4 as ``(count, height, width, 3)`` uint8 RGB."""
    out = np.zeros((count, height, width, 3), np.uint8)
    index = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if index == count:
                break
            rgb = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
            if rgb.shape[:2] != (height, width):  # DiffuEraser works at multiples of 8
                rgb = np.asarray(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LANCZOS4), dtype=np.uint8)
            out[index] = rgb
            index += 1
    if index < count:
        raise ValueError(f"{path.name} has {index} frames, expected {count}")
    return out


class DiffuEraserBackend:
    """Frames with the masked people inpainted, from ProPainter and DiffuEraser."""

    def __init__(self, section: CleanFramesSettings) -> None:
        self.section = section
        self._propainter: Any = None
        self._eraser: Any = None

    def load(self) -> None:
        """Build both models once per worker, from the checkout's ``weights/``."""
        checkout = check_available(self.section)
        weights = checkout / "weights"
        device = torch_device()
        inference = importlib.import_module("propainter.inference")
        eraser = importlib.import_module("diffueraser.diffueraser")
        with _working_directory(checkout):  # DiffuEraser reads weights/PCM_Weights relative to the working directory
            self._eraser = eraser.DiffuEraser(
                device,
                str(weights / "stable-diffusion-v1-5"),
                str(weights / "sd-vae-ft-mse"),
                str(weights / "diffuEraser"),
                ckpt=CKPT,
            )
            self._propainter = inference.Propainter(str(weights / "propainter"), device=device)

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, masks: np.ndarray) -> np.ndarray:
        """``(T, H, W, 3)`` uint8: ``frames`` with what ``masks`` covers inpainted."""
        if self._eraser is None:
            raise RuntimeError("DiffuEraserBackend.infer called before load()")
        num_frames, height, width = frames.shape[:3]
        if num_frames < MIN_FRAMES:
            reason = f"DiffuEraser needs at least {MIN_FRAMES} frames, the video has {num_frames}"
            raise BadInputError(video.video_id, STAGE, video.source, reason)
        if not masks.any():
            return np.array(frames, dtype=np.uint8, copy=True)  # nobody to remove
        fps = meta.fps or 10.0
        seconds = math.ceil(num_frames / fps) + 1  # DiffuEraser reads video_length seconds at most
        section = self.section
        with tempfile.TemporaryDirectory(prefix=f"diffueraser-{video.video_id}-") as folder:
            clip, mask, priori, result = (Path(folder) / f"{n}.mp4" for n in ("video", "mask", "priori", "result"))
            write_lossless_mp4(clip, np.asarray(frames), fps)
            write_lossless_mp4(mask, np.repeat(np.asarray(masks, dtype=np.uint8)[..., None] * 255, 3, axis=3), fps)
            self._propainter.forward(
                str(clip),
                str(mask),
                str(priori),
                video_length=seconds,
                ref_stride=section.ref_stride,
                neighbor_length=section.neighbor_length,
                subvideo_length=section.subvideo_length,
                mask_dilation=section.mask_dilation_iter,
            )
            self._eraser.forward(
                str(clip),
                str(mask),
                str(priori),
                str(result),
                max_img_size=section.max_img_size,
                video_length=seconds,
                mask_dilation_iter=section.mask_dilation_iter,
                guidance_scale=None,
            )
            try:
                return read_mp4(result, num_frames, height, width)
            except (ValueError, OSError, av.error.FFmpegError) as exc:
                raise BadInputError(video.video_id, STAGE, video.source, f"DiffuEraser's output: {exc}") from None

    def unload(self) -> None:
        self._eraser = None
        self._propainter = None
        release_cuda_memory()


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` of Python 3.11, for the models' Python 3.10 environments."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
