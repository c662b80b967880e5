"""DiffuEraser (github.com/lixiaowen-xw/DiffuEraser) as the human removal backend.

Driven as its ``run_diffueraser.py`` drives it, and as the script pipeline's
``process_diffueraser.py`` does: ProPainter makes a prior, DiffuEraser (``ckpt="2-Step"``)
inpaints with it. ``Propainter(model_dir, device)`` and ``DiffuEraser(device, base_model_path,
vae_path, diffueraser_path, ckpt)`` are built once per worker.

Two copies are in use and their readers differ, so the adapter finds out which one it drives
(logged at load) and gives each the inputs its real code reads on current torchvision, whose
0.26 release removed ``torchvision.io.read_video``:

- ProPainter (``propainter/inference.py``, ``read_frame_from_videos`` and ``read_mask``), in
  both copies, reads a folder of frames with OpenCV and one of masks with PIL: frames and masks
  go to it as PNG folders (lossless). Its prior comes back as an MP4 at the frames' rate, the
  output path both copies write with the right colours (y2r's PNG output stores red and blue
  swapped: ``cv2.imwrite`` of RGB frames).
- y2r's vendored copy (hgupt3/y2r ``thirdparty/diffuEraser``; its ``DiffuEraser.forward`` takes
  ``output_as_frames`` and ``fps``) reads the same PNG folders and writes PNG frames: read back
  as they are.
- Upstream's ``DiffuEraser.forward`` reads the video only with ``torchvision.io.read_video``
  (``diffueraser/diffueraser.py``, ``read_video``) and mask and prior with OpenCV, which must
  report the video's frame rate. The frames and masks go to it as lossless MP4s (H.264 RGB,
  ``libx264rgb`` at ``qp 0``). Where the installed torchvision has no ``read_video``, one with
  its contract (PyAV decode, ``(T, H, W, 3)`` uint8 RGB, ``info["video_fps"]``, frames up to
  ``end_pts`` seconds) is put in front of torchvision *in DiffuEraser's module only and only
  during the call*. It writes its result with OpenCV's ``mp4v``, lossy over the whole frame
  (about 35 dB PSNR on a smooth 512x384 clip, every pixel changed); the frames it hands that
  writer are kept instead, in the same way (in its module, during the call), so nothing is
  re-encoded. Should that writer not be called, the MP4 is read back as a fallback.

The result comes back at the frames' size (DiffuEraser works at multiples of 8; 512x384 is
one). DiffuEraser needs at least 22 frames; a shorter video fails with that reason.

Its checkout is not a package: ``clean_frames.checkout_dir`` goes on ``sys.path`` (its modules
are ``diffueraser``, ``propainter`` and ``libs``) and holds ``weights/``, and the models are
built with it as the working directory, because upstream loads its PCM weights from the
relative path ``weights/PCM_Weights``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import av
import cv2
import numpy as np

from trackset.adapters import DOCS, missing_error, missing_modules, release_cuda_memory, torch_device
from trackset.config.settings import CleanFramesSettings
from trackset.domain import VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import FramesMeta

logger = logging.getLogger(__name__)

STAGE = "clean_frames"
INSTALL = "a checkout of github.com/lixiaowen-xw/DiffuEraser at clean_frames.checkout_dir"
CKPT = "2-Step"  # the script pipeline's PCM schedule
MIN_FRAMES = 22  # DiffuEraser refuses shorter videos
WEIGHTS = ("stable-diffusion-v1-5", "sd-vae-ft-mse", "diffuEraser", "propainter", "PCM_Weights")
LOSSLESS = {"qp": "0", "preset": "veryfast"}  # libx264rgb at qp 0 is lossless
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless at any level; 1 is the quickest that still compresses

Copy = Literal["upstream", "y2r"]
COPIES: dict[Copy, str] = {
    "upstream": "upstream DiffuEraser (MP4 in and out)",
    "y2r": "y2r's vendored DiffuEraser (frame folders in and out)",
}


def missing(section: CleanFramesSettings) -> list[str]:
    """Every missing part: the checkout (or the setting), its code, each weights folder and the
    modules it imports, each naming the setting.

    A checkout with the code goes on ``sys.path`` (first), since that is how its modules are
    found, here and at load.
    """
    checkout = section.checkout_dir
    if checkout is None:
        return [f"the DiffuEraser checkout: set {STAGE}.checkout_dir (see {DOCS})"]
    checkout = Path(checkout)
    if not checkout.is_dir():
        return [f"the DiffuEraser checkout at {STAGE}.checkout_dir = {checkout}, which is not a directory (see {DOCS})"]
    reasons = [
        f"weights/{name} under {STAGE}.checkout_dir = {checkout} (see {DOCS})"
        for name in WEIGHTS
        if not (checkout / "weights" / name).is_dir()
    ]
    if not (checkout / "diffueraser" / "diffueraser.py").is_file():
        return [f"the DiffuEraser code at {STAGE}.checkout_dir = {checkout} (see {DOCS})", *reasons]
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return missing_modules(("diffueraser.diffueraser", "propainter.inference"), INSTALL) + reasons


def check_available(section: CleanFramesSettings) -> Path:
    """The checkout, on ``sys.path``; ModelUnavailableError naming every missing part (:func:`missing`)."""
    reasons = missing(section)
    if reasons or section.checkout_dir is None:  # an unset checkout_dir is among the reasons
        raise missing_error({STAGE: reasons})
    return Path(section.checkout_dir)


def installed_copy(eraser_class: Any) -> Copy:
    """Which DiffuEraser this is: y2r's copy has ``output_as_frames`` in ``DiffuEraser.forward``."""
    return "y2r" if "output_as_frames" in inspect.signature(eraser_class.forward).parameters else "upstream"


