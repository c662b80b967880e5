"""Fake of DiffuEraser and ProPainter (github.com/lixiaowen-xw/DiffuEraser @ 8e6f279, and y2r's
vendored copy, hgupt3/y2r ``thirdparty/diffuEraser`` @ 0d82983), readers and writers as written.

Stands for ``propainter/inference.py`` (``Propainter(propainter_model_dir, device)``,
``Propainter.forward(video, mask, output_path, resize_ratio, video_length, height, width,
mask_dilation, ref_stride, neighbor_length, subvideo_length, raft_iter, save_fps, save_frames,
fp16[, output_as_frames])``, its ``read_frame_from_videos`` and ``read_mask``) and
``diffueraser/diffueraser.py`` (``DiffuEraser(device, base_model_path, vae_path,
diffueraser_path, revision, ckpt, mode, loaded)``, ``DiffuEraser.forward(validation_image,
validation_mask, priori, output_path, max_img_size, video_length, mask_dilation_iter, nframes,
seed, revision, guidance_scale, blended[, output_as_frames, fps])``, its ``read_video``,
``read_mask`` and ``read_priori``). What they read and write, and how they fail:

- a video path (``.mp4``/``.mov``/``.avi`` for ProPainter, any file for DiffuEraser) is read
  with ``torchvision.io.read_video`` looked up in the module's own ``torchvision`` global; the
  installed torchvision is 0.26 or later, which has no ``read_video``, so that read fails with
  ``AttributeError`` unless something provides one;
- a folder is read as the real code reads it: ProPainter every file in ``sorted(os.listdir)``
  with ``cv2.imread`` (BGR to RGB), masks with PIL; y2r's DiffuEraser the ``.png/.jpg/.jpeg``
  files, with PIL; upstream DiffuEraser has no folder branch;
- DiffuEraser reads mask and prior videos with ``cv2.VideoCapture`` and refuses one whose
  ``CAP_PROP_FPS`` differs from the video's (``ValueError``: "The frame rate of all input
  videos needs to be consistent."), deletes the prior after reading it, and refuses fewer than
  22 frames and videos whose larger side is under 256 pixels;
- outputs: an MP4 written with ``cv2.VideoWriter(mp4v)`` (lossy) through the module's ``cv2``
  global, the frames converted to BGR first; with ``output_as_frames`` (y2r) PNG frames, which
  ProPainter writes from RGB arrays with ``cv2.imwrite`` (red and blue swapped, as y2r's code
  does) and DiffuEraser converts first (correct);
- ProPainter on a folder writes at ``save_fps``; a folder's DiffuEraser rate is ``fps`` (12 if
  not given).

The "inpainting": ProPainter's prior is the video with every masked (non-zero) pixel set to
``FILL``; DiffuEraser's result is the input outside the mask and, inside it, each frame's
per-channel median of the prior over the masked pixels (robust to the prior's mp4v noise, and
showing swapped channels as such). Masks are used as given (no dilation).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

FILL = (200, 60, 20)
VIDEO_SUFFIXES = ("mp4", "mov", "avi", "MP4", "MOV", "AVI")


def _module(name: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    return module


def torchvision_026() -> types.ModuleType:
    """torchvision as of 0.26: ``torchvision.io`` without ``read_video``."""
    torchvision = _module("torchvision", package=True)
    torchvision.io = _module("torchvision.io")
    torchvision.__version__ = "0.29.1"
    return torchvision


def _video_capture(cv: Any, path: str, count: int, fps: float | None = None) -> list[np.ndarray]:
    """Frames (BGR) of a video read with ``cv2.VideoCapture``; with ``fps``, DiffuEraser's rate check first."""
    cap = cv.VideoCapture(path)
    if not cap.isOpened():
        raise SystemExit("Error: Could not open video.")  # the real code prints and calls exit()
    if fps is not None and cap.get(cv.CAP_PROP_FPS) != fps:
        cap.release()
        raise ValueError("The frame rate of all input videos needs to be consistent.")
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _write_video(cv: Any, path: str, frames_rgb: list[np.ndarray], fps: float) -> None:
    """The real writers: ``cv2.VideoWriter(mp4v)`` of ``cvtColor(frame, COLOR_BGR2RGB)``."""
    height, width = frames_rgb[0].shape[:2]
    writer = cv.VideoWriter(path, cv.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames_rgb:
        writer.write(cv.cvtColor(frame, cv.COLOR_BGR2RGB))
    writer.release()


def _pil_folder(folder: str, mode: str, count: int | None = None) -> list[np.ndarray]:
    """y2r's folder branch: the .png/.jpg/.jpeg files, sorted, opened with PIL."""
    names = sorted(n for n in os.listdir(folder) if n.endswith((".png", ".jpg", ".jpeg")))[:count]
    return [np.asarray(Image.open(os.path.join(folder, n)).convert(mode)) for n in names]


class Propainter:
    """``propainter.inference.Propainter``; what ``forward`` reads and writes is the module docstring."""

    def __init__(self, module: types.ModuleType, propainter_model_dir: str, device: str) -> None:
        self.module, self.model_dir, self.device = module, propainter_model_dir, device
        self.calls: list[dict[str, Any]] = []

    def run(
        self,
        video: str,
        mask: str,
        output_path: str,
        video_length: int,
        mask_dilation: int,
        ref_stride: int,
        neighbor_length: int,
        subvideo_length: int,
        save_fps: float,
        output_as_frames: bool,
    ) -> str:
        cv = self.module.cv2
        if video.endswith(VIDEO_SUFFIXES):  # read_frame_from_videos
            vframes, _, info = self.module.torchvision.io.read_video(
                filename=video, pts_unit="sec", end_pts=video_length
            )
            frames, fps = list(vframes.numpy()), info["video_fps"]
        else:
            names = sorted(os.listdir(video))
            frames, fps = [cv.cvtColor(cv.imread(os.path.join(video, n)), cv.COLOR_BGR2RGB) for n in names], None
        if mask.endswith(VIDEO_SUFFIXES):  # read_mask
            masks = [np.asarray(Image.fromarray(f).convert("L")) for f in _video_capture(cv, mask, len(frames))]
        else:
            masks = [np.asarray(Image.open(os.path.join(mask, n)).convert("L")) for n in sorted(os.listdir(mask))]
        self.calls.append(
            {
                "video": video,
                "mask": mask,
                "video_length": video_length,
                "mask_dilation": mask_dilation,
                "ref_stride": ref_stride,
                "neighbor_length": neighbor_length,
                "subvideo_length": subvideo_length,
                "save_fps": save_fps,
                "frames": np.stack(frames),
                "masks": np.stack(masks) > 0,
            }
        )
        prior = [np.where((m > 0)[..., None], np.array(FILL, np.uint8), f) for f, m in zip(frames, masks, strict=False)]
        if output_as_frames:
            os.makedirs(output_path, exist_ok=True)
            for index, frame in enumerate(prior):
                cv.imwrite(os.path.join(output_path, f"{index:05d}.png"), frame)  # RGB written as BGR, as y2r does
        else:
            _write_video(cv, output_path, prior, save_fps if fps is None else fps)
        return output_path


class UpstreamPropainter(Propainter):
    def forward(
        self,
        video,
        mask,
        output_path,
        resize_ratio=0.6,
        video_length=2,
        height=-1,
        width=-1,
        mask_dilation=4,
        ref_stride=10,
        neighbor_length=10,
        subvideo_length=80,
        raft_iter=20,
        save_fps=24,
        save_frames=False,
        fp16=True,
    ):
        return self.run(
            video,
            mask,
            output_path,
            video_length,
            mask_dilation,
            ref_stride,
            neighbor_length,
            subvideo_length,
            save_fps,
            False,
        )


class Y2rPropainter(Propainter):
    def forward(
        self,
        video,
        mask,
        output_path,
        resize_ratio=0.6,
        video_length=2,
        height=-1,
        width=-1,
        mask_dilation=4,
        ref_stride=10,
        neighbor_length=10,
        subvideo_length=80,
        raft_iter=20,
        save_fps=24,
        save_frames=False,
        fp16=True,
        output_as_frames=False,
    ):
        return self.run(
            video,
            mask,
            output_path,
            video_length,
            mask_dilation,
            ref_stride,
            neighbor_length,
            subvideo_length,
            save_fps,
            output_as_frames,
        )


class DiffuEraser:
    """``diffueraser.diffueraser.DiffuEraser``; what ``forward`` reads and writes is the module docstring."""

    module: types.ModuleType
    y2r: bool

    def __init__(
        self,
        device,
        base_model_path,
        vae_path,
        diffueraser_path,
        revision=None,
        ckpt="Normal CFG 4-Step",
        mode="sd15",
        loaded=None,
    ) -> None:
        self.device, self.base_model_path, self.vae_path = device, base_model_path, vae_path
        self.diffueraser_path, self.ckpt, self.cwd = diffueraser_path, ckpt, os.getcwd()
        self.calls: list[dict[str, Any]] = []
        pcm = Path(diffueraser_path).parent / "PCM_Weights" if self.y2r else Path("weights/PCM_Weights")
        if not pcm.is_dir():  # upstream loads it relative to the working directory
            raise OSError(f"{pcm} is not a directory")

    def run(
        self,
        validation_image: str,
        validation_mask: str,
        priori: str,
        output_path: str,
        max_img_size: int,
        video_length: int,
        mask_dilation_iter: int,
        guidance_scale: float | None,
        output_as_frames: bool,
        fps: float | None,
    ) -> str:
        cv = self.module.cv2
        if self.y2r and os.path.isdir(validation_image):  # read_video
            frames = _pil_folder(validation_image, "RGB")
            fps, n_total_frames = fps or 12, len(frames)
        else:
            vframes, _, info = self.module.torchvision.io.read_video(
                filename=validation_image, pts_unit="sec", end_pts=video_length
            )
            fps = info["video_fps"]
            n_total_frames = int(video_length * fps)
            frames = list(vframes.numpy())[:n_total_frames]
        if self.y2r and os.path.isdir(validation_mask):  # read_mask
            masks = _pil_folder(validation_mask, "L", n_total_frames)
        else:
            masks = [
                np.asarray(Image.fromarray(f[..., ::-1]).convert("L"))
                for f in _video_capture(cv, validation_mask, len(frames), fps)
            ]
        if self.y2r and os.path.isdir(priori):  # read_priori
            prioris = _pil_folder(priori, "RGB", n_total_frames)
        else:
            prioris = [f[..., ::-1] for f in _video_capture(cv, priori, n_total_frames, fps)]
            os.remove(priori)
        if max(frames[0].shape[:2]) < 256:
            raise ValueError("The resolution of the uploaded video must be larger than 256x256.")
        count = min(len(frames), len(masks), len(prioris))
        if count < 22:
            raise ValueError(
                "The effective video duration is too short. Please make sure that the number of "
                "frames of video, mask, and priori is at least greater than 22 frames."
            )
        self.calls.append(
            {
                "max_img_size": max_img_size,
                "video_length": video_length,
                "fps": fps,
                "mask_dilation_iter": mask_dilation_iter,
                "guidance_scale": guidance_scale,
            }
        )
        comp = []
        for frame, mask, prior in zip(frames[:count], masks[:count], prioris[:count], strict=True):
            inside, out = mask > 0, np.array(frame, dtype=np.uint8, copy=True)
            if inside.any():
                out[inside] = np.median(prior[inside], axis=0).round().astype(np.uint8)
            comp.append(out)
        if output_as_frames:
            os.makedirs(output_path, exist_ok=True)
            for index, frame in enumerate(comp):
                cv.imwrite(os.path.join(output_path, f"{index:05d}.png"), cv.cvtColor(frame, cv.COLOR_RGB2BGR))
        else:
            _write_video(cv, output_path, comp, fps)
        return output_path


class UpstreamDiffuEraser(DiffuEraser):
    y2r = False

    def forward(
        self,
        validation_image,
        validation_mask,
        priori,
        output_path,
        max_img_size=1280,
        video_length=2,
        mask_dilation_iter=4,
        nframes=22,
        seed=None,
        revision=None,
        guidance_scale=None,
        blended=True,
    ):
        return self.run(
            validation_image,
            validation_mask,
            priori,
            output_path,
            max_img_size,
            video_length,
            mask_dilation_iter,
            guidance_scale,
            False,
            None,
        )


class Y2rDiffuEraser(DiffuEraser):
    y2r = True

    def forward(
        self,
        validation_image,
        validation_mask,
        priori,
        output_path,
        max_img_size=1280,
        video_length=2,
        mask_dilation_iter=4,
        nframes=22,
        seed=None,
        revision=None,
        guidance_scale=None,
        blended=True,
        output_as_frames=False,
        fps=None,
    ):
        return self.run(
            validation_image,
            validation_mask,
            priori,
            output_path,
            max_img_size,
            video_length,
            mask_dilation_iter,
            guidance_scale,
            output_as_frames,
            fps,
        )


def install(monkeypatch: pytest.MonkeyPatch, y2r: bool = False) -> dict[str, Any]:
    """Install fake ``diffueraser.diffueraser`` and ``propainter.inference`` (upstream, or y2r's
    copy), both seeing a torchvision without ``read_video``; returns the models built and modules."""
    state: dict[str, Any] = {"propainter": [], "diffueraser": []}
    torchvision = torchvision_026()
    eraser_package, eraser = _module("diffueraser", True), _module("diffueraser.diffueraser")
    painter_package, inference = _module("propainter", True), _module("propainter.inference")
    for module in (eraser, inference):
        module.cv2, module.torchvision = cv2, torchvision
    eraser_base = Y2rDiffuEraser if y2r else UpstreamDiffuEraser
    painter_class = Y2rPropainter if y2r else UpstreamPropainter

    class Eraser(eraser_base):  # type: ignore[valid-type,misc]
        module = eraser

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            state["diffueraser"].append(self)

    def make_propainter(propainter_model_dir: str, device: str) -> Propainter:
        model = painter_class(inference, propainter_model_dir, device)
        state["propainter"].append(model)
        return model

    eraser.DiffuEraser = Eraser
    inference.Propainter = make_propainter
    for module in (eraser_package, eraser, painter_package, inference):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.io", torchvision.io)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the adapter puts the checkout on it
    state["modules"] = {"diffueraser": eraser, "propainter": inference, "torchvision": torchvision}
    return state


def checkout(root: Path) -> Path:
    """A DiffuEraser checkout as the adapter expects it: its code file and ``weights/``."""
    (root / "diffueraser").mkdir(parents=True, exist_ok=True)
    (root / "diffueraser" / "diffueraser.py").write_text("")
    for name in ("stable-diffusion-v1-5", "sd-vae-ft-mse", "diffuEraser", "propainter", "PCM_Weights"):
        (root / "weights" / name).mkdir(parents=True, exist_ok=True)
    return root