def write_png_folder(folder: Path, images: np.ndarray) -> Path:
    """``(T, H, W, 3)`` RGB or ``(T, H, W)`` grey uint8 as ``00000.png``, ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        pixels = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        if not cv2.imwrite(str(folder / f"{index:05d}.png"), pixels, PNG_FAST):
            raise OSError(f"could not write {folder / f'{index:05d}.png'}")
    return folder


def read_png_folder(folder: Path, count: int, height: int, width: int) -> np.ndarray:
    """The first ``count`` PNG frames of ``folder`` as ``(count, height, width, 3)`` uint8 RGB."""
    files = sorted(folder.glob("*.png"))
    if len(files) < count:
        raise ValueError(f"{folder.name} has {len(files)} frames, expected {count}")
    return np.stack([_fit(cv2.cvtColor(_imread(path), cv2.COLOR_BGR2RGB), height, width) for path in files[:count]])


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
            out[index] = _fit(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8), height, width)
            index += 1
    if index < count:
        raise ValueError(f"{path.name} has {index} frames, expected {count}")
    return out


def read_video(
    filename: str,
    start_pts: float = 0,
    end_pts: float | None = None,
    pts_unit: str = "pts",
    output_format: str = "THWC",
) -> tuple[Any, Any, dict[str, float]]:
    """``torchvision.io.read_video`` (removed in torchvision 0.26) as DiffuEraser calls it.

    ``(video, audio, info)``: ``video`` a ``(T, H, W, 3)`` uint8 RGB tensor of the frames whose
    time lies in ``[start_pts, end_pts]`` seconds, no audio, ``info["video_fps"]`` the stream's
    average rate, as torchvision's PyAV reader returned them. Only ``pts_unit="sec"`` (what
    DiffuEraser passes) and the ``THWC`` layout are offered.
    """
    import torch

    if pts_unit != "sec" or output_format != "THWC":
        raise ValueError(f"read_video stand-in reads pts_unit='sec' into THWC, not {pts_unit!r}, {output_format!r}")
    last = math.inf if end_pts is None else float(end_pts)
    with av.open(filename) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        frames = [
            frame.to_ndarray(format="rgb24")
            for frame in container.decode(stream)
            if frame.time is None or float(start_pts) <= frame.time <= last
        ]
    video = torch.from_numpy(np.stack(frames)) if frames else torch.zeros((0, 1, 1, 3), dtype=torch.uint8)
    return video, torch.zeros((1, 0)), {"video_fps": rate}


class _Overlay:
    """A module seen through a few replaced attributes; every other name is the module's own."""

    def __init__(self, module: Any, **replaced: Any) -> None:
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class _KeptFrames:
    """``cv2.VideoWriter`` as DiffuEraser's module sees it during one call: keeps the (BGR)
    frames it is given instead of encoding them."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def writer(self, *args: Any, **kwargs: Any) -> _KeptFrames:
        return self

    def isOpened(self) -> bool:
        return True

    def write(self, image: np.ndarray) -> None:
        self.frames.append(np.ascontiguousarray(np.asarray(image)[..., ::-1]))

    def release(self) -> None:
        return None


@contextlib.contextmanager
def _in_module(module: ModuleType, **names: Any) -> Iterator[None]:
    """Give ``module``'s globals ``names`` while the block runs, then put the old ones back."""
    saved = {name: getattr(module, name) for name in names}
    try:
        for name, value in names.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


class DiffuEraserBackend:
    """Frames with the masked people inpainted, from ProPainter and DiffuEraser."""

    def __init__(self, section: CleanFramesSettings) -> None:
        self.section = section
        self._propainter: Any = None
        self._eraser: Any = None
        self._eraser_module: ModuleType | None = None
        self.copy: Copy = "upstream"

    def load(self) -> None:
        """Build both models once per worker, from the checkout's ``weights/``."""
        checkout = check_available(self.section)
        weights = checkout / "weights"
        device = torch_device()
        inference = importlib.import_module("propainter.inference")
        eraser = importlib.import_module("diffueraser.diffueraser")
        self.copy = installed_copy(eraser.DiffuEraser)
        logger.info("%s: %s at %s", STAGE, COPIES[self.copy], checkout)
        with _working_directory(checkout):  # upstream reads weights/PCM_Weights relative to the working directory
            self._eraser = eraser.DiffuEraser(
                device,
                str(weights / "stable-diffusion-v1-5"),
                str(weights / "sd-vae-ft-mse"),
                str(weights / "diffuEraser"),
                ckpt=CKPT,
            )
            self._propainter = inference.Propainter(str(weights / "propainter"), device=device)
        self._eraser_module = eraser

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, masks: np.ndarray) -> np.ndarray:
        """``(T, H, W, 3)`` uint8: ``frames`` with what ``masks`` covers inpainted."""
        if self._eraser is None:
            raise RuntimeError("DiffuEraserBackend.infer called before load()")
        num_frames = frames.shape[0]
        if num_frames < MIN_FRAMES:
            reason = f"DiffuEraser needs at least {MIN_FRAMES} frames, the video has {num_frames}"
            raise BadInputError(video.video_id, STAGE, video.source, reason)
        if not masks.any():
            return np.array(frames, dtype=np.uint8, copy=True)  # nobody to remove
        fps = meta.fps or 10.0
        frames = np.asarray(frames, dtype=np.uint8)
        grey = np.asarray(masks, dtype=np.uint8) * 255
        with tempfile.TemporaryDirectory(prefix=f"diffueraser-{video.video_id}-") as scratch:
            folder = Path(scratch)
            frames_dir = write_png_folder(folder / "frames", frames)
            masks_dir = write_png_folder(folder / "masks", grey)
            priori = folder / "priori.mp4"
            section = self.section
            self._propainter.forward(  # a frame folder: video_length (seconds of an MP4) does not apply
                str(frames_dir),
                str(masks_dir),
                str(priori),
                ref_stride=section.ref_stride,
                neighbor_length=section.neighbor_length,
                subvideo_length=section.subvideo_length,
                mask_dilation=section.mask_dilation_iter,
                save_fps=fps,
            )
            try:
                if self.copy == "y2r":
                    return self._erase_folders(frames_dir, masks_dir, priori, folder / "result", frames.shape, fps)
                return self._erase_mp4(folder, frames, grey, priori, fps)
            except (ValueError, OSError, av.error.FFmpegError) as exc:
                raise BadInputError(video.video_id, STAGE, video.source, f"DiffuEraser: {exc}") from None

    def _erase_folders(
        self, frames_dir: Path, masks_dir: Path, priori: Path, result: Path, shape: tuple[int, ...], fps: float
    ) -> np.ndarray:
        """y2r's copy: frame folders in (it reads every frame, ``video_length`` unused), PNG frames out."""
        self._eraser.forward(
            str(frames_dir),
            str(masks_dir),
            str(priori),
            str(result),
            max_img_size=self.section.max_img_size,
            mask_dilation_iter=self.section.mask_dilation_iter,
            guidance_scale=None,
            fps=fps,
            output_as_frames=True,
        )
        return read_png_folder(result, *shape[:3])

    def _erase_mp4(self, folder: Path, frames: np.ndarray, grey: np.ndarray, priori: Path, fps: float) -> np.ndarray:
        """Upstream: lossless MP4s in, the frames its writer is handed out (module docstring)."""
        module = self._eraser_module
        if module is None:
            raise RuntimeError("DiffuEraserBackend.infer called before load()")
        seconds = math.ceil(frames.shape[0] / fps) + 1  # it reads video_length seconds at most
        clip, mask, result = folder / "video.mp4", folder / "mask.mp4", folder / "result.mp4"
        write_lossless_mp4(clip, frames, fps)
        write_lossless_mp4(mask, np.repeat(grey[..., None], 3, axis=3), fps)
        kept = _KeptFrames()
        names: dict[str, Any] = {"cv2": _Overlay(module.cv2, VideoWriter=kept.writer)}
        if not hasattr(module.torchvision.io, "read_video"):
            names["torchvision"] = _Overlay(
                module.torchvision, io=_Overlay(module.torchvision.io, read_video=read_video)
            )
        with _in_module(module, **names):
            self._eraser.forward(
                str(clip),
                str(mask),
                str(priori),
                str(result),
                max_img_size=self.section.max_img_size,
                video_length=seconds,
                mask_dilation_iter=self.section.mask_dilation_iter,
                guidance_scale=None,
            )
        count, height, width = frames.shape[:3]
        if not kept.frames:
            logger.warning("%s: DiffuEraser did not write through cv2.VideoWriter; reading its lossy MP4", STAGE)
            return read_mp4(result, count, height, width)
        if len(kept.frames) < count:
            raise ValueError(f"DiffuEraser returned {len(kept.frames)} frames, expected {count}")
        return np.stack([_fit(frame, height, width) for frame in kept.frames[:count]])

    def unload(self) -> None:
        self._eraser = None
        self._propainter = None
        self._eraser_module = None
        release_cuda_memory()


def _imread(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"could not read {path.name}")
    return np.asarray(image)


def _fit(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """``rgb`` at the frames' size (DiffuEraser works at multiples of 8)."""
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LANCZOS4)
    return np.asarray(rgb, dtype=np.uint8)


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` of Python 3.11, for the models' Python 3.10 environments."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
